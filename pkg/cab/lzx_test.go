package cab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/osvc/osvc/pkg/cab/cabtest"
)

// x86Bytes is n bytes that look like x86 code to an LZX encoder: repeated
// instruction sequences and CALLs (0xE8) to relative addresses within the
// file, the operands E8 translation turns absolute.
func x86Bytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	seqs := make([][]byte, 64)
	for i := range seqs {
		seqs[i] = make([]byte, 4+rng.IntN(24))
		for j := range seqs[i] {
			seqs[i][j] = byte(rng.IntN(256))
		}
	}
	b := make([]byte, 0, n+32)
	for len(b) < n {
		switch r := rng.IntN(10); {
		case r < 4:
			target := int32(rng.IntN(n)) - int32(len(b)) - 5
			b = append(b, 0xE8)
			b = binary.LittleEndian.AppendUint32(b, uint32(target))
		case r < 9:
			b = append(b, seqs[rng.IntN(len(seqs))]...)
		default:
			b = append(b, byte(rng.IntN(256)))
		}
	}
	return b[:n]
}

// lzxMembers splits data into three members of one folder.
func lzxMembers(data []byte) []rawFile {
	a, b := len(data)/3, 2*len(data)/3
	return []rawFile{
		{name: "first.bin", size: a},
		{name: `dir\middle.bin`, size: b - a, offset: a},
		{name: "last.bin", size: len(data) - b, offset: b},
	}
}

// checkFolder reads every member of cabinet with the Reader and with
// cabextract and compares both with data, the folder they split.
func checkFolder(t *testing.T, cabinet, data []byte) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(cabinet), int64(len(cabinet)))
	if err != nil {
		t.Fatalf("NewReader: %v", err)
	}
	var fromReader []byte
	err = r.ForEach(nil, func(_ File, content io.Reader) error {
		b, err := io.ReadAll(content)
		fromReader = append(fromReader, b...)
		return err
	})
	if err != nil {
		t.Fatalf("ForEach: %v", err)
	}
	if !bytes.Equal(fromReader, data) {
		t.Errorf("the Reader's members differ from the data (%d bytes, want %d; first difference at %d)",
			len(fromReader), len(data), firstDifference(fromReader, data))
	}
	// Open reads each member anew from the start of the folder.
	last := r.Files()[len(r.Files())-1]
	if got := readMember(t, r, last.Name); !bytes.Equal(got, data[len(data)-int(last.Size):]) {
		t.Errorf("Open(%q) differs from the data", last.Name)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "lzx.cab")
	if err := os.WriteFile(path, cabinet, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cabextract", "-q", "-p", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	fromCabextract, err := cmd.Output()
	if err != nil {
		t.Fatalf("cabextract (run deploy/install-deps.sh if it is missing): %v: %s", err, stderr.Bytes())
	}
	if !bytes.Equal(fromCabextract, data) {
		t.Errorf("cabextract's members differ from the data (%d bytes, want %d; first difference at %d): the test encoder is wrong",
			len(fromCabextract), len(data), firstDifference(fromCabextract, data))
	}
}

func readMember(t *testing.T, r *Reader, name string) []byte {
	t.Helper()
	rc, err := r.Open(name)
	if err != nil {
		t.Fatalf("Open(%q): %v", name, err)
	}
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %q: %v", name, err)
	}
	return b
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestLZXFoldersReadAsCabextractReadsThem(t *testing.T) {
	t.Parallel()
	text := textBytes(300_000)
	for _, tc := range []struct {
		name string
		data []byte
		o    cabtest.LZXOptions
	}{
		{"text in a 32 KiB window that wraps nine times", text, cabtest.LZXOptions{WindowBits: 15}},
		{"text in a 64 KiB window, all block types in turn", text, cabtest.LZXOptions{WindowBits: 16, BlockSize: 20_000,
			BlockTypes: []int{cabtest.BlockVerbatim, cabtest.BlockAligned, cabtest.BlockUncompressed}}},
		{"aligned offset blocks spanning frames", text, cabtest.LZXOptions{WindowBits: 17, BlockSize: 100_000,
			BlockTypes: []int{cabtest.BlockAligned}}},
		{"uncompressed blocks of odd sizes between compressed ones", text[:100_000], cabtest.LZXOptions{WindowBits: 18, BlockSize: 7_777,
			BlockTypes: []int{cabtest.BlockUncompressed, cabtest.BlockUncompressed, cabtest.BlockAligned, cabtest.BlockVerbatim}}},
		{"x86 code with E8 translation", x86Bytes(1, 400_000), cabtest.LZXOptions{WindowBits: 19, E8Size: 12_000_000,
			BlockSize: 65_536, BlockTypes: []int{cabtest.BlockAligned, cabtest.BlockVerbatim}}},
		{"x86 code with a translation size smaller than the code", x86Bytes(2, 150_000), cabtest.LZXOptions{WindowBits: 20, E8Size: 100_000}},
		{"x86 code with E8 bytes in uncompressed blocks", x86Bytes(3, 100_000), cabtest.LZXOptions{WindowBits: 16, E8Size: 12_000_000,
			BlockSize: 30_001, BlockTypes: []int{cabtest.BlockUncompressed, cabtest.BlockVerbatim}}},
		{"zeros: long matches through the length tree", make([]byte, 200_000), cabtest.LZXOptions{WindowBits: 15}},
		{"random bytes that do not compress", randomBytes(t, 100_000), cabtest.LZXOptions{WindowBits: 21,
			BlockTypes: []int{cabtest.BlockAligned, cabtest.BlockVerbatim}}},
		{"exactly one frame", text[:blockSize], cabtest.LZXOptions{WindowBits: 21}},
		{"a frame and one byte", text[:blockSize+1], cabtest.LZXOptions{WindowBits: 21, E8Size: 1 << 20}},
		{"three bytes", []byte("abc"), cabtest.LZXOptions{WindowBits: 15}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cabinet := rawCab(t, rawOptions{}, []rawFolder{lzxFolder(tc.data, tc.o)}, lzxMembers(tc.data))
			checkFolder(t, cabinet, tc.data)
		})
	}
}

// TestLZXLargeFolderWithA2MiBWindow is the shape of a real update package:
// megabytes of code in one folder with the largest window, E8
// translation, every block type, blocks spanning frames and CFDATA blocks,
// and more data than the window holds.
func TestLZXLargeFolderWithA2MiBWindow(t *testing.T) {
	t.Parallel()
	var data []byte
	data = append(data, x86Bytes(4, 1_200_000)...)
	data = append(data, textBytes(500_000)...)
	data = append(data, randomBytes(t, 150_000)...)
	data = append(data, x86Bytes(5, 700_000)...) // 2.55 MB: the window wraps
	o := cabtest.LZXOptions{WindowBits: 21, E8Size: 12_000_000, BlockSize: 180_000,
		BlockTypes: []int{cabtest.BlockAligned, cabtest.BlockVerbatim, cabtest.BlockAligned, cabtest.BlockUncompressed}}
	cabinet := rawCab(t, rawOptions{dataReserve: 4}, []rawFolder{
		{compression: compressMSZIP, data: []byte("<assembly/>"), blockSize: blockSize},
		lzxFolder(data, o),
	}, append([]rawFile{{name: "update.mum", size: 11}}, func() []rawFile {
		m := lzxMembers(data)
		for i := range m {
			m[i].folder = 1
		}
		return m
	}()...))
	r, err := NewReader(bytes.NewReader(cabinet), int64(len(cabinet)))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(r.folders[1].blocks); got != (len(data)+blockSize-1)/blockSize {
		t.Fatalf("the LZX folder has %d CFDATA blocks", got)
	}
	dir := t.TempDir()
	ours := filepath.Join(dir, "ours")
	if err := r.ExtractAll(ours); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "large.cab")
	if err := os.WriteFile(path, cabinet, 0o644); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(dir, "cabextract")
	if msg, err := exec.Command("cabextract", "-q", "-d", theirs, path).CombinedOutput(); err != nil {
		t.Fatalf("cabextract (run deploy/install-deps.sh if it is missing): %v: %s", err, msg)
	}
	var got []byte
	for _, f := range r.Files() {
		a, err := os.ReadFile(filepath.Join(ours, filepath.FromSlash(f.Name)))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(theirs, filepath.FromSlash(f.Name)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%q: %d bytes, cabextract's %d, first difference at %d", f.Name, len(a), len(b), firstDifference(a, b))
		}
		if f.Name != "update.mum" {
			got = append(got, a...)
		}
	}
	if !bytes.Equal(got, data) {
		t.Errorf("the LZX folder's members hold %d bytes differing from the data at %d", len(got), firstDifference(got, data))
	}
}

func TestE8TranslationIsUndoneWithinItsBounds(t *testing.T) {
	t.Parallel()
	const size = 1000
	op := func(v int32) []byte { return binary.LittleEndian.AppendUint32([]byte{0xE8}, uint32(v)) }
	var frame []byte
	frame = append(frame, op(150)...)    // at 100: absolute 150, within the size: 50 relative
	frame = append(frame, op(-50)...)    // at 105: negative, within -curpos: -50+size
	frame = append(frame, op(size)...)   // at 110: not below the size: left alone
	frame = append(frame, op(-116)...)   // at 115: below -curpos: left alone
	frame = append(frame, 0xE8)          // at 120: its operand holds an E8 byte,
	frame = append(frame, 0xE8, 0, 0, 0) // which is not a leader
	frame = append(frame, bytes.Repeat([]byte{0x90}, 5)...)
	frame = append(frame, op(7)...) // at 130: in the last 10 bytes: left alone
	frame = append(frame, 0x90)
	e8Translate(frame, 100, size)
	var want []byte
	want = append(want, op(50)...)
	want = append(want, op(950)...)
	want = append(want, op(size)...)
	want = append(want, op(-116)...)
	want = append(want, op(0xE8-120)...)
	want = append(want, bytes.Repeat([]byte{0x90}, 5)...)
	want = append(want, op(7)...)
	want = append(want, 0x90)
	if !bytes.Equal(frame, want) {
		t.Errorf("translated\n%x\nwant\n%x", frame, want)
	}
}

func TestE8TranslationStopsAfterTheFirstGigabyte(t *testing.T) {
	t.Parallel()
	data := x86Bytes(6, 40_000)
	blocks, err := cabtest.CompressLZX(data, cabtest.LZXOptions{WindowBits: 16, E8Size: 12_000_000})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := decodeLZX(16, int64(len(data)), blocks, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("E8 translation is not undone in the first frames (%v)", err)
	}
	// The encoder translated, so frames past the limit come out as the
	// encoder left them: the data as it was compressed, not the original.
	late, err := decodeLZX(16, int64(len(data)), blocks, lzxE8Frames)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(late, data) {
		t.Error("frames past 32768 were translated")
	}
	if diff := firstDifference(late, data); data[diff-1] != 0xE8 && data[diff-2] != 0xE8 && data[diff-3] != 0xE8 && data[diff-4] != 0xE8 {
		t.Errorf("untranslated output first differs at %d, not in an E8 operand", diff)
	}
}

// handLZX writes a hand-made LZX stream: no E8 header, then what write writes.
func handLZX(write func(w *cabtest.BitWriter)) []byte {
	var w cabtest.BitWriter
	w.Bits(0, 1)
	write(&w)
	return w.Bytes()
}

// rawBytes writes bytes, an even number, after an uncompressed block's
// header: as words, each one's first byte its low one.
func rawBytes(w *cabtest.BitWriter, b []byte) {
	for i := 0; i < len(b); i += 2 {
		w.Bits(uint32(b[i+1])<<8|uint32(b[i]), 16)
	}
}

// verbatimHeader starts a verbatim block of size bytes in a 2^15 window
// (496 main symbols) whose main tree has the given code lengths and whose
// length tree is empty, and returns the main tree's codes.
func verbatimHeader(w *cabtest.BitWriter, size int, main map[int]uint8) []uint32 {
	lens := make([]uint8, lzxNumChars+30*8)
	for sym, l := range main {
		lens[sym] = l
	}
	w.Bits(lzxBlockVerbatim, 3)
	w.Bits(uint32(size), 24)
	w.Lengths(make([]uint8, lzxNumChars), lens[:lzxNumChars])
	w.Lengths(make([]uint8, len(lens)-lzxNumChars), lens[lzxNumChars:])
	w.Lengths(make([]uint8, lzxLengthSymbols), make([]uint8, lzxLengthSymbols))
	return cabtest.Codes(lens)
}

// match is the main symbol of a match in position slot slot with length
// header header (the length less 2, 7 meaning: read the length tree).
func match(slot, header int) int { return lzxNumChars + slot<<3 | header }

// oneFolder is a cabinet of one LZX folder of 2^15 whose CFDATA payloads
// are blocks, declaring the uncompressed sizes uncomp; member a.txt is the
// whole folder.
func oneFolder(t *testing.T, blocks [][]byte, uncomp ...int) []byte {
	total := 0
	for _, u := range uncomp {
		total += u
	}
	return rawCab(t, rawOptions{}, []rawFolder{{compression: lzxType(15), blocks: blocks, uncomp: uncomp}},
		[]rawFile{{name: "a.txt", size: total}})
}

// ab is a stream of size bytes of literals: one b, then a's. 'a' has the
// all-zero code, so the stream ends in zero bits.
func ab(size int) []byte {
	return handLZX(func(w *cabtest.BitWriter) {
		codes := verbatimHeader(w, size, map[int]uint8{'a': 1, 'b': 1})
		w.Bits(codes['b'], 1)
		for range size - 1 {
			w.Bits(codes['a'], 1)
		}
	})
}

func TestLZXRefusesDamage(t *testing.T) {
	t.Parallel()
	text := textBytes(100_000)
	good, err := cabtest.CompressLZX(text, cabtest.LZXOptions{WindowBits: 15})
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{blockSize, blockSize, blockSize, len(text) - 3*blockSize}
	cut := func(keep int) [][]byte {
		b := append([][]byte(nil), good...)
		b[3] = b[3][:keep]
		return b
	}
	for _, tc := range []struct {
		name     string
		data     []byte
		atOpen   bool // the cabinet lists; reading a.txt fails
		contains string
	}{
		{"a window of 2^14 bytes", rawCab(t, rawOptions{}, []rawFolder{{compression: compressLZX | 14<<8,
			blocks: [][]byte{ab(4)}, uncomp: []int{4}}}, []rawFile{{name: "a.txt", size: 4}}),
			false, "LZX window of 2^14 bytes; the format allows 2^15 to 2^21"},
		{"a window of 2^22 bytes", rawCab(t, rawOptions{}, []rawFolder{{compression: compressLZX | 22<<8,
			blocks: [][]byte{ab(4)}, uncomp: []int{4}}}, []rawFile{{name: "a.txt", size: 4}}),
			false, "LZX window of 2^22 bytes"},
		{"a block declaring more than a frame", oneFolder(t, [][]byte{ab(4)}, blockSize+1),
			false, "declares 32769 uncompressed bytes, more than LZX's 32768"},
		{"block type 0", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) { w.Bits(0, 3); w.Bits(4, 24) })}, 4),
			true, "block type 0 is not verbatim (1), aligned offset (2) or uncompressed (3)"},
		{"block type 7", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) { w.Bits(7, 3); w.Bits(4, 24) })}, 4),
			true, "block type 7 is not"},
		{"an over-subscribed pretree", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) {
			w.Bits(lzxBlockVerbatim, 3)
			w.Bits(4, 24)
			for range lzxPretreeSymbols {
				w.Bits(1, 4) // twenty codes of one bit
			}
		})}, 4), true, "the pretree of the main tree has over-subscribed code lengths"},
		{"an incomplete main tree", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) {
			verbatimHeader(w, 4, map[int]uint8{'a': 1, 'b': 2})
		})}, 4), true, "the main tree has incomplete code lengths"},
		{"an empty main tree", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) {
			verbatimHeader(w, 4, nil)
		})}, 4), true, "the main tree has incomplete code lengths"},
		{"an incomplete aligned offset tree", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) {
			w.Bits(lzxBlockAligned, 3)
			w.Bits(4, 24)
			for range lzxAlignedSymbols {
				w.Bits(4, 3) // eight codes of four bits: half the code space
			}
		})}, 4), true, "the aligned offset tree has incomplete code lengths"},
		{"a match using an empty length tree", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) {
			codes := verbatimHeader(w, 20, map[int]uint8{'a': 1, match(0, 7): 1})
			w.Bits(codes['a'], 1)
			w.Bits(codes[match(0, 7)], 1)
		})}, 20), true, "a match needs the length tree, which this block left empty"},
		{"a match before the start of the folder", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) {
			codes := verbatimHeader(w, 4, map[int]uint8{'a': 1, match(3, 0): 1})
			w.Bits(codes[match(3, 0)], 1) // offset 1, before any byte
		})}, 4), true, "a match refers 1 bytes back, where the folder has 0 bytes"},
		{"a match past the end of the frame", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) {
			codes := verbatimHeader(w, 100, map[int]uint8{'a': 1, match(3, 6): 1})
			w.Bits(codes['a'], 1)
			w.Bits(codes[match(3, 6)], 1) // 8 bytes at offset 1, in a frame of 5
		})}, 5), true, "a match of 8 bytes runs past the end of its block or frame (4 bytes left)"},
		{"a match past the end of the block", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) {
			codes := verbatimHeader(w, 5, map[int]uint8{'a': 1, match(3, 6): 1})
			w.Bits(codes['a'], 1)
			w.Bits(codes[match(3, 6)], 1)
		})}, 100), true, "a match of 8 bytes runs past the end of its block or frame (4 bytes left)"},
		{"a repeated offset of 0 from an uncompressed block", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) {
			w.Bits(lzxBlockUncompressed, 3)
			w.Bits(2, 24)
			w.Align()
			rawBytes(w, []byte{0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 'x', 'y'}) // R0 = 0, R1 = R2 = 1, "xy"
			codes := verbatimHeader(w, 2, map[int]uint8{'a': 1, match(0, 0): 1})
			w.Bits(codes[match(0, 0)], 1)
		})}, 4), true, "a match refers 0 bytes back"},
		{"a repeated offset longer than the window", func() []byte {
			// Two frames stored, then a match 40000 bytes back: there is
			// that much data, but a 2^15 window does not reach it.
			stream := handLZX(func(w *cabtest.BitWriter) {
				w.Bits(lzxBlockUncompressed, 3)
				w.Bits(2*blockSize, 24)
				w.Align()
				rawBytes(w, []byte{0x40, 0x9C, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0}) // R0 = 40000
				rawBytes(w, bytes.Repeat([]byte("xy"), blockSize))
				codes := verbatimHeader(w, 2, map[int]uint8{'a': 1, match(0, 0): 1})
				w.Bits(codes[match(0, 0)], 1)
			})
			return oneFolder(t, [][]byte{stream[:40_000], stream[40_000:60_000], stream[60_000:]}, blockSize, blockSize, 2)
		}(), true, "a match refers 40000 bytes back, where the folder has 65536 bytes and the window is 32768"},
		{"a length repeat of a run code", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) {
			w.Bits(lzxBlockVerbatim, 3)
			w.Bits(4, 24)
			pre := make([]uint8, lzxPretreeSymbols)
			pre[17], pre[19] = 1, 1
			codes := cabtest.Codes(pre)
			for _, l := range pre {
				w.Bits(uint32(l), 4)
			}
			w.Bits(codes[19], 1)
			w.Bits(0, 1)
			w.Bits(codes[17], 1) // code 19 repeats code 17, which is no difference
		})}, 4), true, "the main tree's lengths repeat code 17, which is not a length difference"},
		{"length tree lengths running past its end", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) {
			lens := make([]uint8, lzxNumChars+30*8)
			lens['a'], lens['b'] = 1, 1
			w.Bits(lzxBlockVerbatim, 3)
			w.Bits(4, 24)
			w.Lengths(make([]uint8, lzxNumChars), lens[:lzxNumChars])
			w.Lengths(make([]uint8, len(lens)-lzxNumChars), lens[lzxNumChars:])
			pre := make([]uint8, lzxPretreeSymbols)
			pre[18], pre[19], pre[16] = 1, 2, 2
			codes := cabtest.Codes(pre)
			for _, l := range pre {
				w.Bits(uint32(l), 4)
			}
			for range 4 { // 204 zeros
				w.Bits(codes[18], 1)
				w.Bits(31, 5)
			}
			w.Bits(codes[18], 1) // 44 zeros: 248
			w.Bits(24, 5)
			w.Bits(codes[19], 2) // four lengths of 1, at 248 to 251 of 249
			w.Bits(0, 1)
			w.Bits(codes[16], 2)
		})}, 4), true, "the length tree's code lengths run past its 249 symbols"},
		{"compressed data cut short", oneFolder(t, cut(len(good[3])/2), sizes...),
			true, "LZX frame 3: compressed data ends before the folder's declared size"},
		{"an uncompressed block cut short", oneFolder(t, [][]byte{handLZX(func(w *cabtest.BitWriter) {
			w.Bits(lzxBlockUncompressed, 3)
			w.Bits(100, 24)
			w.Align()
			rawBytes(w, bytes.Repeat([]byte{'A'}, 12+40)) // R0..R2 and 40 of the 100 bytes
		})}, 100), true, "compressed data ends before the folder's declared size"},
		{"a stream needing 32 bits past its end", func() []byte {
			s := ab(200)
			return oneFolder(t, [][]byte{s[:len(s)-4]}, 200)
		}(), true, "compressed data ends"},
		{"a damaged block the frame needs", func() []byte {
			c := rawCab(t, rawOptions{}, []rawFolder{{compression: lzxType(15), blocks: good, uncomp: sizes}},
				[]rawFile{{name: "a.txt", size: len(text)}})
			c[len(c)-10] ^= 0xFF // in the last block
			return c
		}(), true, "block 3 fails its checksum"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r, err := NewReader(bytes.NewReader(tc.data), int64(len(tc.data)))
			if tc.atOpen {
				if err != nil {
					t.Fatalf("NewReader: %v", err)
				}
				err = withinDeadline(t, func() error {
					rc, err := r.Open("a.txt")
					if err == nil {
						_, err = io.ReadAll(rc)
					}
					return err
				})
			}
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("error %v, want ErrDamaged", err)
			}
			if !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("error %q does not say %q", err, tc.contains)
			}
		})
	}
}

func TestLZXReadsWhatLibmspackReads(t *testing.T) {
	t.Parallel()
	t.Run("a stream borrowing 16 zero bits past its end", func(t *testing.T) {
		t.Parallel()
		// libmspack pads a stream's end with one word of zeros, so
		// cabextract reads a stream missing its last word of zero bits.
		s := ab(200)
		got := readMember(t, mustReader(t, oneFolder(t, [][]byte{s[:len(s)-2]}, 200)), "a.txt")
		if want := "b" + strings.Repeat("a", 199); string(got) != want {
			t.Errorf("read %q", got)
		}
	})
	t.Run("a damaged block the member does not need", func(t *testing.T) {
		t.Parallel()
		// The bit reader reads ahead into the next block; its damage
		// matters only once its bits are used.
		text := textBytes(40_000)
		blocks, err := cabtest.CompressLZX(text, cabtest.LZXOptions{WindowBits: 15})
		if err != nil {
			t.Fatal(err)
		}
		blocks[1] = append([]byte(nil), blocks[1]...)
		blocks[1][0] ^= 0xFF
		c := rawCab(t, rawOptions{noChecksum: true}, []rawFolder{{compression: lzxType(15), blocks: blocks, uncomp: []int{blockSize, len(text) - blockSize}}},
			[]rawFile{{name: "head.txt", size: blockSize}, {name: "tail.txt", size: len(text) - blockSize, offset: blockSize}})
		// Without checksums the damage shows as bad data; with one, as the block's.
		c2 := rawCab(t, rawOptions{}, []rawFolder{{compression: lzxType(15), blocks: blocks, uncomp: []int{blockSize, len(text) - blockSize}}},
			[]rawFile{{name: "head.txt", size: blockSize}, {name: "tail.txt", size: len(text) - blockSize, offset: blockSize}})
		binary.LittleEndian.PutUint32(c2[len(c2)-len(blocks[1])-8:], 0xBAD) // the last block's checksum
		for _, cabinet := range [][]byte{c, c2} {
			if got := readMember(t, mustReader(t, cabinet), "head.txt"); !bytes.Equal(got, text[:blockSize]) {
				t.Error("the first frame differs")
			}
		}
		rc, err := mustReader(t, c2).Open("tail.txt")
		if err == nil {
			_, err = io.ReadAll(rc)
		}
		if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "block 1 fails its checksum") {
			t.Errorf("reading the damaged block's member: %v", err)
		}
	})
}

// withinDeadline runs read on its own goroutine, so that a decoder that
// loops fails the test in seconds rather than hanging it.
func withinDeadline(t *testing.T, read func() error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- read() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		t.Fatalf("reading did not finish: %v", ctx.Err())
		return nil
	}
}

func mustReader(t *testing.T, cabinet []byte) *Reader {
	t.Helper()
	r, err := NewReader(bytes.NewReader(cabinet), int64(len(cabinet)))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestLZXCabinetsMatchCabextractSums reads the public LZX test cabinets
// (testdata/README.md) and compares every member with the SHA-256 of what
// cabextract extracts from it, recorded in testdata/lzx-sums.txt.
func TestLZXCabinetsMatchCabextractSums(t *testing.T) {
	t.Parallel()
	sums, err := os.ReadFile(filepath.Join("testdata", "lzx-sums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]string{} // cabinet → member → sha256
	for _, line := range strings.Split(string(sums), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sum, path, ok := strings.Cut(line, "  ")
		cabinet, name, ok2 := strings.Cut(path, ".cab/")
		if !ok || !ok2 {
			t.Fatalf("testdata/lzx-sums.txt: bad line %q", line)
		}
		if want[cabinet+".cab"] == nil {
			want[cabinet+".cab"] = map[string]string{}
		}
		want[cabinet+".cab"][name] = sum
	}
	if len(want) != 3 {
		t.Fatalf("testdata/lzx-sums.txt lists %d cabinets, want 3", len(want))
	}
	root := corpusRoot(t)
	for cabinet, members := range want {
		t.Run(cabinet, func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile(filepath.Join(root, cabinet))
			if err != nil {
				t.Fatalf("%v: run deploy/install-deps.sh, which downloads the test cabinets (or set OSVC_TESTDATA to where they are)", err)
			}
			r := mustReader(t, data)
			var lzx int
			for _, f := range r.Files() {
				sum, ok := members[f.Name]
				if !ok {
					t.Errorf("member %q, which cabextract does not extract", f.Name)
					continue
				}
				delete(members, f.Name)
				rc, err := r.Open(f.Name)
				if errors.Is(err, ErrUnsupportedCompression) && strings.Contains(err.Error(), "Quantum") {
					continue
				}
				if err != nil {
					t.Fatalf("Open(%q): %v", f.Name, err)
				}
				h := sha256.New()
				if _, err := io.Copy(h, rc); err != nil {
					t.Fatalf("read %q: %v", f.Name, err)
				}
				if got := hex.EncodeToString(h.Sum(nil)); got != sum {
					t.Errorf("%q: sha256 %s, cabextract's %s", f.Name, got, sum)
				}
				if r.folders[r.entries[r.find(f.Name)].folder].compression&0x000F == compressLZX {
					lzx++
				}
			}
			for name := range members {
				t.Errorf("cabextract extracts %q, which the reader does not list", name)
			}
			if lzx == 0 {
				t.Error("no member of this cabinet is in an LZX folder")
			}
		})
	}
}

// decodeLZX decodes a folder of total bytes whose CFDATA payloads are
// blocks, as the Reader does, returning what it produced before any error.
// Its frames are counted from firstFrame.
func decodeLZX(windowBits int, total int64, blocks [][]byte, firstFrame int) ([]byte, error) {
	next := 0
	d := newLZXDecoder(windowBits, total, func() ([]byte, error) {
		if next == len(blocks) {
			return nil, io.EOF
		}
		next++
		return blocks[next-1], nil
	})
	d.frame = firstFrame
	var out []byte
	for {
		frame, err := d.nextFrame()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, frame...)
	}
}

func FuzzLZX(f *testing.F) {
	for _, seed := range []struct {
		data []byte
		o    cabtest.LZXOptions
	}{
		{textBytes(5_000), cabtest.LZXOptions{WindowBits: 15}},
		{textBytes(40_000), cabtest.LZXOptions{WindowBits: 16, BlockSize: 9_999,
			BlockTypes: []int{cabtest.BlockAligned, cabtest.BlockUncompressed, cabtest.BlockVerbatim}}},
		{x86Bytes(7, 6_000), cabtest.LZXOptions{WindowBits: 17, E8Size: 12_000_000, BlockTypes: []int{cabtest.BlockAligned}}},
		{make([]byte, 3_000), cabtest.LZXOptions{WindowBits: 21}},
		{[]byte("abc"), cabtest.LZXOptions{WindowBits: 15, BlockTypes: []int{cabtest.BlockUncompressed}}},
	} {
		blocks, err := cabtest.CompressLZX(seed.data, seed.o)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(bytes.Join(blocks, nil), uint8(seed.o.WindowBits-lzxMinWindowBits), uint32(len(seed.data)), uint16(len(blocks[0])/2))
	}
	f.Add(ab(200), uint8(0), uint32(200), uint16(3))
	f.Fuzz(func(t *testing.T, stream []byte, window uint8, total uint32, split uint16) {
		bits := lzxMinWindowBits + int(window)%(lzxMaxWindowBits-lzxMinWindowBits+1)
		size := int64(total % (4 * blockSize))
		whole, err := decodeLZX(bits, size, [][]byte{stream}, 0)
		if int64(len(whole)) > size {
			t.Fatalf("decoded %d bytes of a folder of %d", len(whole), size)
		}
		if err == nil && int64(len(whole)) != size {
			t.Fatalf("decoded %d bytes of a folder of %d without an error", len(whole), size)
		}
		if err != nil && !errors.Is(err, ErrDamaged) {
			t.Fatalf("error %v is not ErrDamaged", err)
		}
		// The bitstream runs on across blocks: where it is cut changes nothing.
		at := min(int(split), len(stream))
		parts, err2 := decodeLZX(bits, size, [][]byte{stream[:at], {}, stream[at:]}, 0)
		if (err == nil) != (err2 == nil) || !bytes.Equal(whole, parts) {
			t.Fatalf("split at %d: %d bytes, %v; whole: %d bytes, %v", at, len(parts), err2, len(whole), err)
		}
	})
}
