package servicing

import (
	"bytes"
	"compress/gzip"
	"testing"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	"github.com/osvc/osvc/server/store"
)

func TestADamagedOrOverlyLargeCompressedChunkIsAnErrorNotARead(t *testing.T) {
	t.Parallel()
	var bomb bytes.Buffer
	zw := gzip.NewWriter(&bomb)
	if _, err := zw.Write(make([]byte, maxLogChunkInflated+1)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		compressed []byte
	}{
		{"not gzip", []byte("not gzip at all")},
		{"gzip cut short", bomb.Bytes()[:bomb.Len()/2]},
		{"gzip inflating past any chunk", bomb.Bytes()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			value, err := (&store.Store{}).Marshal(&storev1.LogChunk{CompressedLines: tt.compressed})
			if err != nil {
				t.Fatal(err)
			}
			if lines, err := decodeLogChunk(value); err == nil {
				t.Errorf("decodeLogChunk = %d lines, want an error", len(lines))
			}
		})
	}
}
