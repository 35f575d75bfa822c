package cab

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/osvc/osvc/pkg/cab/cabtest"
)

// member is a test cabinet member.
type member struct {
	name string
	data []byte
}

var modTime = time.Date(2024, 3, 12, 10, 30, 4, 0, time.UTC)

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func textBytes(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		b.WriteString("line ")
		b.WriteString(strings.Repeat("x", i%17))
		b.WriteString(" of a servicing log\n")
	}
	return b.Bytes()[:n]
}

// writeCab writes members with the package's Writer.
func writeCab(t testing.TB, members []member) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, m := range members {
		fw, err := w.Create(m.name, modTime)
		if err != nil {
			t.Fatalf("Create(%q): %v", m.name, err)
		}
		if _, err := fw.Write(m.data); err != nil {
			t.Fatalf("write %q: %v", m.name, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return buf.Bytes()
}

func readAll(t testing.TB, cab []byte) map[string][]byte {
	t.Helper()
	r, err := NewReader(bytes.NewReader(cab), int64(len(cab)))
	if err != nil {
		t.Fatalf("NewReader: %v", err)
	}
	got := map[string][]byte{}
	for _, f := range r.Files() {
		rc, err := r.Open(f.Name)
		if err != nil {
			t.Fatalf("Open(%q): %v", f.Name, err)
		}
		data, err := io.ReadAll(rc)
		if err != nil {
			t.Fatalf("read %q: %v", f.Name, err)
		}
		if int64(len(data)) != f.Size {
			t.Fatalf("%q: read %d bytes, listed size %d", f.Name, len(data), f.Size)
		}
		got[f.Name] = data
	}
	return got
}

var memberSets = []struct {
	name    string
	members []member
}{
	{"one small text file", []member{{"update.mum", []byte("<assembly/>")}}},
	{"an empty file among others", []member{{"empty.txt", nil}, {"a.txt", []byte("a")}}},
	{"text spanning many blocks", []member{{"big/log.txt", textBytes(300_000)}}},
	{"zeros spanning blocks", []member{{"zeros.bin", make([]byte, 100_000)}}},
	{"exactly one full block", []member{{"block.bin", textBytes(blockSize)}}},
	{"a block and one byte", []member{{"block1.bin", textBytes(blockSize + 1)}}},
	{"files sharing blocks", []member{
		{"amd64_comp_31bf3856ad364e35_10.0.1.1_none_0123456789abcdef/a.dll", textBytes(20_000)},
		{"amd64_comp_31bf3856ad364e35_10.0.1.1_none_0123456789abcdef/b.dll", textBytes(50_000)},
		{"amd64_comp_31bf3856ad364e35_10.0.1.1_none_0123456789abcdef.manifest", textBytes(3_000)},
	}},
	{"a UTF-8 name", []member{{"données/résumé.txt", []byte("é")}}},
}

func TestWriterCabinetsAreReadByCabextractAndReader(t *testing.T) {
	t.Parallel()
	sets := append(memberSets, struct {
		name    string
		members []member
	}{"random data that does not compress", []member{{"random.bin", randomBytes(t, 70_000)}}})
	for _, tc := range sets {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := writeCab(t, tc.members)
			dir := t.TempDir()
			path := filepath.Join(dir, "test.cab")
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "out")
			cmd := exec.Command("cabextract", "-q", "-d", out, path)
			if msg, err := cmd.CombinedOutput(); err != nil || len(msg) > 0 {
				t.Fatalf("cabextract: %v: %s", err, msg)
			}
			got := readAll(t, data)
			for _, m := range tc.members {
				ext, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(m.name)))
				if err != nil {
					t.Fatalf("cabextract did not produce %q: %v", m.name, err)
				}
				if !bytes.Equal(ext, m.data) {
					t.Errorf("cabextract: %q differs (%d bytes, want %d)", m.name, len(ext), len(m.data))
				}
				if !bytes.Equal(got[m.name], m.data) {
					t.Errorf("Reader: %q differs (%d bytes, want %d)", m.name, len(got[m.name]), len(m.data))
				}
			}
		})
	}
}

func TestReaderReadsGcabCabinets(t *testing.T) {
	t.Parallel()
	for _, compress := range []bool{true, false} {
		name := "stored"
		if compress {
			name = "MSZIP"
		}
		t.Run("made by gcab "+name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			members := []member{
				{"update.mum", textBytes(1_000)},
				{"sub/payload.dll", textBytes(200_000)},
				{"sub/random.bin", randomBytes(t, 40_000)},
				{"sub/empty", nil},
			}
			args := []string{"-c"}
			if compress {
				args = append(args, "-z")
			}
			args = append(args, filepath.Join(dir, "g.cab"))
			src := filepath.Join(dir, "src")
			for _, m := range members {
				p := filepath.Join(src, filepath.FromSlash(m.name))
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, m.data, 0o644); err != nil {
					t.Fatal(err)
				}
				args = append(args, m.name)
			}
			cmd := exec.Command("gcab", args...)
			cmd.Dir = src
			if msg, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("gcab: %v: %s", err, msg)
			}
			data, err := os.ReadFile(filepath.Join(dir, "g.cab"))
			if err != nil {
				t.Fatal(err)
			}
			got := readAll(t, data)
			for _, m := range members {
				if !bytes.Equal(got[m.name], m.data) {
					t.Errorf("%q differs (%d bytes, want %d)", m.name, len(got[m.name]), len(m.data))
				}
			}
			r, err := NewReader(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "out")
			if err := r.ExtractAll(out); err != nil {
				t.Fatalf("ExtractAll: %v", err)
			}
			for _, m := range members {
				ext, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(m.name)))
				if err != nil || !bytes.Equal(ext, m.data) {
					t.Errorf("extracted %q differs or is missing: %v", m.name, err)
				}
			}
		})
	}
}

func TestWriterRoundTripsNamesSizesAndTimes(t *testing.T) {
	t.Parallel()
	data := writeCab(t, []member{{`dir\win.txt`, []byte("w")}, {"dir/unix.txt", []byte("uu")}})
	r, err := NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	want := []File{{Name: "dir/win.txt", Size: 1, Modified: modTime}, {Name: "dir/unix.txt", Size: 2, Modified: modTime}}
	got := r.Files()
	if len(got) != len(want) {
		t.Fatalf("Files() = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("Files()[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	rc, err := r.Open("DIR/WIN.TXT")
	if err != nil {
		t.Fatalf("Open ignoring case: %v", err)
	}
	if b, _ := io.ReadAll(rc); string(b) != "w" {
		t.Errorf("Open ignoring case read %q", b)
	}
	if _, err := r.Open("missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(missing) = %v, want ErrNotExist", err)
	}
}

// rawFolder describes a folder for rawCab.
type rawFolder struct {
	compression uint16
	data        []byte // the folder's uncompressed stream
	blockSize   int
	// An LZX folder's data is compressed with lzx (its window from
	// compression); or, for hand-made streams, its CFDATA payloads are
	// blocks as they are, declaring uncomp bytes each.
	lzx    cabtest.LZXOptions
	blocks [][]byte
	uncomp []int
}

// lzxType is an LZX folder's typeCompress.
func lzxType(windowBits int) uint16 { return compressLZX | uint16(windowBits)<<8 }

// lzxFolder is an LZX folder of data compressed with o.
func lzxFolder(data []byte, o cabtest.LZXOptions) rawFolder {
	return rawFolder{compression: lzxType(o.WindowBits), data: data, lzx: o}
}

type rawOptions struct {
	headerReserve, folderReserve, dataReserve int
	noChecksum                                bool
}

// rawCab assembles a cabinet byte by byte, to exercise what the Writer never
// produces: several folders, stored and LZX folders, reserved areas.
func rawCab(t testing.TB, opt rawOptions, folders []rawFolder, files []rawFile) []byte {
	t.Helper()
	le := binary.LittleEndian
	var datas [][]byte
	var blockCounts []int
	for _, f := range folders {
		var d bytes.Buffer
		var enc mszipEncoder
		var prev []byte
		// Each block: its payload and its uncompressed size.
		var comps [][]byte
		var sizes []int
		switch {
		case f.blocks != nil:
			comps, sizes = f.blocks, f.uncomp
		case f.compression&0x000F == compressLZX:
			f.lzx.WindowBits = int(f.compression >> 8)
			var err error
			if comps, err = cabtest.CompressLZX(f.data, f.lzx); err != nil {
				t.Fatal(err)
			}
			for off := 0; off < len(f.data); off += blockSize {
				sizes = append(sizes, min(blockSize, len(f.data)-off))
			}
		default:
			for off := 0; off < len(f.data); off += f.blockSize {
				chunk := f.data[off:min(off+f.blockSize, len(f.data))]
				var comp []byte
				if f.compression == compressMSZIP {
					comp = enc.encode(nil, prev, chunk)
				} else {
					comp = chunk
				}
				prev = chunk
				comps, sizes = append(comps, comp), append(sizes, len(chunk))
			}
		}
		blockCounts = append(blockCounts, len(comps))
		for i, comp := range comps {
			var hdr [8]byte
			le.PutUint16(hdr[4:], uint16(len(comp)))
			le.PutUint16(hdr[6:], uint16(sizes[i]))
			if !opt.noChecksum {
				le.PutUint32(hdr[0:], blockChecksum(comp, [4]byte(hdr[4:8])))
			}
			d.Write(hdr[:])
			d.Write(bytes.Repeat([]byte{0xAA}, opt.dataReserve))
			d.Write(comp)
		}
		datas = append(datas, d.Bytes())
	}
	reserve := opt.headerReserve > 0 || opt.folderReserve > 0 || opt.dataReserve > 0
	hdrLen := headerSize
	if reserve {
		hdrLen += 4 + opt.headerReserve
	}
	coffFiles := hdrLen + len(folders)*(folderEntrySize+opt.folderReserve)
	fileTable := 0
	for _, f := range files {
		fileTable += fileEntrySize + len(f.name) + 1
	}
	dataStart := coffFiles + fileTable
	total := dataStart
	for _, d := range datas {
		total += len(d)
	}
	var b []byte
	b = append(b, "MSCF"...)
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, uint32(total))
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, uint32(coffFiles))
	b = le.AppendUint32(b, 0)
	b = append(b, 3, 1)
	b = le.AppendUint16(b, uint16(len(folders)))
	b = le.AppendUint16(b, uint16(len(files)))
	var flags uint16
	if reserve {
		flags |= flagReservePresent
	}
	b = le.AppendUint16(b, flags)
	b = le.AppendUint16(b, 0x1234)
	b = le.AppendUint16(b, 0)
	if reserve {
		b = le.AppendUint16(b, uint16(opt.headerReserve))
		b = append(b, byte(opt.folderReserve), byte(opt.dataReserve))
		b = append(b, bytes.Repeat([]byte{0xBB}, opt.headerReserve)...)
	}
	off := dataStart
	for i, f := range folders {
		b = le.AppendUint32(b, uint32(off))
		b = le.AppendUint16(b, uint16(blockCounts[i]))
		b = le.AppendUint16(b, f.compression)
		b = append(b, bytes.Repeat([]byte{0xCC}, opt.folderReserve)...)
		off += len(datas[i])
	}
	for _, f := range files {
		b = le.AppendUint32(b, uint32(f.size))
		b = le.AppendUint32(b, uint32(f.offset))
		b = le.AppendUint16(b, f.folder)
		d, tm := toDOSTime(modTime)
		b = le.AppendUint16(b, d)
		b = le.AppendUint16(b, tm)
		b = le.AppendUint16(b, f.attrs)
		b = append(b, f.name...)
		b = append(b, 0)
	}
	for _, d := range datas {
		b = append(b, d...)
	}
	return b
}

type rawFile struct {
	name   string
	size   int
	offset int
	folder uint16
	attrs  uint16
}

func TestReaderHandlesFoldersReservesAndChecksums(t *testing.T) {
	t.Parallel()
	text := textBytes(90_000)
	stored := textBytes(5_000)
	folders := []rawFolder{
		{compression: compressMSZIP, data: text, blockSize: blockSize},
		{compression: compressNone, data: stored, blockSize: 1_000},
	}
	files := []rawFile{
		{name: "first.txt", size: 40_000, offset: 0, folder: 0},
		{name: `dir\second.txt`, size: 50_000, offset: 40_000, folder: 0},
		{name: "stored.txt", size: 5_000, offset: 0, folder: 1},
		{name: "caf\xc3\xa9.txt", size: 3, offset: 10, folder: 1, attrs: attrUTF8Name},
		{name: "latin1-caf\xe9.txt", size: 1, offset: 0, folder: 1},
	}
	want := map[string][]byte{
		"first.txt":       text[:40_000],
		"dir/second.txt":  text[40_000:],
		"stored.txt":      stored,
		"café.txt":        stored[10:13],
		"latin1-café.txt": stored[:1],
	}
	for _, tc := range []struct {
		name string
		opt  rawOptions
	}{
		{"without reserved areas", rawOptions{}},
		{"with reserved areas in header, folders and data", rawOptions{headerReserve: 20, folderReserve: 3, dataReserve: 7}},
		{"with checksums left at zero", rawOptions{noChecksum: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := rawCab(t, tc.opt, folders, files)
			got := readAll(t, data)
			for name, w := range want {
				if !bytes.Equal(got[name], w) {
					t.Errorf("%q: got %d bytes, want %d", name, len(got[name]), len(w))
				}
			}
			dir := t.TempDir()
			path := filepath.Join(dir, "raw.cab")
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			if msg, err := exec.Command("cabextract", "-t", path).CombinedOutput(); err != nil {
				t.Errorf("cabextract -t disagrees that the test cabinet is valid: %v: %s", err, msg)
			}
		})
	}
}

func TestReaderRejectsDamage(t *testing.T) {
	t.Parallel()
	good := writeCab(t, []member{{"a.txt", textBytes(70_000)}})
	corrupt := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	le := binary.LittleEndian
	dataOff := int(le.Uint32(good[36:]))
	for _, tc := range []struct {
		name     string
		data     []byte
		atOpen   bool
		want     error
		contains string
	}{
		{"an executable is not a cabinet", []byte("MZ\x90\x00 this program cannot be run in DOS mode"), false, ErrNotCabinet, ""},
		{"an empty file is not a cabinet", nil, false, ErrNotCabinet, ""},
		{"a truncated cabinet", good[:len(good)-100], false, ErrDamaged, "truncated"},
		{"a header-only cabinet", good[:20], false, ErrDamaged, ""},
		{"a member larger than its folder's data", corrupt(func(b []byte) []byte {
			le.PutUint32(b[44:], 1<<31) // first CFFILE's cbFile
			return b
		}), false, ErrDamaged, "beyond"},
		{"a flipped data byte fails the checksum", corrupt(func(b []byte) []byte {
			b[dataOff+20] ^= 0xFF
			return b
		}), true, ErrDamaged, "checksum"},
		{"a multi-cabinet set", corrupt(func(b []byte) []byte {
			le.PutUint16(b[30:], flagNextCabinet)
			return b
		}), false, ErrMultiPart, "multi-cabinet"},
		{"an empty member name", corrupt(func(b []byte) []byte {
			b[44+fileEntrySize] = 0 // first byte of the first name
			return b
		}), false, ErrDamaged, "empty name"},
		{"a member name of 256 bytes", rawCab(t, rawOptions{},
			[]rawFolder{{compression: compressNone, data: []byte("x"), blockSize: 1}},
			[]rawFile{{name: strings.Repeat("n", 256), size: 1}}), false, ErrDamaged, "not terminated within 256 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r, err := NewReader(bytes.NewReader(tc.data), int64(len(tc.data)))
			if tc.atOpen {
				if err != nil {
					t.Fatalf("NewReader: %v", err)
				}
				var rc io.ReadCloser
				if rc, err = r.Open("a.txt"); err == nil {
					_, err = io.ReadAll(rc)
				}
			}
			if err == nil {
				t.Fatal("no error")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("error %q does not mention %q", err, tc.contains)
			}
		})
	}
}

func TestReaderNamesUnsupportedCompression(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		compression uint16
		name        string
	}{{compressQuantum | 0x0400, "Quantum"}, {0x0007, "unknown type 7"}} {
		t.Run(tc.name+" is refused with its name", func(t *testing.T) {
			t.Parallel()
			data := writeCab(t, []member{{"a.txt", []byte("hello")}})
			binary.LittleEndian.PutUint16(data[42:], tc.compression) // first CFFOLDER's typeCompress
			r, err := NewReader(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatalf("NewReader should list an %s cabinet: %v", tc.name, err)
			}
			if len(r.Files()) != 1 {
				t.Fatalf("Files() = %v", r.Files())
			}
			_, err = r.Open("a.txt")
			if !errors.Is(err, ErrUnsupportedCompression) {
				t.Fatalf("Open = %v, want ErrUnsupportedCompression", err)
			}
			want := "cabinet uses " + tc.name + " compression, which osvc cannot read; repack it with MSZIP or LZX"
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
			if err := r.ExtractAll(t.TempDir()); !errors.Is(err, ErrUnsupportedCompression) {
				t.Errorf("ExtractAll = %v, want ErrUnsupportedCompression", err)
			}
		})
	}
}

func TestWriterRefusesBadNames(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"", "a\x00b", strings.Repeat("n", 256), "\xff\xfe"} {
		w := NewWriter(io.Discard)
		if _, err := w.Create(name, modTime); err == nil {
			t.Errorf("Create(%q) succeeded", name)
		}
	}
	w := NewWriter(io.Discard)
	fw, err := w.Create("a", modTime)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Create("b", modTime); err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Write([]byte("late")); err == nil {
		t.Error("writing to a member after the next Create succeeded")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Create("c", modTime); err == nil {
		t.Error("Create after Close succeeded")
	}
}

func TestWriterWritesAnEmptyCabinet(t *testing.T) {
	t.Parallel()
	data := writeCab(t, nil)
	r, err := NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Files()) != 0 {
		t.Errorf("Files() = %v, want none", r.Files())
	}
}

func TestReaderHandlesOverlappingMembersWithinReason(t *testing.T) {
	t.Parallel()
	text := textBytes(100_000)
	folders := []rawFolder{{compression: compressMSZIP, data: text, blockSize: blockSize}}
	t.Run("members sharing data are all extracted", func(t *testing.T) {
		t.Parallel()
		data := rawCab(t, rawOptions{}, folders, []rawFile{
			{name: "a", size: 50_000, offset: 0}, {name: "b", size: 50_000, offset: 10_000}, {name: "c", size: 100, offset: 0},
		})
		r, err := NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := r.ExtractAll(dir); err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string][]byte{"a": text[:50_000], "b": text[10_000:60_000], "c": text[:100]} {
			if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s: %v, %d bytes, want %d", name, err, len(got), len(want))
			}
		}
	})
	t.Run("members crafted to restart decompression again and again are refused", func(t *testing.T) {
		t.Parallel()
		files := []rawFile{{name: "whole", size: len(text)}}
		for i := range 200 {
			files = append(files, rawFile{name: fmt.Sprintf("tail%d", i), size: 1, offset: len(text) - 1})
		}
		data := rawCab(t, rawOptions{}, folders, files)
		r, err := NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.ExtractAll(t.TempDir()); !errors.Is(err, ErrDamaged) {
			t.Errorf("ExtractAll = %v, want ErrDamaged", err)
		}
	})
}

func TestForEachReadsChosenMembersInOnePass(t *testing.T) {
	t.Parallel()
	members := []member{{"update.mum", []byte("mum")}, {"big.bin", textBytes(200_000)}, {"x.manifest", []byte("manifest")}}
	data := writeCab(t, members)
	r, err := NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	err = r.ForEach([]string{"X.MANIFEST", "update.mum"}, func(f File, content io.Reader) error {
		b, err := io.ReadAll(content)
		got[f.Name] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["update.mum"] != "mum" || got["x.manifest"] != "manifest" {
		t.Errorf("ForEach read %v", got)
	}
	var order []string
	if err := r.ForEach(nil, func(f File, _ io.Reader) error { order = append(order, f.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(order, ",") != "update.mum,big.bin,x.manifest" {
		t.Errorf("ForEach(nil) visited %v", order)
	}
	if err := r.ForEach([]string{"missing"}, nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ForEach(missing) = %v", err)
	}
}
