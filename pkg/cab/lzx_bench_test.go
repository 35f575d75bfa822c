package cab

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/osvc/osvc/pkg/cab/cabtest"
)

// BenchmarkLZXDecompression measures reading an 8 MiB member of an LZX
// cabinet (2 MiB window, E8 translation, aligned and verbatim blocks, as
// Microsoft's update packages are) against reading the same member from an
// MSZIP cabinet, whose inflating is compress/flate's, in the same run.
func BenchmarkLZXDecompression(b *testing.B) {
	var data []byte
	data = append(data, x86Bytes(9, 4<<20)...)
	data = append(data, textBytes(2<<20)...)
	data = append(data, randomBytes(b, 512<<10)...)
	data = append(data, make([]byte, 1536<<10)...)
	files := []rawFile{{name: "payload.bin", size: len(data)}}
	lzx := rawCab(b, rawOptions{}, []rawFolder{lzxFolder(data, cabtest.LZXOptions{WindowBits: 21, E8Size: 12_000_000,
		BlockSize: 1 << 20, BlockTypes: []int{cabtest.BlockAligned, cabtest.BlockVerbatim}})}, files)
	mszip := writeCab(b, []member{{"payload.bin", data}})
	read := func(cabinet []byte) time.Duration {
		start := time.Now()
		r, err := NewReader(bytes.NewReader(cabinet), int64(len(cabinet)))
		if err != nil {
			b.Fatal(err)
		}
		rc, err := r.Open("payload.bin")
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, rc); err != nil || n != int64(len(data)) {
			b.Fatalf("read %d bytes: %v", n, err)
		}
		return time.Since(start)
	}
	var lzxTime, mszipTime time.Duration
	n := 0
	for b.Loop() {
		lzxTime += read(lzx)
		mszipTime += read(mszip)
		n++
	}
	mb := float64(n) * float64(len(data)) / 1e6
	b.ReportMetric(mb/lzxTime.Seconds(), "LZX-MB/s")
	b.ReportMetric(mb/mszipTime.Seconds(), "MSZIP-MB/s")
	b.ReportMetric(mszipTime.Seconds()/lzxTime.Seconds(), "LZX/MSZIP-speed")
	b.ReportMetric(float64(len(lzx))/float64(len(mszip)), "LZX/MSZIP-size")
}
