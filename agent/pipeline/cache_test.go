package pipeline

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// gatedReads holds every content Read until release is closed, and tells
// each call on calls.
type gatedReads struct {
	osvcv1.ContentServiceClient
	calls   chan struct{}
	release chan struct{}
}

func (g *gatedReads) Read(ctx context.Context, in *osvcv1.ReadRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[osvcv1.ReadResponse], error) {
	g.calls <- struct{}{}
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.ContentServiceClient.Read(ctx, in, opts...)
}

// waitingRecorder closes waiting when the run logs that it waits for another
// run's download.
type waitingRecorder struct {
	*recorder
	once    sync.Once
	waiting chan struct{}
}

func (w *waitingRecorder) Logs(lines []*osvcv1.LogLine) {
	w.recorder.Logs(lines)
	for _, l := range lines {
		if strings.Contains(l.GetMessage(), "waiting for it") {
			w.once.Do(func() { close(w.waiting) })
		}
	}
}

// stagingRun is a run ready to stage its updates.
func stagingRun(cfg Config, a *osvcv1.Assign, rep Reporter) *run {
	r := &run{cfg: cfg, a: a, rep: rep, id: "r1", work: filepath.Join(cfg.Drive, WorkFolder, "r1"), cancel: func(error) {}}
	r.logOut = &lazyFile{}
	r.log = r.newLogger()
	return r
}

func TestTwoRunsStagingTheSameUpdateAtOnceBothSucceedAndDownloadItOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	gate := &gatedReads{ContentServiceClient: f.client, calls: make(chan struct{}, 8), release: make(chan struct{})}
	cfg := newConfig(t, f)
	cfg.Content = gate
	a := f.assign(&osvcv1.Run{})
	a.Updates = a.Updates[:1]

	type result struct {
		staged map[string]string
		err    error
	}
	stage := func(r *run) <-chan result {
		out := make(chan result, 1)
		go func() {
			staged, err := r.stage(context.Background())
			out <- result{staged, err}
		}()
		return out
	}
	first := stage(stagingRun(cfg, a, &recorder{}))
	<-gate.calls // the first run is downloading
	second := &waitingRecorder{recorder: &recorder{}, waiting: make(chan struct{})}
	secondDone := stage(stagingRun(cfg, a, second))
	select {
	case <-gate.calls: // a second download of the same file into the same cache
	case <-second.waiting:
	}
	close(gate.release)

	for i, done := range []<-chan result{first, secondDone} {
		res := <-done
		if res.err != nil {
			t.Fatalf("run %d: stage: %v", i+1, res.err)
		}
		sha := a.Updates[0].GetFiles()[0].GetSha256()
		if got := fileSHA(t, res.staged[sha]); got != sha {
			t.Errorf("run %d: the staged file hashes to %s, want %s", i+1, got, sha)
		}
	}
	if n := len(gate.calls); n != 0 {
		t.Errorf("the update file was downloaded %d more times, want once in all", n)
	}
}
