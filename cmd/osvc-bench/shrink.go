package main

import (
	"context"
	"fmt"

	"github.com/dustin/go-humanize"

	"github.com/osvc/osvc/integration/sampledata"
)

// defaultShrinkMiB is the file data of the demo's image (osvc-sample's default).
const defaultShrinkMiB = int(sampledata.DefaultPayloadBytes >> 20)

// benchShrink measures what remove superseded and export do to the size of
// the sample image (-n MiB of file data; by default the one `make demo`
// services): osvc services it with every applicable update and remove
// superseded, and the result's size is compared with the image's own. The
// extra figure is the same servicing without remove superseded (committed,
// not cleaned up nor exported), against the same floor.
func benchShrink(ctx context.Context, cfg benchConfig) (*Result, error) {
	r, err := startRig(ctx, cfg, int64(cfg.N)<<20, 0)
	if err != nil {
		return nil, err
	}
	defer r.close()
	before := r.wim.GetSizeBytes()
	shrunk, err := r.service(ctx, 1, true)
	if err != nil {
		return nil, err
	}
	kept, err := r.service(ctx, 2, false)
	if err != nil {
		return nil, err
	}
	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	after, committed := shrunk.run.GetResultSizeBytes(), kept.run.GetResultSizeBytes()
	fmt.Fprintf(cfg.Out, "shrink: image %s, serviced with remove superseded and export %s, without %s\n",
		humanize.IBytes(uint64(before)), humanize.IBytes(uint64(after)), humanize.IBytes(uint64(committed)))
	return &Result{
		Osvc:       Figure{Name: "serviced, remove superseded + export", Value: mib(after), Unit: "MiB", Samples: []float64{mib(after)}},
		Floor:      Figure{Name: "the image before servicing", Value: mib(before), Unit: "MiB", Samples: []float64{mib(before)}},
		Extra:      []Figure{{Name: "serviced without remove superseded", Value: mib(committed), Unit: "MiB", Samples: []float64{mib(committed)}}},
		ImageBytes: before,
	}, nil
}
