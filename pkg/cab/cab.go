// Package cab reads and writes Microsoft Cabinet files, the container of
// Windows update packages.
//
// Reading supports folders stored uncompressed or compressed with MSZIP or
// LZX (windows of 32 KiB to 2 MiB, E8 translation: what Microsoft's update
// packages use), any number of folders, reserved header areas and UTF-8
// names. Quantum folders are listed but not decompressed: opening one of
// their members returns an error wrapping ErrUnsupportedCompression.
// Cabinets that span several files are refused. Damaged or hostile data is
// an error wrapping ErrDamaged, never more output than the cabinet
// declares: every Huffman table, length and offset is checked. Writing
// always produces MSZIP cabinets, using only fixed-Huffman and stored
// DEFLATE blocks, which every MSZIP decoder reads (the tests check Debian's
// cabextract); package cabtest writes LZX ones for tests.
//
// Format reference: Microsoft's "Microsoft Cabinet Format" ([MS-CAB]),
// "MSZIP Data Compression Format" ([MS-MCI]) and, for LZX, "LZX DELTA
// Compression and Decompression" ([MS-PATCH]), of which cabinet LZX is the
// older subset (see lzx.go).
package cab

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/osvc/osvc/pkg/winpath"
)

// ErrNotCabinet is returned for data that does not start with the MSCF signature.
var ErrNotCabinet = errors.New("not a cabinet file (no MSCF signature)")

// ErrUnsafePath is wrapped by the error of an extraction that would write
// outside its folder, or a member name Windows could not hold: it is
// winpath.ErrUnsafe, the one name rule of osvc (see package winpath).
var ErrUnsafePath = winpath.ErrUnsafe

// ErrMultiPart is wrapped by the error about a cabinet that belongs to a
// set spanning several files, which this package does not read.
var ErrMultiPart = errors.New("cabinet is part of a multi-cabinet set, which osvc cannot read; repack it as one cabinet")

// ErrUnsupportedCompression is wrapped by the error returned when a member is
// stored with a compression this package cannot decompress (Quantum, or an
// unknown type).
var ErrUnsupportedCompression = errors.New("unsupported cabinet compression")

// ErrDamaged is wrapped by errors about a cabinet whose structure is invalid
// or whose data is truncated or fails its checksum.
var ErrDamaged = errors.New("cabinet is damaged")

// File is one member of a cabinet.
type File struct {
	// Name is the member path, '/'-separated (the stored '\\' converted).
	Name string
	// Size is the member's uncompressed size in bytes.
	Size int64
	// Modified is the member's stored date and time. Cabinets store local
	// time without a zone; it is reported as UTC.
	Modified time.Time
}

// Structure sizes and constants from [MS-CAB].
const (
	headerSize       = 36
	folderEntrySize  = 8
	fileEntrySize    = 16
	dataHeaderSize   = 8
	maxNameBytes     = 256   // CB_MAX_FILENAME: a name and its NUL
	blockSize        = 32768 // uncompressed bytes in a full MSZIP block
	maxBlocksPerFold = 0xFFFF

	flagPrevCabinet    = 0x0001
	flagNextCabinet    = 0x0002
	flagReservePresent = 0x0004

	attrUTF8Name = 0x80
	attrArchive  = 0x20

	compressNone    = 0
	compressMSZIP   = 1
	compressQuantum = 2
	compressLZX     = 3
)

func compressionName(t uint16) string {
	switch t & 0x000F {
	case compressNone:
		return "none"
	case compressMSZIP:
		return "MSZIP"
	case compressQuantum:
		return "Quantum"
	case compressLZX:
		return "LZX"
	}
	return fmt.Sprintf("unknown type %d", t&0x000F)
}

// IsCabinet reports whether head starts with a cabinet signature.
func IsCabinet(head []byte) bool { return len(head) >= 4 && string(head[:4]) == "MSCF" }

// decodeName turns a stored name into a '/'-separated Go string. Names
// without the UTF-8 attribute are in an unspecified code page; valid UTF-8 is
// kept as is and anything else is read as Latin-1 so it stays printable.
func decodeName(b []byte, utf bool) string {
	s := string(b)
	if !utf && !utf8.ValidString(s) {
		r := make([]rune, len(b))
		for i, c := range b {
			r[i] = rune(c)
		}
		s = string(r)
	}
	return strings.ReplaceAll(s, "\\", "/")
}

// DOS date and time, as stored in CFFILE.
func dosTime(d, t uint16) time.Time {
	year := int(d>>9) + 1980
	month := time.Month(d >> 5 & 0x0F)
	day := int(d & 0x1F)
	hour := int(t >> 11)
	minute := int(t >> 5 & 0x3F)
	sec := int(t&0x1F) * 2
	if month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}
	}
	return time.Date(year, month, day, hour, minute, sec, 0, time.UTC)
}

func toDOSTime(m time.Time) (d, t uint16) {
	if m.IsZero() {
		m = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	m = m.UTC()
	year := m.Year()
	switch {
	case year < 1980:
		m = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	case year > 2107:
		m = time.Date(2107, 12, 31, 23, 59, 58, 0, time.UTC)
	}
	d = uint16(m.Year()-1980)<<9 | uint16(m.Month())<<5 | uint16(m.Day())
	t = uint16(m.Hour())<<11 | uint16(m.Minute())<<5 | uint16(m.Second()/2)
	return d, t
}

// checksum is the CFDATA checksum of [MS-CAB] 2.7 as cabextract computes it:
// XOR of little-endian 32-bit words, the 1 to 3 trailing bytes packed with
// the first one highest.
func checksum(data []byte, seed uint32) uint32 {
	sum := seed
	n := len(data) / 4
	for i := range n {
		p := data[i*4:]
		sum ^= uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16 | uint32(p[3])<<24
	}
	var ul uint32
	rest := data[n*4:]
	switch len(rest) {
	case 3:
		ul = uint32(rest[0])<<16 | uint32(rest[1])<<8 | uint32(rest[2])
	case 2:
		ul = uint32(rest[0])<<8 | uint32(rest[1])
	case 1:
		ul = uint32(rest[0])
	}
	return sum ^ ul
}

// blockChecksum is the checksum stored in a CFDATA header: the data, then the
// cbData and cbUncomp fields.
func blockChecksum(data []byte, sizes [4]byte) uint32 {
	return checksum(sizes[:], checksum(data, 0))
}
