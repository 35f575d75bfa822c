package cab

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// LZX decompression, as cabinets use it.
//
// The format is LZ77 over a window of 2^15 to 2^21 bytes (the folder's
// typeCompress says which) with Huffman-coded literals, lengths and
// position slots, described by Microsoft in "LZX DELTA Compression and
// Decompression" ([MS-PATCH]), of which cabinet LZX is the older subset:
// no reference data, no chunk headers, no extended match lengths, windows
// of at most 2 MiB. The compressed data of a folder is one bitstream read
// across its CFDATA blocks in order; its output comes in frames of 32 KiB
// (the last one shorter), and the bitstream is realigned to 16 bits at
// the end of each frame. Blocks (verbatim, aligned offset, uncompressed)
// may span frames; the Huffman code lengths of the main and length trees
// are sent as differences from the previous block's, and the three
// repeated offsets carry over, so the state runs across a whole folder.
//
// Where the documentation and Microsoft's encoder differ (the aligned
// offset tree comes before the main tree; an uncompressed block carries a
// 24-bit length; the length tree may be empty), this follows what real
// cabinets hold, as libmspack's lzxd.c notes. Everything read is checked:
// Huffman trees must be complete (the length tree may be empty, and is
// then never used), matches must lie within the data already decoded, the
// block and frame being decoded, and the output stops at the folder's
// declared size.

const (
	lzxFrameSize      = 32768
	lzxMinWindowBits  = 15
	lzxMaxWindowBits  = 21
	lzxNumChars       = 256
	lzxMinMatch       = 2
	lzxPrimaryLengths = 7   // a main symbol's length header of 7 says: read the length tree
	lzxLengthSymbols  = 249 // the length tree's alphabet
	lzxPretreeSymbols = 20
	lzxAlignedSymbols = 8
	lzxMaxSlots       = 50 // position slots of the 2 MiB window
	lzxMainSymbols    = lzxNumChars + lzxMaxSlots*8
	lzxMaxCodeBits    = 16
	// E8 translation applies to the first 32768 frames (1 GiB) only.
	lzxE8Frames = 32768
	// Runs of code lengths may run this far past the end of a tree
	// (a run of 51 zeros starting at its last symbol).
	lzxLengthSlack = 64

	lzxBlockVerbatim     = 1
	lzxBlockAligned      = 2
	lzxBlockUncompressed = 3
)

var (
	// lzxSlots is the number of position slots of each window size,
	// 2^15 to 2^21: the first slot whose base reaches the window size.
	lzxSlots = [lzxMaxWindowBits - lzxMinWindowBits + 1]int{30, 32, 34, 36, 38, 42, 50}
	// lzxExtraBits and lzxPositionBase describe each position slot: the
	// formatted offset (match offset + 2) is base plus that many bits.
	lzxExtraBits    [lzxMaxSlots]uint8
	lzxPositionBase [lzxMaxSlots]uint32
)

func init() {
	for i := range lzxMaxSlots {
		switch {
		case i < 4:
			lzxExtraBits[i] = 0
		case i < 36:
			lzxExtraBits[i] = uint8(i/2 - 1)
		default:
			lzxExtraBits[i] = 17
		}
		if i > 0 {
			lzxPositionBase[i] = lzxPositionBase[i-1] + 1<<lzxExtraBits[i-1]
		}
	}
}

// lzxWindowBits returns the window size of an LZX folder's typeCompress,
// or an error when it is outside 2^15..2^21.
func lzxWindowBits(typeCompress uint16) (int, error) {
	bits := int(typeCompress>>8) & 0x1F
	if bits < lzxMinWindowBits || bits > lzxMaxWindowBits {
		return 0, fmt.Errorf("LZX window of 2^%d bytes; the format allows 2^%d to 2^%d", bits, lzxMinWindowBits, lzxMaxWindowBits)
	}
	return bits, nil
}

// errLZXInputEnd is what the bit reader reports when a frame needed more
// compressed data than the folder's blocks hold.
var errLZXInputEnd = errors.New("compressed data ends before the folder's declared size")

// lzxBits reads the LZX bitstream: 16-bit little-endian words, each read
// from its most significant bit, over the payloads of a folder's CFDATA
// blocks taken in order.
type lzxBits struct {
	next  func() ([]byte, error) // the next block's payload; io.EOF after the last
	chunk []byte
	pos   int
	back  []byte // bytes given back by startBytes, read before chunk
	// end is why the input ended (io.EOF, or the next block's error);
	// past the end the reader supplies zero bits and counts them in pad.
	end error
	pad uint

	buf uint64 // the next n bits, the first one at bit n-1
	n   uint
}

// fill makes chunk hold unread bytes, fetching the next blocks as needed;
// false when the input has ended.
func (b *lzxBits) fill() bool {
	for b.pos == len(b.chunk) {
		if b.end != nil {
			return false
		}
		chunk, err := b.next()
		if err != nil {
			b.end = err
			return false
		}
		b.chunk, b.pos = chunk, 0
	}
	return true
}

// byte returns the next input byte, or false past the end of the input.
func (b *lzxBits) byte() (byte, bool) {
	if len(b.back) > 0 {
		c := b.back[0]
		b.back = b.back[1:]
		return c, true
	}
	if !b.fill() {
		return 0, false
	}
	c := b.chunk[b.pos]
	b.pos++
	return c, true
}

// refill tops the bit buffer up to more than 48 bits: a main symbol, a
// length symbol and 17 extra bits.
func (b *lzxBits) refill() {
	for b.n <= 48 {
		var w uint64
		if len(b.back) == 0 && b.pos+2 <= len(b.chunk) {
			w = uint64(b.chunk[b.pos]) | uint64(b.chunk[b.pos+1])<<8
			b.pos += 2
		} else {
			lo, ok1 := b.byte()
			hi, ok2 := b.byte()
			if !ok1 {
				b.pad += 8
			}
			if !ok2 {
				b.pad += 8
			}
			w = uint64(lo) | uint64(hi)<<8
		}
		b.buf = b.buf<<16 | w
		b.n += 16
	}
}

// peek16 returns the next 16 bits; the buffer must hold 16.
func (b *lzxBits) peek16() uint32 { return uint32(b.buf>>(b.n-16)) & 0xFFFF }

func (b *lzxBits) skip(n uint) { b.n -= n }

// read returns the next n bits, n <= 32.
func (b *lzxBits) read(n uint) uint32 {
	if n == 0 {
		return 0
	}
	if b.n < n {
		b.refill()
	}
	b.n -= n
	return uint32(b.buf>>b.n) & (1<<n - 1)
}

// overrun returns an error when more bits were consumed than the input
// holds. libmspack lets a stream's end borrow 16 bits of zeros (its
// reader pads the input once), so the last block may too; no more, and
// none where the input ended on a damaged block.
func (b *lzxBits) overrun() error {
	if b.pad <= b.n {
		return nil
	}
	used := b.pad - b.n
	if errors.Is(b.end, io.EOF) {
		if used <= 16 {
			return nil
		}
		return errLZXInputEnd
	}
	return b.end
}

// align drops the bits up to the next 16-bit boundary of the stream. Bits
// enter the buffer in whole words, so the bits of a partly read word are
// the buffer's count modulo 16.
func (b *lzxBits) align() { b.n -= b.n % 16 }

// startBytes ends bit reading before the raw bytes of an uncompressed
// block: the rest of the current word is dropped, or a whole word when at
// a boundary (the encoder always writes 1 to 16 bits of padding), and the
// whole words still buffered are given back as bytes.
func (b *lzxBits) startBytes() {
	if b.n < 16 {
		b.refill()
	}
	if r := b.n % 16; r != 0 {
		b.n -= r
	} else {
		b.n -= 16
	}
	// The last of the buffered bytes may be zeros supplied past the end
	// of the input: those are not given back, nor counted as consumed.
	fake := min(b.pad, b.n) / 8
	back := make([]byte, 0, b.n/8+uint(len(b.back)))
	for b.n > 0 {
		w := uint16(b.buf >> (b.n - 16))
		b.n -= 16
		back = append(back, byte(w), byte(w>>8))
	}
	back = back[:uint(len(back))-fake]
	b.pad -= fake * 8
	b.back = append(back, b.back...)
}

// readBytes fills p with raw input bytes.
func (b *lzxBits) readBytes(p []byte) error {
	for len(p) > 0 {
		if len(b.back) > 0 {
			n := copy(p, b.back)
			b.back, p = b.back[n:], p[n:]
			continue
		}
		if !b.fill() {
			if errors.Is(b.end, io.EOF) {
				return errLZXInputEnd
			}
			return b.end
		}
		n := copy(p, b.chunk[b.pos:])
		b.pos += n
		p = p[n:]
	}
	return nil
}

// huffman is a decoding table of a canonical Huffman code read MSB first:
// the next 16 bits index a primary table of 2^bits entries directly, and
// codes longer than bits through a second-level table of 2^(16-bits).
// An entry is symbol<<8 | code length, or a link: lzxLink | offset<<8.
type huffman struct {
	bits    uint
	primary []uint32
	sub     []uint32
	count   [lzxMaxCodeBits + 1]int
	next    [lzxMaxCodeBits + 2]uint32
	empty   bool
}

const lzxLink = 1 << 31

// errHuffman describes a set of code lengths that is not a complete code.
type errHuffman struct {
	tree          string
	oversubscribe bool
}

func (e errHuffman) Error() string {
	if e.oversubscribe {
		return fmt.Sprintf("the %s has over-subscribed code lengths (more codes than the lengths allow)", e.tree)
	}
	return fmt.Sprintf("the %s has incomplete code lengths (some bit patterns decode to nothing)", e.tree)
}

// build makes the table for lens. A code must be complete; with
// allowEmpty, all lengths zero is accepted as an empty tree, which must
// then not be decoded from.
func (h *huffman) build(tree string, lens []uint8, bits uint, allowEmpty bool) error {
	h.bits = bits
	h.count = [lzxMaxCodeBits + 1]int{}
	for _, l := range lens {
		h.count[l]++
	}
	h.count[0] = 0
	left := 1
	for l := 1; l <= lzxMaxCodeBits; l++ {
		left = left<<1 - h.count[l]
		if left < 0 {
			return errHuffman{tree, true}
		}
	}
	if left == 1<<lzxMaxCodeBits && allowEmpty {
		h.empty = true
		return nil
	}
	if left != 0 {
		return errHuffman{tree, false}
	}
	h.empty = false
	var code uint32
	for l := 1; l <= lzxMaxCodeBits; l++ {
		code = (code + uint32(h.count[l-1])) << 1
		h.next[l] = code
	}
	if cap(h.primary) < 1<<bits {
		h.primary = make([]uint32, 1<<bits)
	}
	h.primary = h.primary[:1<<bits]
	clear(h.primary) // 0 is no entry: a leaf has a length, a link its flag
	h.sub = h.sub[:0]
	subBits := lzxMaxCodeBits - bits
	// Short codes first, so that each long code's prefix entry, once made a
	// link, is never overwritten by a leaf.
	for l := uint(1); l <= lzxMaxCodeBits; l++ {
		if h.count[l] == 0 {
			continue
		}
		for sym, sl := range lens {
			if uint(sl) != l {
				continue
			}
			code := h.next[l]
			h.next[l]++
			entry := uint32(sym)<<8 | uint32(l)
			if l <= bits {
				start := code << (bits - l)
				fill := h.primary[start : start+1<<(bits-l)]
				for i := range fill {
					fill[i] = entry
				}
				continue
			}
			prefix := code >> (l - bits)
			link := h.primary[prefix]
			if link == 0 {
				// First long code under this prefix: make its table.
				link = lzxLink | uint32(len(h.sub))<<8
				h.primary[prefix] = link
				h.sub = slices.Grow(h.sub, 1<<subBits)[:len(h.sub)+1<<subBits]
			}
			off := (link &^ lzxLink) >> 8
			rest := code & (1<<(l-bits) - 1)
			start := off + rest<<(lzxMaxCodeBits-l)
			fill := h.sub[start : start+1<<(lzxMaxCodeBits-l)]
			for i := range fill {
				fill[i] = entry
			}
		}
	}
	return nil
}

// decode reads one symbol. The tree must be built and not empty.
func (h *huffman) decode(b *lzxBits) int {
	if b.n < 16 {
		b.refill()
	}
	return h.lookup(b)
}

// lookup is decode when the bit buffer is known to hold 16 bits; small
// enough to be inlined in the decoding loop.
func (h *huffman) lookup(b *lzxBits) int {
	v := b.peek16()
	e := h.primary[v>>(lzxMaxCodeBits-h.bits)]
	if e&lzxLink != 0 {
		e = h.sub[(e&^lzxLink)>>8+v&(1<<(lzxMaxCodeBits-h.bits)-1)]
	}
	b.skip(uint(e & 0xFF))
	return int(e >> 8)
}

// lzxDecoder decodes one folder's LZX data, a frame at a time.
type lzxDecoder struct {
	in         lzxBits
	window     []byte
	windowSize int   // 2^bits: how far back matches may reach
	slots      int   // position slots of this window size
	pos        int   // where the next byte goes in window
	frameStart int   // where the current frame starts in window
	total      int64 // the folder's declared uncompressed size
	produced   int64 // bytes of the frames returned so far
	frame      int

	headerRead bool
	e8Size     int32 // the E8 translation size of the header; 0: none
	e8Started  bool  // an E8 byte can have been output: translation has work
	e8buf      []byte

	blockType      int
	blockRemaining int
	blockLength    int
	r0, r1, r2     uint32

	// Code lengths persist from block to block; the slack takes runs that
	// pass a tree's end, which must then be zeros.
	mainLens   [lzxMainSymbols + lzxLengthSlack]uint8
	lengthLens [lzxLengthSymbols + lzxLengthSlack]uint8
	alignedLen [lzxAlignedSymbols]uint8
	preLens    [lzxPretreeSymbols]uint8

	main, length, aligned, pretree huffman
}

// newLZXDecoder returns a decoder of a folder of total uncompressed bytes
// with a window of 2^windowBits, reading its blocks with next.
func newLZXDecoder(windowBits int, total int64, next func() ([]byte, error)) *lzxDecoder {
	size := 1 << windowBits
	// A folder smaller than the window never wraps it: a smaller buffer
	// serves, which keeps small cabinets cheap to open.
	n := size
	if total < int64(size) {
		n = int(total+lzxFrameSize-1) / lzxFrameSize * lzxFrameSize
	}
	return &lzxDecoder{
		in:         lzxBits{next: next},
		window:     make([]byte, n),
		windowSize: size,
		slots:      lzxSlots[windowBits-lzxMinWindowBits],
		total:      total,
		r0:         1, r1: 1, r2: 1,
	}
}

func (d *lzxDecoder) fail(format string, args ...any) error {
	return damaged("LZX frame %d: "+format, append([]any{d.frame}, args...)...)
}

// nextFrame decodes the next frame and returns its bytes, valid until the
// next call, or io.EOF after the folder's last frame.
func (d *lzxDecoder) nextFrame() ([]byte, error) {
	if d.produced >= d.total {
		return nil, io.EOF
	}
	size := int(min(lzxFrameSize, d.total-d.produced))
	if !d.headerRead {
		if d.in.read(1) == 1 {
			d.e8Size = int32(d.in.read(16)<<16 | d.in.read(16))
		}
		d.headerRead = true
	}
	start := d.pos
	end := start + size
	d.frameStart = start
	for d.pos < end {
		if d.blockRemaining == 0 {
			if err := d.readBlockHeader(); err != nil {
				return nil, err
			}
			continue
		}
		run := min(d.blockRemaining, end-d.pos)
		if d.blockType == lzxBlockUncompressed {
			if err := d.in.readBytes(d.window[d.pos : d.pos+run]); err != nil {
				return nil, d.inputError(err)
			}
			d.pos += run
		} else if err := d.decodeSymbols(d.pos + run); err != nil {
			return nil, err
		}
		d.blockRemaining -= run
	}
	d.in.align() // a no-op within an uncompressed block: no bits are buffered
	if err := d.in.overrun(); err != nil {
		return nil, d.inputError(err)
	}
	out := d.window[start:end]
	if d.e8Started && d.e8Size != 0 && d.frame < lzxE8Frames && size > 10 {
		if d.e8buf == nil {
			d.e8buf = make([]byte, lzxFrameSize)
		}
		out = d.e8buf[:size]
		copy(out, d.window[start:end])
		e8Translate(out, int32(d.produced), d.e8Size)
	}
	d.produced += int64(size)
	d.frame++
	if d.pos == len(d.window) {
		d.pos = 0
	}
	return out, nil
}

func (d *lzxDecoder) inputError(err error) error {
	if errors.Is(err, errLZXInputEnd) {
		return d.fail("%v", err)
	}
	return err // already describes its block
}

// lzCopy copies n bytes from w[src:] to w[dst:] as LZ77 does, a byte after
// another: where the source runs into the destination, the copy repeats it.
func lzCopy(w []byte, dst, src, n int) {
	switch {
	case n <= 16 && dst-src >= n:
		// Most matches are short: a loop beats a call to memmove.
		d, s := w[dst:dst+n], w[src:src+n]
		for i := range d {
			d[i] = s[i]
		}
	case src > dst || dst-src >= n:
		// Apart, or the source ahead, where memmove's result is the same.
		copy(w[dst:dst+n], w[src:src+n])
	default:
		// The source runs into the destination: copy what is there,
		// then the copy so far, doubling each time.
		for done := 0; done < n; {
			done += copy(w[dst+done:dst+n], w[src:dst+done])
		}
	}
}

// e8Translate undoes the encoder's E8 preprocessing of one frame: the
// 32-bit operand after each 0xE8 byte (an x86 CALL) was made absolute; it
// is made relative to its position again. curpos is the frame's offset in
// the folder. Operands in the last 10 bytes are left alone, as the
// encoder leaves them.
func e8Translate(b []byte, curpos, size int32) {
	for i := 0; i < len(b)-10; {
		skip := bytes.IndexByte(b[i:len(b)-10], 0xE8)
		if skip < 0 {
			return
		}
		i += skip
		curpos += int32(skip)
		abs := int32(binary.LittleEndian.Uint32(b[i+1:]))
		if abs >= -curpos && abs < size {
			rel := abs + size
			if abs >= 0 {
				rel = abs - curpos
			}
			binary.LittleEndian.PutUint32(b[i+1:], uint32(rel))
		}
		i += 5
		curpos += 5
	}
}

func (d *lzxDecoder) readBlockHeader() error {
	if d.blockType == lzxBlockUncompressed && d.blockLength&1 == 1 {
		// An odd uncompressed block is followed by a byte of padding.
		var pad [1]byte
		if err := d.in.readBytes(pad[:]); err != nil {
			return d.inputError(err)
		}
	}
	d.blockType = int(d.in.read(3))
	d.blockLength = int(d.in.read(24))
	d.blockRemaining = d.blockLength
	if err := d.in.overrun(); err != nil {
		return d.inputError(err)
	}
	switch d.blockType {
	case lzxBlockAligned:
		for i := range d.alignedLen {
			d.alignedLen[i] = uint8(d.in.read(3))
		}
		if err := d.aligned.build("aligned offset tree", d.alignedLen[:], 7, false); err != nil {
			return d.fail("%v", err)
		}
		fallthrough
	case lzxBlockVerbatim:
		numMain := lzxNumChars + d.slots*8
		if err := d.readLengths("main", d.mainLens[:], 0, lzxNumChars, numMain); err != nil {
			return err
		}
		if err := d.readLengths("main", d.mainLens[:], lzxNumChars, numMain, numMain); err != nil {
			return err
		}
		if err := d.main.build("main tree", d.mainLens[:numMain], 11, false); err != nil {
			return d.fail("%v", err)
		}
		if d.mainLens[0xE8] != 0 {
			d.e8Started = true
		}
		if err := d.readLengths("length", d.lengthLens[:], 0, lzxLengthSymbols, lzxLengthSymbols); err != nil {
			return err
		}
		if err := d.length.build("length tree", d.lengthLens[:lzxLengthSymbols], 10, true); err != nil {
			return d.fail("%v", err)
		}
	case lzxBlockUncompressed:
		// Raw bytes may hold E8 bytes without the main tree saying so.
		d.e8Started = true
		d.in.startBytes()
		var rs [12]byte
		if err := d.in.readBytes(rs[:]); err != nil {
			return d.inputError(err)
		}
		d.r0 = binary.LittleEndian.Uint32(rs[0:])
		d.r1 = binary.LittleEndian.Uint32(rs[4:])
		d.r2 = binary.LittleEndian.Uint32(rs[8:])
	default:
		return d.fail("block type %d is not verbatim (1), aligned offset (2) or uncompressed (3)", d.blockType)
	}
	return nil
}

// readLengths reads the code lengths of symbols first..last-1 of a tree
// of size symbols: a pretree of 20 4-bit lengths, then pretree symbols
// giving each length as a difference from the previous block's, or runs.
func (d *lzxDecoder) readLengths(tree string, lens []uint8, first, last, size int) error {
	for i := range d.preLens {
		d.preLens[i] = uint8(d.in.read(4))
	}
	// Zeros read past the end make an empty tree: say what ended instead.
	// (This also covers the aligned offset tree, read just before.)
	if err := d.in.overrun(); err != nil {
		return d.inputError(err)
	}
	if err := d.pretree.build("pretree of the "+tree+" tree", d.preLens[:], 8, false); err != nil {
		return d.fail("%v", err)
	}
	x := first
	for x < last {
		var run int
		var value uint8
		switch sym := d.pretree.decode(&d.in); sym {
		case 17: // 4 to 19 zeros
			run, value = 4+int(d.in.read(4)), 0
		case 18: // 20 to 51 zeros
			run, value = 20+int(d.in.read(5)), 0
		case 19: // 4 or 5 times the same difference
			run = 4 + int(d.in.read(1))
			z := d.pretree.decode(&d.in)
			if z > 16 {
				return d.fail("the %s tree's lengths repeat code %d, which is not a length difference", tree, z)
			}
			value = uint8((int(lens[x]) - z + 17) % 17)
		default:
			run, value = 1, uint8((int(lens[x])-sym+17)%17)
		}
		for range run {
			lens[x] = value
			x++
		}
	}
	if err := d.in.overrun(); err != nil {
		return d.inputError(err)
	}
	// A run past the main tree's literals lands on its match symbols, as
	// in libmspack; past the tree's end it may only write zeros, which no
	// symbol uses.
	for i := max(last, size); i < x; i++ {
		if lens[i] != 0 {
			return d.fail("the %s tree's code lengths run past its %d symbols", tree, size)
		}
	}
	return nil
}

// decodeSymbols decodes literals and matches into the window up to end,
// which no match may cross: it is the end of the block or of the frame.
func (d *lzxDecoder) decodeSymbols(end int) error {
	w := d.window
	pos := d.pos
	in := &d.in
	aligned := d.blockType == lzxBlockAligned
	for pos < end {
		if in.n <= 48 {
			in.refill()
		}
		// 49 bits are enough for a main and a length symbol and 17 extra
		// bits; only the aligned offset symbol needs a check.
		sym := d.main.lookup(in)
		if sym < lzxNumChars {
			w[pos] = byte(sym)
			pos++
			continue
		}
		sym -= lzxNumChars
		length := sym & lzxPrimaryLengths
		if length == lzxPrimaryLengths {
			if d.length.empty {
				d.pos = pos
				return d.fail("a match needs the length tree, which this block left empty")
			}
			length += d.length.lookup(in)
		}
		length += lzxMinMatch
		var offset uint32
		switch slot := sym >> 3; slot {
		case 0:
			offset = d.r0
		case 1:
			offset = d.r1
			d.r1 = d.r0
			d.r0 = offset
		case 2:
			offset = d.r2
			d.r2 = d.r0
			d.r0 = offset
		default:
			extra := uint(lzxExtraBits[slot])
			offset = lzxPositionBase[slot] - 2
			switch {
			case aligned && extra >= 3:
				offset += in.read(extra-3) << 3
				if in.n < 16 {
					in.refill()
				}
				offset += uint32(d.aligned.decode(in))
			default:
				offset += in.read(extra)
			}
			d.r2, d.r1, d.r0 = d.r1, d.r0, offset
		}
		if length > end-pos {
			d.pos = pos
			return d.fail("a match of %d bytes runs past the end of its block or frame (%d bytes left)", length, end-pos)
		}
		// How far back the data goes: everything decoded so far, at most
		// one window.
		have := d.produced + int64(pos-d.frameStart)
		if offset == 0 || int64(offset) > have || int(offset) > d.windowSize {
			d.pos = pos
			return d.fail("a match refers %d bytes back, where the folder has %d bytes and the window is %d", offset, have, d.windowSize)
		}
		if src := pos - int(offset); src >= 0 {
			lzCopy(w, pos, src, length)
		} else {
			// The source starts before the window's end and may wrap.
			src += len(w)
			n := min(length, len(w)-src)
			lzCopy(w, pos, src, n)
			lzCopy(w, pos+n, 0, length-n)
		}
		pos += length
	}
	d.pos = pos
	return nil
}
