package cab

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/osvc/osvc/pkg/winpath"
)

// Reader reads the members of a cabinet. Its methods may be called from
// several goroutines at once when the underlying io.ReaderAt allows it.
type Reader struct {
	r       io.ReaderAt
	size    int64
	folders []*folder
	files   []File
	entries []entry
}

// folder is a CFFOLDER with its data blocks located.
type folder struct {
	compression  uint16
	reserveBytes int // per-CFDATA reserved area
	blocks       []block
	uncompressed int64
}

// block is one CFDATA record.
type block struct {
	offset   int64 // of the compressed data, after header and reserve
	checksum uint32
	sizes    [4]byte // cbData, cbUncomp as stored, for the checksum
	cbData   int
	cbUncomp int
}

// entry is a CFFILE record.
type entry struct {
	folder int
	offset int64 // uncompressed offset in the folder
	size   int64
}

func damaged(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrDamaged}, args...)...)
}

// NewReader parses the cabinet's header, folder and file tables and locates
// every data block, so a damaged or truncated cabinet fails here rather than
// halfway through an extraction.
func NewReader(r io.ReaderAt, size int64) (*Reader, error) {
	var h [headerSize]byte
	if size < 4 {
		return nil, ErrNotCabinet
	}
	if err := readFull(r, size, h[:min(size, headerSize)], 0); err != nil {
		return nil, fmt.Errorf("read cabinet header: %w", err)
	}
	if !IsCabinet(h[:]) {
		return nil, ErrNotCabinet
	}
	if size < headerSize {
		return nil, damaged("file is %d bytes, shorter than a cabinet header", size)
	}
	le := binary.LittleEndian
	cbCabinet := int64(le.Uint32(h[8:]))
	coffFiles := int64(le.Uint32(h[16:]))
	versionMajor := h[25]
	cFolders := int(le.Uint16(h[26:]))
	cFiles := int(le.Uint16(h[28:]))
	flags := le.Uint16(h[30:])
	if versionMajor != 1 {
		return nil, damaged("cabinet format version %d.%d is not 1.x", versionMajor, h[24])
	}
	if flags&(flagPrevCabinet|flagNextCabinet) != 0 {
		return nil, ErrMultiPart
	}
	if cbCabinet < headerSize {
		return nil, damaged("header declares a cabinet of %d bytes", cbCabinet)
	}
	if cbCabinet > size {
		return nil, damaged("file is truncated: header declares %d bytes, file has %d", cbCabinet, size)
	}
	size = cbCabinet // anything after the declared end is not part of the cabinet

	pos := int64(headerSize)
	folderReserve, dataReserve := 0, 0
	if flags&flagReservePresent != 0 {
		var rs [4]byte
		if err := readFull(r, size, rs[:], pos); err != nil {
			return nil, damaged("reserve sizes: %v", err)
		}
		pos += 4 + int64(le.Uint16(rs[0:]))
		folderReserve = int(rs[2])
		dataReserve = int(rs[3])
	}

	// Each folder entry is folderEntrySize+folderReserve bytes: a table that
	// does not fit the file is damage, and the check bounds the work below.
	if pos+int64(cFolders)*int64(folderEntrySize+folderReserve) > size {
		return nil, damaged("folder table runs past the end of the file")
	}
	cr := &Reader{r: r, size: size}
	// Every data block has a header of at least 8 bytes inside the file, so a
	// cabinet cannot honestly have more blocks than that: a limit that keeps
	// crafted folder tables pointing at the same data from costing more than
	// a pass over the file.
	blockBudget := size/dataHeaderSize + 1
	fe := make([]byte, folderEntrySize)
	for i := range cFolders {
		if _, err := r.ReadAt(fe, pos); err != nil {
			return nil, damaged("folder %d: %v", i, err)
		}
		pos += int64(folderEntrySize + folderReserve)
		f := &folder{
			compression:  le.Uint16(fe[6:]),
			reserveBytes: dataReserve,
		}
		if f.compression&0x000F == compressLZX {
			if _, err := lzxWindowBits(f.compression); err != nil {
				return nil, damaged("folder %d: %v", i, err)
			}
		}
		start := int64(le.Uint32(fe[0:]))
		n := int(le.Uint16(fe[4:]))
		blockBudget -= int64(n)
		if blockBudget < 0 {
			return nil, damaged("folders declare more data blocks than the file can hold")
		}
		if err := cr.locateBlocks(f, i, start, n); err != nil {
			return nil, err
		}
		cr.folders = append(cr.folders, f)
	}

	if coffFiles < headerSize || coffFiles+int64(cFiles)*fileEntrySize > size {
		return nil, damaged("file table runs past the end of the file")
	}
	pos = coffFiles
	var fh [fileEntrySize]byte
	nameBuf := make([]byte, maxNameBytes)
	for i := range cFiles {
		if err := readFull(r, size, fh[:], pos); err != nil {
			return nil, damaged("file entry %d: %v", i, err)
		}
		pos += fileEntrySize
		n := min(int64(len(nameBuf)), size-pos)
		if n <= 0 {
			return nil, damaged("file entry %d: name runs past the end of the file", i)
		}
		if _, err := r.ReadAt(nameBuf[:n], pos); err != nil && !errors.Is(err, io.EOF) {
			return nil, damaged("file entry %d name: %v", i, err)
		}
		// The format allows 255 bytes and the NUL; libmspack refuses longer
		// and empty names too.
		end := bytes.IndexByte(nameBuf[:n], 0)
		if end < 0 {
			return nil, damaged("file entry %d: name is not terminated within %d bytes", i, maxNameBytes)
		}
		if end == 0 {
			return nil, damaged("file entry %d has an empty name", i)
		}
		rawName := nameBuf[:end]
		pos += int64(end) + 1

		cbFile := int64(le.Uint32(fh[0:]))
		off := int64(le.Uint32(fh[4:]))
		iFolder := int(le.Uint16(fh[8:]))
		attribs := le.Uint16(fh[14:])
		name := decodeName(rawName, attribs&attrUTF8Name != 0)
		if iFolder >= 0xFFFD {
			return nil, fmt.Errorf("member %q continues into another cabinet: %w", name, ErrMultiPart)
		}
		if iFolder >= len(cr.folders) {
			return nil, damaged("member %q is in folder %d of %d", name, iFolder, len(cr.folders))
		}
		// A member's declared size must be backed by data the file holds:
		// this is what stops a small crafted file from claiming gigabytes.
		if off+cbFile > cr.folders[iFolder].uncompressed {
			return nil, damaged("member %q (%d bytes at %d) lies beyond the %d bytes its folder holds",
				name, cbFile, off, cr.folders[iFolder].uncompressed)
		}
		cr.files = append(cr.files, File{
			Name:     name,
			Size:     cbFile,
			Modified: dosTime(le.Uint16(fh[10:]), le.Uint16(fh[12:])),
		})
		cr.entries = append(cr.entries, entry{folder: iFolder, offset: off, size: cbFile})
	}
	return cr, nil
}

// locateBlocks walks a folder's chain of CFDATA headers.
func (cr *Reader) locateBlocks(f *folder, index int, start int64, n int) error {
	pos := start
	hdr := make([]byte, dataHeaderSize)
	le := binary.LittleEndian
	for j := range n {
		if err := readFull(cr.r, cr.size, hdr, pos); err != nil {
			return damaged("folder %d block %d header: %v", index, j, err)
		}
		b := block{
			checksum: le.Uint32(hdr[0:]),
			cbData:   int(le.Uint16(hdr[4:])),
			cbUncomp: int(le.Uint16(hdr[6:])),
		}
		copy(b.sizes[:], hdr[4:8])
		b.offset = pos + dataHeaderSize + int64(f.reserveBytes)
		pos = b.offset + int64(b.cbData)
		if pos > cr.size {
			return damaged("folder %d block %d runs past the end of the file", index, j)
		}
		switch f.compression & 0x000F {
		case compressNone:
			if b.cbData != b.cbUncomp {
				return damaged("folder %d block %d: stored block of %d bytes declares %d uncompressed", index, j, b.cbData, b.cbUncomp)
			}
		case compressMSZIP, compressLZX:
			if b.cbUncomp > blockSize {
				return damaged("folder %d block %d declares %d uncompressed bytes, more than %s's %d",
					index, j, b.cbUncomp, compressionName(f.compression), blockSize)
			}
		}
		f.blocks = append(f.blocks, b)
		f.uncompressed += int64(b.cbUncomp)
	}
	return nil
}

// readFull reads len(p) bytes at off, refusing to read past size.
func readFull(r io.ReaderAt, size int64, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > size {
		return io.ErrUnexpectedEOF
	}
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// Files lists the cabinet's members in stored order.
func (r *Reader) Files() []File { return append([]File(nil), r.files...) }

// find returns the index of the named member: an exact match, else the first
// match ignoring case (Windows names are case-insensitive), else -1.
func (r *Reader) find(name string) int {
	name = strings.ReplaceAll(name, "\\", "/")
	for i, f := range r.files {
		if f.Name == name {
			return i
		}
	}
	for i, f := range r.files {
		if strings.EqualFold(f.Name, name) {
			return i
		}
	}
	return -1
}

// Open returns the content of the named member. The name is matched exactly,
// or else ignoring case.
func (r *Reader) Open(name string) (io.ReadCloser, error) {
	i := r.find(name)
	if i < 0 {
		return nil, fmt.Errorf("cabinet has no member %q: %w", name, os.ErrNotExist)
	}
	e := r.entries[i]
	fr, err := r.newFolderReader(e.folder)
	if err != nil {
		return nil, fmt.Errorf("open member %q: %w", r.files[i].Name, err)
	}
	if err := fr.skip(e.offset); err != nil {
		return nil, fmt.Errorf("open member %q: %w", r.files[i].Name, err)
	}
	return &memberReader{name: r.files[i].Name, r: io.LimitReader(fr, e.size), want: e.size}, nil
}

// memberReader turns a folder ending early into an error rather than a
// silently short file.
type memberReader struct {
	name string
	r    io.Reader
	want int64
	got  int64
}

func (m *memberReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	m.got += int64(n)
	if errors.Is(err, io.EOF) && m.got < m.want {
		return n, damaged("member %q ends after %d of %d bytes", m.name, m.got, m.want)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("read member %q: %w", m.name, err)
	}
	return n, err
}

func (m *memberReader) Close() error { return nil }

// ExtractAll writes every member under dir. Any member name that is absolute,
// has a drive letter, contains "..", or would resolve outside dir (including
// through an existing symlink) makes it fail with ErrUnsafePath before
// anything outside dir is written. dir is created if it does not exist;
// existing files are overwritten.
func (r *Reader) ExtractAll(dir string) error {
	return r.extract(dir, func(int) bool { return true })
}

// ExtractFiles writes the named members under dir, with the same safety rules
// as ExtractAll. Names are matched as by Open.
func (r *Reader) ExtractFiles(dir string, names ...string) error {
	want := make(map[int]bool, len(names))
	for _, n := range names {
		i := r.find(n)
		if i < 0 {
			return fmt.Errorf("cabinet has no member %q: %w", n, os.ErrNotExist)
		}
		want[i] = true
	}
	return r.extract(dir, func(i int) bool { return want[i] })
}

func (r *Reader) extract(dir string, selected func(int) bool) error {
	// Every name is checked before anything is written, so a cabinet with one
	// bad name leaves dir untouched.
	clean := make([]string, len(r.files))
	for i, f := range r.files {
		if !selected(i) {
			continue
		}
		c, err := winpath.Clean(f.Name)
		if err != nil {
			return err
		}
		clean[i] = c
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create extraction folder: %w", err)
	}
	return r.visit(selected, func(i int, content io.Reader) error {
		target, err := safeCreatePath(dir, clean[i])
		if err != nil {
			return fmt.Errorf("extract %q: %w", r.files[i].Name, err)
		}
		return writeMember(target, content, r.entries[i].size, r.files[i])
	})
}

// ForEach calls fn with the content of each named member (matched as by
// Open; all members when names is empty), in stored order, decompressing each
// folder once. fn need not read all of content. Reading several members
// this way costs one pass, where Open for each would start every member from
// the beginning of its folder.
func (r *Reader) ForEach(names []string, fn func(f File, content io.Reader) error) error {
	selected := func(int) bool { return true }
	if len(names) > 0 {
		want := make(map[int]bool, len(names))
		for _, n := range names {
			i := r.find(n)
			if i < 0 {
				return fmt.Errorf("cabinet has no member %q: %w", n, os.ErrNotExist)
			}
			want[i] = true
		}
		selected = func(i int) bool { return want[i] }
	}
	return r.visit(selected, func(i int, content io.Reader) error {
		return fn(r.files[i], &memberReader{name: r.files[i].Name, r: content, want: r.entries[i].size})
	})
}

// visit calls fn for each selected member in folder order with a reader of
// exactly its content, decompressing each folder once.
func (r *Reader) visit(selected func(int) bool, fn func(i int, content io.Reader) error) error {
	for fi, f := range r.folders {
		var members []int
		var budget int64 = 2 * f.uncompressed
		for i, e := range r.entries {
			if e.folder == fi && selected(i) {
				members = append(members, i)
				budget += e.size
			}
		}
		if len(members) == 0 {
			continue
		}
		sort.SliceStable(members, func(a, b int) bool { return r.entries[members[a]].offset < r.entries[members[b]].offset })
		var fr *folderReader
		var spent int64
		for _, i := range members {
			e := r.entries[i]
			// Members are read in folder order with one decompressor. A member
			// overlapping the previous one (legal, if odd) restarts it, within
			// a budget: crafted overlaps must not make extraction quadratic.
			if fr == nil || fr.pos > e.offset {
				if fr != nil {
					spent += fr.pos
				}
				if spent+e.offset+e.size > budget {
					return damaged("members of folder %d overlap too much to extract", fi)
				}
				var err error
				if fr, err = r.newFolderReader(fi); err != nil {
					return fmt.Errorf("read %q: %w", r.files[i].Name, err)
				}
			}
			if err := fr.skip(e.offset); err != nil {
				return fmt.Errorf("read %q: %w", r.files[i].Name, err)
			}
			if err := fn(i, io.LimitReader(fr, e.size)); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeMember(target string, src io.Reader, size int64, f File) error {
	out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("extract %q: %w", f.Name, err)
	}
	n, err := io.Copy(out, src)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != size {
		err = damaged("member ends after %d of %d bytes", n, size)
	}
	if err != nil {
		return fmt.Errorf("extract %q: %w", f.Name, err)
	}
	if !f.Modified.IsZero() {
		// The time is informative; a filesystem refusing it is no reason to fail.
		_ = os.Chtimes(target, f.Modified, f.Modified)
	}
	return nil
}

// safeCreatePath makes the parent folders of rel under dir and returns the
// file path to write. It never follows a symlink: an existing symlink, or
// anything not a folder, where a folder is needed, or a symlink or folder
// where the file goes, is refused, so writing cannot leave dir.
func safeCreatePath(dir, rel string) (string, error) {
	parts := strings.Split(rel, "/")
	cur := dir
	for _, p := range parts[:len(parts)-1] {
		cur = filepath.Join(cur, p)
		fi, err := os.Lstat(cur)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := os.Mkdir(cur, 0o755); err != nil {
				return "", err
			}
		case err != nil:
			return "", err
		case fi.Mode()&os.ModeSymlink != 0:
			return "", fmt.Errorf("%q passes through a symlink: %w", rel, ErrUnsafePath)
		case !fi.IsDir():
			return "", fmt.Errorf("%q needs a folder where a file exists: %w", rel, ErrDamaged)
		}
	}
	target := filepath.Join(cur, parts[len(parts)-1])
	fi, err := os.Lstat(target)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return "", err
	case fi.Mode()&os.ModeSymlink != 0:
		return "", fmt.Errorf("%q is an existing symlink: %w", rel, ErrUnsafePath)
	case !fi.Mode().IsRegular():
		return "", fmt.Errorf("%q exists and is not a regular file: %w", rel, ErrDamaged)
	}
	return target, nil
}

// folderReader yields a folder's uncompressed bytes in order.
type folderReader struct {
	r        *Reader
	f        *folder
	next     int    // next block to decode
	out      []byte // current block's (for LZX: frame's) output
	outPos   int
	pos      int64 // uncompressed offset of the next byte Read returns
	in       []byte
	hist     []byte // last 32 KiB of output: the MSZIP window
	inflater io.ReadCloser
	lzx      *lzxDecoder
}

func (r *Reader) newFolderReader(i int) (*folderReader, error) {
	f := r.folders[i]
	fr := &folderReader{r: r, f: f}
	switch f.compression & 0x000F {
	case compressNone, compressMSZIP:
	case compressLZX:
		bits, err := lzxWindowBits(f.compression)
		if err != nil {
			return nil, damaged("%v", err) // NewReader refused it already
		}
		fr.lzx = newLZXDecoder(bits, f.uncompressed, fr.nextLZXInput)
	default:
		return nil, fmt.Errorf("cabinet uses %s compression, which osvc cannot read; repack it with MSZIP or LZX: %w",
			compressionName(f.compression), ErrUnsupportedCompression)
	}
	return fr, nil
}

func (fr *folderReader) skip(to int64) error {
	if to < fr.pos {
		return fmt.Errorf("internal error: cannot seek backwards from %d to %d", fr.pos, to)
	}
	if _, err := io.CopyN(io.Discard, fr, to-fr.pos); err != nil {
		if errors.Is(err, io.EOF) {
			return damaged("folder ends after %d bytes, before offset %d", fr.pos, to)
		}
		return err
	}
	return nil
}

func (fr *folderReader) Read(p []byte) (int, error) {
	for fr.outPos == len(fr.out) {
		if err := fr.decode(); err != nil {
			return 0, err
		}
	}
	n := copy(p, fr.out[fr.outPos:])
	fr.outPos += n
	fr.pos += int64(n)
	return n, nil
}

// readBlock reads the next CFDATA block's payload into fr.in and checks
// it against its checksum; io.EOF after the last.
func (fr *folderReader) readBlock() (idx int, b block, in []byte, err error) {
	if fr.next == len(fr.f.blocks) {
		return 0, block{}, nil, io.EOF
	}
	b = fr.f.blocks[fr.next]
	idx = fr.next
	fr.next++
	if cap(fr.in) < b.cbData {
		fr.in = make([]byte, b.cbData)
	}
	in = fr.in[:b.cbData]
	if err := readFull(fr.r.r, fr.r.size, in, b.offset); err != nil {
		return idx, b, nil, damaged("block %d: %v", idx, err)
	}
	if b.checksum != 0 {
		if got := blockChecksum(in, b.sizes); got != b.checksum {
			return idx, b, nil, damaged("block %d fails its checksum (stored %08x, computed %08x)", idx, b.checksum, got)
		}
	}
	return idx, b, in, nil
}

// nextLZXInput feeds the LZX decoder: its bitstream runs on across the
// folder's blocks, so a block's payload is just the next stretch of it.
func (fr *folderReader) nextLZXInput() ([]byte, error) {
	_, _, in, err := fr.readBlock()
	return in, err
}

func (fr *folderReader) decode() error {
	if fr.lzx != nil {
		out, err := fr.lzx.nextFrame()
		if err != nil {
			return err
		}
		fr.out, fr.outPos = out, 0
		return nil
	}
	idx, b, in, err := fr.readBlock()
	if err != nil {
		return err
	}
	if fr.f.compression&0x000F == compressNone {
		fr.out = in
		fr.outPos = 0
		return nil
	}
	if len(in) < 2 || in[0] != 'C' || in[1] != 'K' {
		return damaged("MSZIP block %d lacks its CK signature", idx)
	}
	src := bytes.NewReader(in[2:])
	if fr.inflater == nil {
		fr.inflater = flate.NewReaderDict(src, fr.hist)
	} else if err := fr.inflater.(flate.Resetter).Reset(src, fr.hist); err != nil {
		return err
	}
	if cap(fr.out) < blockSize {
		fr.out = make([]byte, blockSize)
	}
	out := fr.out[:b.cbUncomp]
	// Only the declared size is read, so a block that would inflate further
	// cannot produce more than 32 KiB.
	if _, err := io.ReadFull(fr.inflater, out); err != nil {
		return damaged("MSZIP block %d: %v", idx, err)
	}
	fr.out = out
	fr.outPos = 0
	fr.hist = append(fr.hist, out...)
	if over := len(fr.hist) - blockSize; over > 0 {
		fr.hist = append(fr.hist[:0], fr.hist[over:]...)
	}
	return nil
}
