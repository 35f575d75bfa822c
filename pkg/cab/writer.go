package cab

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// Writer writes an MSZIP cabinet. Members are added with Create; the
// cabinet is written to the underlying writer by Close, because its file
// table precedes the data. Compressed data is held in memory until then.
type Writer struct {
	w       io.Writer
	files   []wfile
	folders []wfolder
	data    bytes.Buffer // every CFDATA record, in order
	pending []byte       // uncompressed bytes not yet in a block
	prev    []byte       // the previous block of this folder: the MSZIP window
	enc     mszipEncoder
	comp    []byte
	member  *memberWriter
	err     error
	closed  bool
}

type wfile struct {
	name       []byte
	utf        bool
	size       int64
	offset     int64 // uncompressed, in its folder
	folder     int
	date, time uint16
}

type wfolder struct {
	start        int64 // offset of its first CFDATA record in data
	blocks       int
	uncompressed int64
}

// A folder is closed at a member boundary once it holds this much, so no
// folder nears the 65535-block (2 GiB) limit of the format.
const folderSoftLimit = 1 << 30

// maxCabinetBytes is the format's limit: offsets are 32-bit.
const maxCabinetBytes = 1<<32 - 1

// NewWriter returns a Writer that writes a cabinet to w on Close.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Create adds a member named name ('/' or '\\' separated, stored with '\\');
// its content is what is written to the returned writer before the next
// Create or Close.
func (w *Writer) Create(name string, modified time.Time) (io.Writer, error) {
	if w.closed {
		return nil, errors.New("cabinet writer is closed")
	}
	if w.err != nil {
		return nil, w.err
	}
	stored := strings.ReplaceAll(name, "/", "\\")
	switch {
	case stored == "":
		return nil, errors.New("cabinet member name is empty")
	case strings.IndexByte(stored, 0) >= 0:
		return nil, fmt.Errorf("cabinet member name %q contains NUL", name)
	case len(stored) >= maxNameBytes:
		return nil, fmt.Errorf("cabinet member name %q is %d bytes; the format allows %d", name, len(stored), maxNameBytes-1)
	case !utf8.ValidString(stored):
		return nil, fmt.Errorf("cabinet member name %q is not valid UTF-8", name)
	case len(w.files) == 0xFFFF:
		return nil, errors.New("cabinet is full: the format allows 65535 members")
	}
	w.finishMember()
	if len(w.folders) == 0 || w.folders[len(w.folders)-1].uncompressed >= folderSoftLimit {
		if err := w.newFolder(); err != nil {
			return nil, err
		}
	}
	f := &w.folders[len(w.folders)-1]
	d, t := toDOSTime(modified)
	utf := false
	for i := 0; i < len(stored); i++ {
		if stored[i] >= 0x80 {
			utf = true
			break
		}
	}
	w.files = append(w.files, wfile{
		name:   []byte(stored),
		utf:    utf,
		offset: f.uncompressed,
		folder: len(w.folders) - 1,
		date:   d,
		time:   t,
	})
	w.member = &memberWriter{w: w, file: len(w.files) - 1}
	return w.member, nil
}

type memberWriter struct {
	w    *Writer
	file int
	done bool
}

func (m *memberWriter) Write(p []byte) (int, error) {
	if m.done {
		return 0, errors.New("cabinet member is finished: write it before the next Create or Close")
	}
	return m.w.write(m.file, p)
}

func (w *Writer) finishMember() {
	if w.member != nil {
		w.member.done = true
		w.member = nil
	}
}

func (w *Writer) write(file int, p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	f := &w.folders[len(w.folders)-1]
	if w.files[file].size+int64(len(p)) > 0xFFFFFFFF || f.uncompressed+int64(len(p)) > maxBlocksPerFold*blockSize {
		w.err = fmt.Errorf("cabinet member %q is too large for the cabinet format", w.files[file].name)
		return 0, w.err
	}
	w.files[file].size += int64(len(p))
	f.uncompressed += int64(len(p))
	n := len(p)
	for len(p) > 0 {
		k := min(blockSize-len(w.pending), len(p))
		w.pending = append(w.pending, p[:k]...)
		p = p[k:]
		if len(w.pending) == blockSize {
			if err := w.flushBlock(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

// newFolder ends the current folder (its last, possibly short, block) and
// starts another with an empty window.
func (w *Writer) newFolder() error {
	if len(w.pending) > 0 {
		if err := w.flushBlock(); err != nil {
			return err
		}
	}
	if len(w.folders) == 0xFFFF {
		w.err = errors.New("cabinet is full: the format allows 65535 folders")
		return w.err
	}
	w.prev = nil
	w.folders = append(w.folders, wfolder{start: int64(w.data.Len())})
	return nil
}

// flushBlock compresses the pending bytes into one CFDATA record: "CK" and a
// complete DEFLATE stream that may refer into the folder's previous block, as
// MSZIP decoders keep the history across blocks.
func (w *Writer) flushBlock() error {
	w.comp = w.enc.encode(w.comp[:0], w.prev, w.pending)
	if len(w.comp) > 0xFFFF {
		// Cannot happen: a stored block bounds the growth of 32 KiB to 7 bytes.
		w.err = fmt.Errorf("compressed block of %d bytes exceeds the cabinet limit", len(w.comp))
		return w.err
	}
	var hdr [dataHeaderSize]byte
	le := binary.LittleEndian
	le.PutUint16(hdr[4:], uint16(len(w.comp)))
	le.PutUint16(hdr[6:], uint16(len(w.pending)))
	le.PutUint32(hdr[0:], blockChecksum(w.comp, [4]byte(hdr[4:8])))
	w.data.Write(hdr[:])
	w.data.Write(w.comp)
	w.folders[len(w.folders)-1].blocks++
	w.prev = append(w.prev[:0], w.pending...)
	w.pending = w.pending[:0]
	return nil
}

// Close finishes the last member and writes the cabinet. It does not close
// the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return errors.New("cabinet writer is already closed")
	}
	w.closed = true
	w.finishMember()
	if w.err != nil {
		return w.err
	}
	if len(w.pending) > 0 {
		if err := w.flushBlock(); err != nil {
			return err
		}
	}
	filesSize := 0
	for _, f := range w.files {
		filesSize += fileEntrySize + len(f.name) + 1
	}
	coffFiles := headerSize + folderEntrySize*len(w.folders)
	dataStart := int64(coffFiles + filesSize)
	total := dataStart + int64(w.data.Len())
	if total > maxCabinetBytes {
		return fmt.Errorf("cabinet would be %d bytes; the format allows %d", total, int64(maxCabinetBytes))
	}
	le := binary.LittleEndian
	buf := make([]byte, 0, dataStart)
	buf = append(buf, "MSCF"...)
	buf = le.AppendUint32(buf, 0)
	buf = le.AppendUint32(buf, uint32(total))
	buf = le.AppendUint32(buf, 0)
	buf = le.AppendUint32(buf, uint32(coffFiles))
	buf = le.AppendUint32(buf, 0)
	buf = append(buf, 3, 1) // version 1.3
	buf = le.AppendUint16(buf, uint16(len(w.folders)))
	buf = le.AppendUint16(buf, uint16(len(w.files)))
	buf = le.AppendUint16(buf, 0) // flags
	buf = le.AppendUint16(buf, 0) // setID
	buf = le.AppendUint16(buf, 0) // iCabinet
	for _, f := range w.folders {
		buf = le.AppendUint32(buf, uint32(dataStart+f.start))
		buf = le.AppendUint16(buf, uint16(f.blocks))
		buf = le.AppendUint16(buf, compressMSZIP)
	}
	for _, f := range w.files {
		attrs := uint16(attrArchive)
		if f.utf {
			attrs |= attrUTF8Name
		}
		buf = le.AppendUint32(buf, uint32(f.size))
		buf = le.AppendUint32(buf, uint32(f.offset))
		buf = le.AppendUint16(buf, uint16(f.folder))
		buf = le.AppendUint16(buf, f.date)
		buf = le.AppendUint16(buf, f.time)
		buf = le.AppendUint16(buf, attrs)
		buf = append(buf, f.name...)
		buf = append(buf, 0)
	}
	if _, err := w.w.Write(buf); err != nil {
		return fmt.Errorf("write cabinet: %w", err)
	}
	if _, err := w.data.WriteTo(w.w); err != nil {
		return fmt.Errorf("write cabinet: %w", err)
	}
	return nil
}
