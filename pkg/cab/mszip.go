package cab

import "math/bits"

// MSZIP compression.
//
// Each block is "CK" followed by one complete DEFLATE stream (RFC 1951) that
// may refer back into the folder's previous 32 KiB block. compress/flate
// cannot be used to write it: for data needing a single distance code it
// emits an incomplete Huffman tree, which zlib accepts but libmspack
// (cabextract) rejects as a decompression error. This encoder emits only
// fixed-Huffman or stored blocks, whose code tables are complete by
// definition, with a hash-chain LZ77 matcher over the previous block and the
// current one.

const (
	minMatch     = 3
	maxMatch     = 258
	maxDistance  = 32768
	hashBits     = 15
	maxChainHops = 128
)

var (
	lengthBase  = [29]uint16{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	lengthExtra = [29]uint8{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	distBase    = [30]uint16{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
	distExtra   = [30]uint8{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}

	// fixedLit holds the fixed literal/length codes, bit-reversed for an
	// LSB-first writer, and their lengths.
	fixedLit    [288]uint16
	fixedLitLen [288]uint8
	// lengthCode maps a match length (3..258) to its length symbol index.
	lengthCode [maxMatch + 1]uint8
)

func init() {
	for v := range 288 {
		var code, n uint
		switch {
		case v < 144:
			code, n = 0x30+uint(v), 8
		case v < 256:
			code, n = 0x190+uint(v-144), 9
		case v < 280:
			code, n = uint(v-256), 7
		default:
			code, n = 0xC0+uint(v-280), 8
		}
		fixedLit[v] = uint16(bits.Reverse16(uint16(code)) >> (16 - n))
		fixedLitLen[v] = uint8(n)
	}
	for l := minMatch; l <= maxMatch; l++ {
		i := 0
		for i+1 < 28 && int(lengthBase[i+1]) <= l {
			i++
		}
		if l == maxMatch {
			i = 28 // 258 has its own symbol; 284 with extra 31 is not portable
		}
		lengthCode[l] = uint8(i)
	}
}

func distCode(d int) int {
	i := 0
	for i+1 < len(distBase) && int(distBase[i+1]) <= d {
		i++
	}
	return i
}

type bitWriter struct {
	out []byte
	acc uint64
	n   uint
}

func (b *bitWriter) write(v uint32, n uint) {
	b.acc |= uint64(v) << b.n
	b.n += n
	for b.n >= 8 {
		b.out = append(b.out, byte(b.acc))
		b.acc >>= 8
		b.n -= 8
	}
}

func (b *bitWriter) align() {
	if b.n > 0 {
		b.out = append(b.out, byte(b.acc))
		b.acc, b.n = 0, 0
	}
}

// mszipEncoder keeps its tables between blocks to spare allocations.
type mszipEncoder struct {
	buf  []byte
	head []int32 // hash → last position + 1
	prev []int32 // position → previous position with the same hash, + 1
}

func hash3(b []byte) uint32 {
	v := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
	return (v * 2654435761) >> (32 - hashBits)
}

// encode appends "CK" and the DEFLATE stream of data, which may refer into
// dict (the folder's previous block), to dst.
func (e *mszipEncoder) encode(dst, dict, data []byte) []byte {
	if len(dict) > maxDistance {
		dict = dict[len(dict)-maxDistance:]
	}
	e.buf = append(append(e.buf[:0], dict...), data...)
	buf := e.buf
	if e.head == nil {
		e.head = make([]int32, 1<<hashBits)
	} else {
		clear(e.head)
	}
	if cap(e.prev) < len(buf) {
		e.prev = make([]int32, len(buf))
	}
	e.prev = e.prev[:len(buf)]
	insert := func(p int) {
		if p+minMatch <= len(buf) {
			h := hash3(buf[p:])
			e.prev[p] = e.head[h]
			e.head[h] = int32(p + 1)
		}
	}
	for p := range dict {
		insert(p)
	}

	bw := bitWriter{out: append(dst, 'C', 'K')}
	start := len(bw.out)
	bw.write(1|1<<1, 3) // final block, fixed Huffman
	for p := len(dict); p < len(buf); {
		bestLen, bestDist := 0, 0
		if p+minMatch <= len(buf) {
			limit := min(maxMatch, len(buf)-p)
			cand := int(e.head[hash3(buf[p:])]) - 1
			for hops := 0; cand >= 0 && p-cand <= maxDistance && hops < maxChainHops; hops++ {
				if buf[cand+bestLen] == buf[p+bestLen] || bestLen == 0 {
					n := 0
					for n < limit && buf[cand+n] == buf[p+n] {
						n++
					}
					if n > bestLen {
						bestLen, bestDist = n, p-cand
						if n == limit {
							break
						}
					}
				}
				cand = int(e.prev[cand]) - 1
			}
		}
		if bestLen >= minMatch {
			li := lengthCode[bestLen]
			sym := 257 + int(li)
			bw.write(uint32(fixedLit[sym]), uint(fixedLitLen[sym]))
			bw.write(uint32(bestLen-int(lengthBase[li])), uint(lengthExtra[li]))
			di := distCode(bestDist)
			bw.write(uint32(bits.Reverse8(uint8(di))>>3), 5)
			bw.write(uint32(bestDist-int(distBase[di])), uint(distExtra[di]))
			for range bestLen {
				insert(p)
				p++
			}
			continue
		}
		c := buf[p]
		bw.write(uint32(fixedLit[c]), uint(fixedLitLen[c]))
		insert(p)
		p++
	}
	bw.write(uint32(fixedLit[256]), uint(fixedLitLen[256]))
	bw.align()

	// Data that does not compress goes in a stored block instead.
	if stored := 5 + len(data); len(bw.out)-start > stored {
		out := append(bw.out[:start], 1, byte(len(data)), byte(len(data)>>8), ^byte(len(data)), ^byte(len(data)>>8))
		return append(out, data...)
	}
	return bw.out
}
