// Package wiminfo reads a WIM file's header and XML info in pure Go, so the
// server can describe an uploaded image without wimlib.
//
// A WIM starts with a 208-byte header ("MSWIM\0\0\0") whose resource header
// at offset 72 locates the XML info: UTF-16LE text with a byte-order mark
// that names every image and, for Windows images, its edition, architecture,
// version and languages. `wimlib-imagex info FILE --xml` prints the same
// bytes, so ParseXML reads its output too.
package wiminfo

import (
	"bytes"
	"encoding/binary"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// ErrNotWIM is returned for a file that does not start with a WIM header.
var ErrNotWIM = errors.New("not a WIM file")

// Image describes one image (index) of a WIM file as its XML info tells.
type Image struct {
	// Index numbers the image from 1.
	Index       int
	Name        string
	Description string
	// Edition is the Windows edition ID, e.g. Enterprise.
	Edition string
	// Arch is the processor architecture; UNSPECIFIED for an image that is
	// not Windows or names an architecture osvc does not know.
	Arch osvcv1.Architecture
	// Version is the Windows version, e.g. 10.0.22631.2428, and Build its
	// third part.
	Version    string
	Build      uint32
	Languages  []string
	TotalBytes int64
}

// Proto is the image as the API describes an index.
func (im Image) Proto() *osvcv1.ImageIndex {
	return &osvcv1.ImageIndex{
		Index:        int32(im.Index),
		Name:         im.Name,
		Description:  im.Description,
		Edition:      im.Edition,
		Architecture: im.Arch,
		Version:      im.Version,
		Build:        im.Build,
		Languages:    slices.Clone(im.Languages),
		TotalBytes:   im.TotalBytes,
	}
}

// ErrDamaged is wrapped by errors about a WIM whose header or XML info cannot
// be read; the message starts "WIM XML info is damaged".
var ErrDamaged = errors.New("WIM XML info is damaged")

const (
	headerSize = 208
	// MaxXMLBytes bounds the XML info read into memory. Real XML info is a
	// few kilobytes per image (Microsoft's eleven-edition install.wim holds
	// about 40 KiB of it): 2 MiB is room for some 400 images, more than any
	// real WIM holds, and a header claiming more is taken as damaged. The
	// XML is decoded one image at a time with its nesting, texts and image
	// count bounded, so info of this size costs a few megabytes while it is
	// read; the worst is a flood of attributes on one element, which the
	// decoder gathers before osvc sees it: about 30 MB for 2 MiB of them.
	MaxXMLBytes = 2 << 20

	reshdrCompressed = 0x04
)

var (
	wimMagic     = []byte("MSWIM\x00\x00\x00")
	pipableMagic = []byte("WLPWM\x00\x00\x00")
)

func damaged(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrDamaged}, args...)...)
}

// ReadFile reads the indexes of the WIM file at path.
func ReadFile(path string) ([]Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read WIM info: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read WIM info: %w", err)
	}
	idx, err := Read(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("read WIM info of %s: %w", path, err)
	}
	return idx, nil
}

// Read reads the indexes of the WIM in r, whose length is size.
func Read(r io.ReaderAt, size int64) ([]Image, error) {
	if size < int64(len(wimMagic)) {
		return nil, ErrNotWIM
	}
	hdr := make([]byte, headerSize)
	n, err := r.ReadAt(hdr[:min(size, headerSize)], 0)
	if n < len(wimMagic) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read WIM header: %w", err)
	}
	switch {
	case bytes.Equal(hdr[:8], pipableMagic):
		return nil, errors.New("pipable WIM files are not supported; convert the file with `wimlib-imagex optimize` first")
	case !bytes.Equal(hdr[:8], wimMagic):
		return nil, ErrNotWIM
	case size < headerSize:
		return nil, fmt.Errorf("%w: file is truncated (%d bytes, shorter than the WIM header)", ErrDamaged, size)
	}
	le := binary.LittleEndian
	if hs := le.Uint32(hdr[8:]); hs != headerSize {
		return nil, damaged("header size is %d, want %d", hs, headerSize)
	}
	imageCount := le.Uint32(hdr[44:])
	if imageCount > MaxImages {
		return nil, damaged("the header counts %d images, more than the %d osvc reads", imageCount, MaxImages)
	}
	xmlRes := hdr[72:96]
	sizeInWIM := le.Uint64(xmlRes[0:]) & (1<<56 - 1)
	flags := xmlRes[7]
	offset := le.Uint64(xmlRes[8:])
	origSize := le.Uint64(xmlRes[16:])
	if flags&reshdrCompressed != 0 {
		return nil, errors.New("the WIM's XML info is compressed, which osvc cannot read; rewrite the file with `wimlib-imagex optimize`")
	}
	if origSize != sizeInWIM {
		return nil, damaged("uncompressed XML info declares %d bytes stored as %d", origSize, sizeInWIM)
	}
	if origSize == 0 || origSize > MaxXMLBytes {
		return nil, damaged("XML info declares %d bytes", origSize)
	}
	if offset < headerSize || offset > uint64(size) || origSize > uint64(size)-offset {
		return nil, damaged("XML info (%d bytes at offset %d) lies outside the %d-byte file; is it truncated?", origSize, offset, size)
	}
	data := make([]byte, origSize)
	if _, err := r.ReadAt(data, int64(offset)); err != nil && !(errors.Is(err, io.EOF)) {
		return nil, fmt.Errorf("read WIM XML info: %w", err)
	}
	// An XML describing more images than the header counts is damaged as
	// soon as it does.
	idx, err := parseXML(data, int(imageCount))
	if tooMany := (*tooManyImagesError)(nil); errors.As(err, &tooMany) {
		return nil, damaged("the header counts %d images, the XML describes more", imageCount)
	}
	if err != nil {
		return nil, err
	}
	if uint32(len(idx)) != imageCount {
		return nil, damaged("the header counts %d images, the XML describes %d", imageCount, len(idx))
	}
	return idx, nil
}

type imageXML struct {
	Index       string      `xml:"INDEX,attr"`
	Name        string      `xml:"NAME"`
	Description string      `xml:"DESCRIPTION"`
	Flags       string      `xml:"FLAGS"`
	TotalBytes  string      `xml:"TOTALBYTES"`
	Windows     *windowsXML `xml:"WINDOWS"`
}

type windowsXML struct {
	Arch      string `xml:"ARCH"`
	EditionID string `xml:"EDITIONID"`
	Languages struct {
		Language []string `xml:"LANGUAGE"`
		Default  string   `xml:"DEFAULT"`
	} `xml:"LANGUAGES"`
	Version *struct {
		Major   string `xml:"MAJOR"`
		Minor   string `xml:"MINOR"`
		Build   string `xml:"BUILD"`
		SPBuild string `xml:"SPBUILD"`
	} `xml:"VERSION"`
}

// decodeText turns XML info bytes into UTF-8: UTF-16LE with or without a
// byte-order mark (what WIM files hold), UTF-16BE with one, or UTF-8. It
// writes the UTF-8 text straight from the bytes, with no UTF-16 or rune
// slice in between: a few bytes of memory per character, not ten.
func decodeText(data []byte) ([]byte, error) {
	var be bool
	switch {
	case bytes.HasPrefix(data, []byte{0xFF, 0xFE}):
		data = data[2:]
	case bytes.HasPrefix(data, []byte{0xFE, 0xFF}):
		data, be = data[2:], true
	case bytes.HasPrefix(data, []byte{0xEF, 0xBB, 0xBF}):
		return data[3:], nil
	case len(data) >= 2 && data[0] != 0 && data[1] == 0:
		// UTF-16LE without a mark: '<' followed by a zero byte.
	default:
		return data, nil
	}
	if len(data)%2 != 0 {
		// Some writers leave one trailing zero byte; anything else is damage.
		if data[len(data)-1] != 0 {
			return nil, damaged("UTF-16 text has an odd number of bytes")
		}
		data = data[:len(data)-1]
	}
	unit := func(i int) rune {
		if be {
			return rune(binary.BigEndian.Uint16(data[i:]))
		}
		return rune(binary.LittleEndian.Uint16(data[i:]))
	}
	// WIM XML is ASCII but for names: one byte per character is the usual size.
	out := make([]byte, 0, len(data)/2)
	for i := 0; i < len(data); i += 2 {
		r := unit(i)
		if utf16.IsSurrogate(r) {
			// A pair makes one character; a lone half is U+FFFD, as utf16.Decode has it.
			pair := unicode.ReplacementChar
			if i+2 < len(data) {
				pair = utf16.DecodeRune(r, unit(i+2))
			}
			if pair != unicode.ReplacementChar {
				i += 2
			}
			r = pair
		}
		out = utf8.AppendRune(out, r)
	}
	return out, nil
}

const (
	// MaxImages bounds the images a WIM may describe. Windows install media
	// hold about a dozen editions, and the catalog keeps every index of an
	// image in one record; a header or XML info counting more is damaged.
	MaxImages = 1000
	// maxXMLDepth bounds how deeply XML info elements nest. Real info nests
	// five deep (WIM/IMAGE/WINDOWS/VERSION/BUILD); the decoder keeps a stack
	// entry per open element, so a flood of nested elements would cost
	// memory for nothing.
	maxXMLDepth = 32
	// maxXMLTextBytes bounds one element's text: names and descriptions are
	// a line long.
	maxXMLTextBytes = 64 << 10
)

// boundedTokens passes the tokens of an XML decoder on, refusing elements
// nested deeper than maxXMLDepth and texts longer than maxXMLTextBytes as
// damage, so hostile XML info costs no more memory than real info of its size.
type boundedTokens struct {
	dec   *xml.Decoder
	depth int
}

func (b *boundedTokens) Token() (xml.Token, error) {
	tok, err := b.dec.Token()
	if err != nil {
		return tok, err
	}
	switch t := tok.(type) {
	case xml.StartElement:
		if b.depth++; b.depth > maxXMLDepth {
			return nil, damaged("elements nest more than %d deep at <%s>", maxXMLDepth, t.Name.Local)
		}
	case xml.EndElement:
		b.depth--
	case xml.CharData:
		if len(t) > maxXMLTextBytes {
			return nil, damaged("an element's text is %d bytes long, more than %d", len(t), maxXMLTextBytes)
		}
	}
	return tok, nil
}

// ParseXML parses a WIM's XML info (UTF-16LE with BOM, or UTF-8) into its
// indexes, in index order.
func ParseXML(data []byte) ([]Image, error) {
	return parseXML(data, MaxImages)
}

// tooManyImagesError is parseXML's damage when the XML describes more
// images than allowed.
type tooManyImagesError struct{ max int }

func (e *tooManyImagesError) Error() string {
	return fmt.Sprintf("%v: more than %d images", ErrDamaged, e.max)
}

func (e *tooManyImagesError) Unwrap() error { return ErrDamaged }

// parseXML reads the IMAGE elements of the WIM element one at a time, so
// that what the decoder holds at once is one image, and refuses more than
// maxImages of them.
func parseXML(data []byte, maxImages int) ([]Image, error) {
	text, err := decodeText(data)
	if err != nil {
		return nil, err
	}
	text = bytes.TrimRight(text, "\x00\r\n\t ")
	raw := xml.NewDecoder(bytes.NewReader(text))
	// The text is already UTF-8 whatever the declaration says.
	raw.CharsetReader = func(_ string, r io.Reader) (io.Reader, error) { return r, nil }
	dec := xml.NewTokenDecoder(&boundedTokens{dec: raw})
	if err := findRoot(dec); err != nil {
		return nil, err
	}
	var out []Image
	seen := map[int]bool{}
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil, xmlDamage(err)
		}
		if _, ok := tok.(xml.EndElement); ok {
			break // </WIM>: what follows it is not read, as xml.Unmarshal would not
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if start.Name.Local != "IMAGE" {
			if err := dec.Skip(); err != nil {
				return nil, xmlDamage(err)
			}
			continue
		}
		if len(out) == maxImages {
			return nil, &tooManyImagesError{max: maxImages}
		}
		var im imageXML
		if err := dec.DecodeElement(&im, &start); err != nil {
			return nil, xmlDamage(err)
		}
		idx, err := convertImage(len(out), im)
		if err != nil {
			return nil, err
		}
		if seen[idx.Index] {
			return nil, damaged("index %d appears twice", idx.Index)
		}
		seen[idx.Index] = true
		out = append(out, idx)
	}
	slices.SortFunc(out, func(a, b Image) int { return a.Index - b.Index })
	for i, idx := range out {
		if idx.Index != i+1 {
			return nil, damaged("indexes are not numbered 1 to %d (found %d)", len(out), idx.Index)
		}
	}
	return out, nil
}

// findRoot reads up to the root element, which must be WIM.
func findRoot(dec *xml.Decoder) error {
	for {
		tok, err := dec.Token()
		if err != nil {
			return xmlDamage(err)
		}
		if start, ok := tok.(xml.StartElement); ok {
			if start.Name.Local != "WIM" {
				return damaged("the root element is <%s>, want <WIM>", start.Name.Local)
			}
			return nil
		}
	}
}

// xmlDamage marks a decoder error as damage; errors of boundedTokens already are.
func xmlDamage(err error) error {
	if errors.Is(err, ErrDamaged) {
		return err
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return damaged("%v", err)
}

func convertImage(pos int, im imageXML) (Image, error) {
	idx := Image{
		Index:       pos + 1,
		Name:        strings.TrimSpace(im.Name),
		Description: strings.TrimSpace(im.Description),
	}
	if s := strings.TrimSpace(im.Index); s != "" {
		n, err := parseNumber(s, 31)
		if err != nil || n < 1 {
			return Image{}, damaged("image INDEX %q is not a positive number", im.Index)
		}
		idx.Index = int(n)
	}
	if s := strings.TrimSpace(im.TotalBytes); s != "" {
		n, err := parseNumber(s, 63)
		if err != nil {
			return Image{}, damaged("index %d TOTALBYTES %q is not a number", idx.Index, s)
		}
		idx.TotalBytes = int64(n)
	}
	win := im.Windows
	if win == nil {
		return idx, nil
	}
	idx.Edition = strings.TrimSpace(win.EditionID)
	if idx.Edition == "" {
		idx.Edition = strings.TrimSpace(im.Flags) // older images carry it only here
	}
	if s := strings.TrimSpace(win.Arch); s != "" {
		n, err := parseNumber(s, 31)
		if err != nil {
			return Image{}, damaged("index %d ARCH %q is not a number", idx.Index, s)
		}
		idx.Arch = architecture(n)
	}
	for _, l := range win.Languages.Language {
		if l = strings.TrimSpace(l); l != "" {
			idx.Languages = append(idx.Languages, l)
		}
	}
	if len(idx.Languages) == 0 {
		if d := strings.TrimSpace(win.Languages.Default); d != "" {
			idx.Languages = []string{d}
		}
	}
	if v := win.Version; v != nil {
		var parts [4]uint64
		for i, s := range []string{v.Major, v.Minor, v.Build, v.SPBuild} {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			n, err := parseNumber(s, 32)
			if err != nil {
				return Image{}, damaged("index %d VERSION part %q is not a number", idx.Index, s)
			}
			parts[i] = n
		}
		idx.Build = uint32(parts[2])
		idx.Version = fmt.Sprintf("%d.%d.%d.%d", parts[0], parts[1], parts[2], parts[3])
	}
	return idx, nil
}

// parseNumber reads a decimal or 0x-prefixed hexadecimal number (WIM XML
// uses both) that fits in bits bits.
func parseNumber(s string, bits int) (uint64, error) {
	if h, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		return strconv.ParseUint(h, 16, bits)
	}
	return strconv.ParseUint(s, 10, bits)
}

// architecture maps WINDOWS/ARCH (PROCESSOR_ARCHITECTURE_* values).
func architecture(n uint64) osvcv1.Architecture {
	switch n {
	case 0:
		return osvcv1.Architecture_ARCHITECTURE_X86
	case 9:
		return osvcv1.Architecture_ARCHITECTURE_X64
	case 12:
		return osvcv1.Architecture_ARCHITECTURE_ARM64
	}
	return osvcv1.Architecture_ARCHITECTURE_UNSPECIFIED
}
