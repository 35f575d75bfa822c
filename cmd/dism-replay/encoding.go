package main

import (
	"fmt"
	"slices"
	"strings"

	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/simplifiedchinese"
)

// encodingUTF8 writes the body as stored.
const encodingUTF8 = "utf-8"

// encodings are the code pages a body can be written in. dism.exe writes to
// a pipe in the console's OEM code page, not UTF-8, so a recording of a
// German, Russian or Chinese console replays truthfully only in its code
// page: 850 (Western Europe), 852 (Central Europe), 866 (Cyrillic), 437
// (US), 936 (GBK, Simplified Chinese).
var encodings = map[string]encoding.Encoding{
	encodingUTF8: nil,
	"ibm437":     charmap.CodePage437,
	"ibm850":     charmap.CodePage850,
	"ibm852":     charmap.CodePage852,
	"ibm866":     charmap.CodePage866,
	"gbk":        simplifiedchinese.GBK,
}

func encodingNames() string {
	names := make([]string, 0, len(encodings))
	for n := range encodings {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// encode writes b, which is UTF-8, in the named encoding.
func encode(name string, b []byte) ([]byte, error) {
	enc := encodings[name]
	if enc == nil {
		return b, nil
	}
	out, err := enc.NewEncoder().Bytes(b)
	if err != nil {
		return nil, fmt.Errorf("the output has a character %s cannot write: %w", name, err)
	}
	return out, nil
}
