package dism

import (
	"bytes"
	"unicode/utf8"

	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/japanese"
	"golang.org/x/text/encoding/korean"
	"golang.org/x/text/encoding/simplifiedchinese"
	"golang.org/x/text/encoding/traditionalchinese"
)

// codePageUTF8 is Windows' number for UTF-8.
const codePageUTF8 = 65001

// codePages are the OEM code pages of Windows' display languages: dism.exe
// writes to a pipe in the OEM code page, not UTF-8, so a path with "für" in
// it reaches the engine as "f\x81r" on a German server (850).
var codePages = map[int]encoding.Encoding{
	437: charmap.CodePage437,
	850: charmap.CodePage850,
	852: charmap.CodePage852,
	855: charmap.CodePage855,
	858: charmap.CodePage858,
	860: charmap.CodePage860,
	862: charmap.CodePage862,
	863: charmap.CodePage863,
	865: charmap.CodePage865,
	866: charmap.CodePage866,
	874: charmap.Windows874,
	932: japanese.ShiftJIS,
	936: simplifiedchinese.GBK,
	949: korean.EUCKR,
	950: traditionalchinese.Big5,
}

// decode turns dism.exe's output in code page cp into UTF-8. Whatever it
// cannot read (an unknown code page, bytes that are not text) becomes
// U+FFFD: the output ends up in logs and in protobuf strings, which must be
// valid UTF-8.
func decode(cp int, b []byte) []byte {
	if enc := codePages[cp]; enc != nil {
		if out, err := enc.NewDecoder().Bytes(b); err == nil {
			b = out
		}
	}
	if utf8.Valid(b) {
		return b
	}
	return bytes.ToValidUTF8(b, []byte("\uFFFD"))
}
