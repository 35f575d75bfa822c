// Package cabtest makes LZX-compressed cabinets for tests. Microsoft's
// update packages are LZX cabinets, which osvc reads but never writes, and
// no Debian tool writes LZX (gcab and Wine write MSZIP): this encoder is
// how tests get LZX data of any size and shape. It aims at coverage, not
// ratio: greedy matching, every block type, blocks spanning frames,
// repeated offsets, E8 translation and every window size. The reader's
// tests check what it writes against cabextract, an independent decoder.
//
// It does not import package cab, so that package's own tests can use it.
package cabtest

import (
	"container/heap"
	"encoding/binary"
	"fmt"
	"sort"
)

// LZX block types, for LZXOptions.BlockTypes.
const (
	BlockVerbatim     = 1
	BlockAligned      = 2
	BlockUncompressed = 3
)

// LZXOptions shape the compressed stream.
type LZXOptions struct {
	// WindowBits is the window size, 15 to 21 (2^15 to 2^21 bytes).
	WindowBits int
	// E8Size turns on E8 translation of x86 CALL operands with this
	// translation size (Microsoft's encoder uses 12000000); 0 is off.
	E8Size int32
	// BlockSize is how many uncompressed bytes each LZX block holds; blocks
	// need not end on frames. 0 means 32768.
	BlockSize int
	// BlockTypes are the types of successive blocks, repeated as needed;
	// empty means verbatim only.
	BlockTypes []int
}

const (
	frameSize   = 32768
	numChars    = 256
	minMatch    = 2
	maxMatch    = 257
	lengthSyms  = 249
	pretreeSyms = 20
	alignedSyms = 8
	hashBits    = 16
	chainDepth  = 24
)

var (
	slotsOf   = [7]int{30, 32, 34, 36, 38, 42, 50}
	extraBits [50]uint8
	posBase   [50]uint32
)

func init() {
	for i := range 50 {
		switch {
		case i < 4:
		case i < 36:
			extraBits[i] = uint8(i/2 - 1)
		default:
			extraBits[i] = 17
		}
		if i > 0 {
			posBase[i] = posBase[i-1] + 1<<extraBits[i-1]
		}
	}
}

// token is a literal (length 0) or a match.
type token struct {
	lit    byte
	length int
	slot   int
	value  uint32 // formatted offset minus the slot's base
}

// CompressLZX compresses data as one LZX folder and returns its CFDATA
// payloads: one a frame of 32768 uncompressed bytes, the last shorter.
func CompressLZX(data []byte, o LZXOptions) ([][]byte, error) {
	if o.WindowBits < 15 || o.WindowBits > 21 {
		return nil, fmt.Errorf("LZX window bits %d is outside 15..21", o.WindowBits)
	}
	if o.BlockSize <= 0 {
		o.BlockSize = frameSize
	}
	if o.BlockSize >= 1<<24 {
		return nil, fmt.Errorf("LZX block size %d does not fit 24 bits", o.BlockSize)
	}
	if len(o.BlockTypes) == 0 {
		o.BlockTypes = []int{BlockVerbatim}
	}
	for _, t := range o.BlockTypes {
		if t < BlockVerbatim || t > BlockUncompressed {
			return nil, fmt.Errorf("LZX block type %d is not 1, 2 or 3", t)
		}
	}
	e := &encoder{
		o:     o,
		data:  translateE8(data, o.E8Size),
		slots: slotsOf[o.WindowBits-15],
		r:     [3]uint32{1, 1, 1},
		head:  make([]int32, 1<<hashBits),
		prev:  make([]int32, len(data)),
	}
	e.maxOffset = int(posBase[e.slots-1]) + 1<<extraBits[e.slots-1] - 1 - 2
	e.mainLens = make([]uint8, numChars+e.slots*8)
	e.lengthLens = make([]uint8, lengthSyms)
	return e.compress(), nil
}

// translateE8 does what the decoder undoes: in each of the first 32768
// frames, the operand after an 0xE8 byte, when a relative address within
// the translation size, is made absolute.
func translateE8(data []byte, size int32) []byte {
	out := append([]byte(nil), data...)
	if size == 0 {
		return out
	}
	for start := 0; start < len(out) && start/frameSize < 32768; start += frameSize {
		frame := out[start:min(start+frameSize, len(out))]
		for i := 0; i < len(frame)-10; {
			if frame[i] != 0xE8 {
				i++
				continue
			}
			cur := int64(start + i)
			rel := int64(int32(binary.LittleEndian.Uint32(frame[i+1:])))
			switch s := int64(size); {
			case rel >= -cur && rel < s-cur:
				binary.LittleEndian.PutUint32(frame[i+1:], uint32(int32(rel+cur)))
			case rel >= s-cur && rel < s:
				binary.LittleEndian.PutUint32(frame[i+1:], uint32(int32(rel-s)))
			}
			i += 5
		}
	}
	return out
}

type encoder struct {
	o         LZXOptions
	data      []byte
	slots     int
	maxOffset int
	r         [3]uint32
	head      []int32 // hash of 3 bytes → last position + 1
	prev      []int32 // position → previous position with its hash, + 1
	inserted  int     // positions below this are in the hash chains

	mainLens, lengthLens []uint8 // the previous block's, which lengths are sent against

	w         BitWriter
	frameEnds []int // byte offsets in w.out where each frame's data ends
}

func (e *encoder) compress() [][]byte {
	if e.o.E8Size != 0 {
		e.w.Bits(1, 1)
		e.w.Bits(uint32(e.o.E8Size)>>16, 16)
		e.w.Bits(uint32(e.o.E8Size)&0xFFFF, 16)
	} else {
		e.w.Bits(0, 1)
	}
	for i, start := 0, 0; start < len(e.data); i++ {
		end := min(start+e.o.BlockSize, len(e.data))
		typ := e.o.BlockTypes[i%len(e.o.BlockTypes)]
		if typ == BlockUncompressed {
			e.uncompressed(start, end, end < len(e.data))
		} else {
			e.compressed(typ, start, end)
		}
		start = end
	}
	var chunks [][]byte
	from := 0
	for _, to := range e.frameEnds {
		chunks = append(chunks, e.w.out[from:to])
		from = to
	}
	return chunks
}

// frameDone is called after the byte at pos-1 is encoded: at a frame's
// end the bitstream is padded to 16 bits and the frame's bytes end.
func (e *encoder) frameDone(pos int) {
	if pos%frameSize == 0 || pos == len(e.data) {
		e.w.Align()
		e.frameEnds = append(e.frameEnds, len(e.w.out))
	}
}

func (e *encoder) uncompressed(start, end int, more bool) {
	e.w.Bits(BlockUncompressed, 3)
	e.w.Bits(uint32(end-start), 24)
	// 1 to 16 bits of padding up to a 16-bit boundary.
	if e.w.n == 0 {
		e.w.Bits(0, 16)
	}
	e.w.Align()
	for _, r := range e.r {
		e.w.out = binary.LittleEndian.AppendUint32(e.w.out, r)
	}
	for pos := start; pos < end; {
		n := min(end, (pos/frameSize+1)*frameSize) - pos
		e.w.out = append(e.w.out, e.data[pos:pos+n]...)
		pos += n
		e.frameDone(pos)
	}
	e.insert(end)
	if more && (end-start)%2 == 1 {
		e.w.out = append(e.w.out, 0)
	}
}

func (e *encoder) compressed(typ, start, end int) {
	tokens := e.tokens(start, end)
	numMain := numChars + e.slots*8
	mainFreq := make([]int, numMain)
	lengthFreq := make([]int, lengthSyms)
	alignedFreq := make([]int, alignedSyms)
	for _, t := range tokens {
		if t.length == 0 {
			mainFreq[t.lit]++
			continue
		}
		mainFreq[mainSymbol(t)]++
		if t.length-minMatch >= 7 {
			lengthFreq[t.length-minMatch-7]++
		}
		if typ == BlockAligned && extraBits[t.slot] >= 3 {
			alignedFreq[t.value&7]++
		}
	}
	mainLens := codeLengths(mainFreq, 16, true)
	lengthLens := codeLengths(lengthFreq, 16, false)
	var alignedLens []uint8
	if typ == BlockAligned {
		alignedLens = codeLengths(alignedFreq, 7, true)
	}

	e.w.Bits(uint32(typ), 3)
	e.w.Bits(uint32(end-start), 24)
	if typ == BlockAligned {
		for _, l := range alignedLens {
			e.w.Bits(uint32(l), 3)
		}
	}
	e.w.Lengths(e.mainLens[:numChars], mainLens[:numChars])
	e.w.Lengths(e.mainLens[numChars:], mainLens[numChars:])
	e.w.Lengths(e.lengthLens, lengthLens)
	copy(e.mainLens, mainLens)
	copy(e.lengthLens, lengthLens)

	mainCodes := Codes(mainLens)
	lengthCodes := Codes(lengthLens)
	alignedCodes := Codes(alignedLens)
	pos := start
	for _, t := range tokens {
		if t.length == 0 {
			e.w.Bits(mainCodes[t.lit], uint(mainLens[t.lit]))
			pos++
			e.frameDone(pos)
			continue
		}
		m := mainSymbol(t)
		e.w.Bits(mainCodes[m], uint(mainLens[m]))
		if t.length-minMatch >= 7 {
			l := t.length - minMatch - 7
			e.w.Bits(lengthCodes[l], uint(lengthLens[l]))
		}
		if x := uint(extraBits[t.slot]); t.slot >= 3 && x > 0 {
			if typ == BlockAligned && x >= 3 {
				e.w.Bits(t.value>>3, x-3)
				a := t.value & 7
				e.w.Bits(alignedCodes[a], uint(alignedLens[a]))
			} else {
				e.w.Bits(t.value, x)
			}
		}
		pos += t.length
		e.frameDone(pos)
	}
}

func mainSymbol(t token) int {
	return numChars + t.slot<<3 | min(t.length-minMatch, 7)
}

func hash3(b []byte) uint32 {
	return (uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16) * 2654435761 >> (32 - hashBits)
}

// insert adds the positions below end to the hash chains.
func (e *encoder) insert(end int) {
	for ; e.inserted < end; e.inserted++ {
		if e.inserted+3 <= len(e.data) {
			h := hash3(e.data[e.inserted:])
			e.prev[e.inserted] = e.head[h]
			e.head[h] = int32(e.inserted + 1)
		}
	}
}

// tokens matches data[start:end] greedily. No match crosses a frame's
// end, and the repeated offsets are kept as the decoder keeps them.
func (e *encoder) tokens(start, end int) []token {
	var out []token
	d := e.data
	for pos := start; pos < end; {
		e.insert(pos)
		limit := min(maxMatch, end-pos, (pos/frameSize+1)*frameSize-pos)
		matchLen := func(off int) int {
			if off <= 0 || off > pos || off > e.maxOffset {
				return 0
			}
			n := 0
			for n < limit && d[pos-off+n] == d[pos+n] {
				n++
			}
			return n
		}
		bestLen, bestOff, bestRep := 0, 0, -1
		for i, r := range e.r {
			if n := matchLen(int(r)); n >= minMatch && n > bestLen {
				bestLen, bestOff, bestRep = n, int(r), i
			}
		}
		if pos+3 <= len(d) {
			cand := int(e.head[hash3(d[pos:])]) - 1
			for hops := 0; cand >= 0 && hops < chainDepth; hops++ {
				if n := matchLen(pos - cand); n >= 3 && n > bestLen+1 {
					bestLen, bestOff, bestRep = n, pos-cand, -1
				}
				cand = int(e.prev[cand]) - 1
			}
		}
		if bestLen < minMatch {
			out = append(out, token{lit: d[pos]})
			pos++
			continue
		}
		t := token{length: bestLen}
		switch bestRep {
		case 0:
			t.slot = 0
		case 1:
			t.slot = 1
			e.r[0], e.r[1] = e.r[1], e.r[0]
		case 2:
			t.slot = 2
			e.r[0], e.r[2] = e.r[2], e.r[0]
		default:
			f := uint32(bestOff + 2)
			t.slot = sort.Search(e.slots, func(i int) bool { return posBase[i] > f }) - 1
			t.value = f - posBase[t.slot]
			e.r[2], e.r[1], e.r[0] = e.r[1], e.r[0], uint32(bestOff)
		}
		out = append(out, t)
		pos += bestLen
	}
	return out
}

// codeLengths returns Huffman code lengths of at most limit bits for freq.
// The code is complete: a lone symbol gets a partner; with none used the
// lengths are all zero unless must, when every symbol gets an equal code.
func codeLengths(freq []int, limit int, must bool) []uint8 {
	f := append([]int(nil), freq...)
	used := 0
	for _, x := range f {
		if x > 0 {
			used++
		}
	}
	switch {
	case used == 0 && !must:
		return make([]uint8, len(f))
	case used == 0:
		for i := range f {
			f[i] = 1
		}
	case used == 1:
		if f[0] == 0 {
			f[0] = 1
		} else {
			f[1] = 1
		}
	}
	for {
		lens := huffman(f)
		longest := uint8(0)
		for _, l := range lens {
			longest = max(longest, l)
		}
		if int(longest) <= limit {
			return lens
		}
		for i := range f {
			if f[i] > 0 {
				f[i] = (f[i] + 1) / 2
			}
		}
	}
}

type node struct {
	weight      int
	sym         int // -1 for an inner node
	left, right *node
}

type nodeHeap []*node

func (h nodeHeap) Len() int { return len(h) }
func (h nodeHeap) Less(i, j int) bool {
	if h[i].weight != h[j].weight {
		return h[i].weight < h[j].weight
	}
	return h[i].sym < h[j].sym
}
func (h nodeHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *nodeHeap) Push(x any)   { *h = append(*h, x.(*node)) }
func (h *nodeHeap) Pop() any {
	old := *h
	n := old[len(old)-1]
	*h = old[:len(old)-1]
	return n
}

// huffman returns unlimited Huffman code lengths; f has two or more
// nonzero weights.
func huffman(f []int) []uint8 {
	h := &nodeHeap{}
	for s, w := range f {
		if w > 0 {
			*h = append(*h, &node{weight: w, sym: s})
		}
	}
	heap.Init(h)
	for h.Len() > 1 {
		a := heap.Pop(h).(*node)
		b := heap.Pop(h).(*node)
		heap.Push(h, &node{weight: a.weight + b.weight, sym: -1, left: a, right: b})
	}
	lens := make([]uint8, len(f))
	var walk func(n *node, depth uint8)
	walk = func(n *node, depth uint8) {
		if n.sym >= 0 {
			lens[n.sym] = depth
			return
		}
		walk(n.left, depth+1)
		walk(n.right, depth+1)
	}
	walk(heap.Pop(h).(*node), 0)
	return lens
}

// Codes returns the canonical Huffman codes of lens, as LZX assigns them:
// shorter codes first, equal lengths in symbol order.
func Codes(lens []uint8) []uint32 {
	var count [17]uint32
	for _, l := range lens {
		count[l]++
	}
	count[0] = 0
	var next [18]uint32
	for l := 1; l <= 16; l++ {
		next[l] = (next[l-1] + count[l-1]) << 1
	}
	codes := make([]uint32, len(lens))
	for s, l := range lens {
		if l > 0 {
			codes[s] = next[l]
			next[l]++
		}
	}
	return codes
}

// BitWriter writes an LZX bitstream: 16-bit little-endian words, each
// from its most significant bit. Tests use it to write damaged streams.
type BitWriter struct {
	out []byte
	acc uint64
	n   uint // bits in acc not yet written
}

// Bytes returns what was written, padded to a whole word.
func (w *BitWriter) Bytes() []byte {
	w.Align()
	return w.out
}

// Bits writes the low n bits of v, n <= 32, most significant first.
func (w *BitWriter) Bits(v uint32, n uint) {
	w.acc = w.acc<<n | uint64(v)&(1<<n-1)
	w.n += n
	for w.n >= 16 {
		word := uint16(w.acc >> (w.n - 16))
		w.out = append(w.out, byte(word), byte(word>>8))
		w.n -= 16
	}
}

// Align pads the current word with zeros.
func (w *BitWriter) Align() {
	if w.n > 0 {
		w.Bits(0, 16-w.n)
	}
}

// Lengths writes the code lengths now as differences from prev through a
// pretree, with runs of zeros (17, 18) and of equal lengths (19).
func (w *BitWriter) Lengths(prev, now []uint8) {
	type op struct {
		sym   int
		extra uint32
		bits  uint
		delta int // code 19's difference symbol, or -1
	}
	delta := func(i int) int { return (int(prev[i]) - int(now[i]) + 17) % 17 }
	var ops []op
	for i := 0; i < len(now); {
		run := 1
		for i+run < len(now) && now[i+run] == now[i] {
			run++
		}
		switch {
		case now[i] == 0 && run >= 20:
			run = min(run, 51)
			ops = append(ops, op{18, uint32(run - 20), 5, -1})
		case now[i] == 0 && run >= 4:
			run = min(run, 19)
			ops = append(ops, op{17, uint32(run - 4), 4, -1})
		case run >= 4:
			run = min(run, 5)
			ops = append(ops, op{19, uint32(run - 4), 1, delta(i)})
		default:
			run = 1
			ops = append(ops, op{delta(i), 0, 0, -1})
		}
		i += run
	}
	freq := make([]int, pretreeSyms)
	for _, o := range ops {
		freq[o.sym]++
		if o.delta >= 0 {
			freq[o.delta]++
		}
	}
	lens := codeLengths(freq, 15, true)
	codes := Codes(lens)
	for _, l := range lens {
		w.Bits(uint32(l), 4)
	}
	for _, o := range ops {
		w.Bits(codes[o.sym], uint(lens[o.sym]))
		w.Bits(o.extra, o.bits)
		if o.delta >= 0 {
			w.Bits(codes[o.delta], uint(lens[o.delta]))
		}
	}
}

// Member is one cabinet member.
type Member struct {
	Name string
	Data []byte
}

// LZXCabinet returns a cabinet holding members in one LZX folder, one
// CFDATA block a frame. Its checksums are zero, which [MS-CAB] allows.
func LZXCabinet(members []Member, o LZXOptions) ([]byte, error) {
	var folder []byte
	for _, m := range members {
		folder = append(folder, m.Data...)
	}
	chunks, err := CompressLZX(folder, o)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	const header, folderEntry, fileEntry, dataHeader = 36, 8, 16, 8
	files := 0
	for _, m := range members {
		files += fileEntry + len(m.Name) + 1
	}
	dataStart := header + folderEntry + files
	size := dataStart
	for _, c := range chunks {
		size += dataHeader + len(c)
	}
	b := append([]byte("MSCF"), 0, 0, 0, 0)
	b = le.AppendUint32(b, uint32(size))
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, header+folderEntry) // the file table
	b = le.AppendUint32(b, 0)
	b = append(b, 3, 1) // format 1.3
	b = le.AppendUint16(b, 1)
	b = le.AppendUint16(b, uint16(len(members)))
	b = le.AppendUint16(b, 0)      // flags
	b = le.AppendUint16(b, 0x4C5A) // set ID
	b = le.AppendUint16(b, 0)      // index in the set
	b = le.AppendUint32(b, uint32(dataStart))
	b = le.AppendUint16(b, uint16(len(chunks)))
	b = le.AppendUint16(b, 3|uint16(o.WindowBits)<<8)
	off := 0
	for _, m := range members {
		b = le.AppendUint32(b, uint32(len(m.Data)))
		b = le.AppendUint32(b, uint32(off))
		b = le.AppendUint16(b, 0)      // folder
		b = le.AppendUint16(b, 0x5A6C) // date: 2025-03-12
		b = le.AppendUint16(b, 0x5000) // time: 10:00:00
		b = le.AppendUint16(b, 0x20)   // archive
		b = append(append(b, m.Name...), 0)
		off += len(m.Data)
	}
	for i, c := range chunks {
		b = le.AppendUint32(b, 0)
		b = le.AppendUint16(b, uint16(len(c)))
		b = le.AppendUint16(b, uint16(min(frameSize, len(folder)-i*frameSize)))
		b = append(b, c...)
	}
	return b, nil
}
