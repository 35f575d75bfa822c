package servicing_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/servicing/servicingtest"
	"github.com/osvc/osvc/server/store"
)

// agentLines are lines the way an agent writes them: the same few messages
// with a changing number, one second apart.
func agentLines(from, to int64) []*osvcv1.LogLine {
	start := time.Date(2030, 1, 1, 8, 0, 0, 0, time.UTC)
	var out []*osvcv1.LogLine
	for i := from; i <= to; i++ {
		out = append(out, &osvcv1.LogLine{
			Sequence: i,
			Time:     timestamppb.New(start.Add(time.Duration(i) * time.Second)),
			Level:    "info",
			Message: fmt.Sprintf("wimlib-imagex: applying package Package_for_RollupFix~31bf3856ad364e35~amd64~~22621.4317.1.9 to index 1: %d%% done (%d of 3000 files)",
				i%100, i),
		})
	}
	return out
}

func TestLogChunksOfSimilarLinesAreStoredCompressedAndReadBackIdentical(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	sent := agentLines(1, 2000)
	if err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: sent}); err != nil {
		t.Fatal(err)
	}
	id, _ := servicing.RunID(run.GetName())
	resp, err := env.Store.Client().Get(ctx, env.Store.LogsPrefix(id), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	stored, raw := 0, 0
	for _, kv := range resp.Kvs {
		stored += len(kv.Value)
		chunk, err := store.Unmarshal[*storev1.LogChunk](kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		if len(chunk.GetLines()) != 0 || len(chunk.GetCompressedLines()) == 0 {
			t.Errorf("chunk %s holds %d plain lines and %d compressed bytes, want compressed lines only", kv.Key, len(chunk.GetLines()), len(chunk.GetCompressedLines()))
		}
	}
	for _, l := range sent {
		raw += proto.Size(l)
	}
	if stored == 0 || stored*5 > raw {
		t.Errorf("%d lines of %d bytes stored in %d bytes over %d chunks, want at most a fifth", len(sent), raw, stored, len(resp.Kvs))
	}

	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(), State: osvcv1.RunState_RUN_STATE_FAILED}); err != nil {
		t.Fatal(err)
	}
	_, got := watchAll(t, env, run.GetName(), 0)
	if len(got) != len(sent) {
		t.Fatalf("read back %d lines, want %d", len(got), len(sent))
	}
	for i := range sent {
		if !proto.Equal(got[i], sent[i]) {
			t.Fatalf("line %d read back as %v, want %v", i+1, got[i], sent[i])
		}
	}
}

func TestChunksStoredBeforeCompressionAreStillRead(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	if err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: agentLines(1, 3)}); err != nil {
		t.Fatal(err)
	}
	// Lines 4..5 as an older server stored them: a LogChunk of plain lines,
	// counted in the run.
	id, _ := servicing.RunID(run.GetName())
	old := agentLines(4, 5)
	if _, err := env.Store.Create(ctx, env.Store.LogKey(id, 4), &storev1.LogChunk{Lines: old}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Update(ctx, env.Store, env.Store.RunKey(id), func(r *osvcv1.Run) error {
		r.LogLineCount = 5
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: agentLines(6, 7)}); err != nil {
		t.Fatal(err)
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(), State: osvcv1.RunState_RUN_STATE_FAILED}); err != nil {
		t.Fatal(err)
	}
	want := agentLines(1, 7)
	for _, after := range []int64{0, 4} {
		_, got := watchAll(t, env, run.GetName(), after)
		if len(got) != len(want)-int(after) {
			t.Fatalf("after %d: read %v, want lines %d..7", after, sequences(got), after+1)
		}
		for i, l := range got {
			if !proto.Equal(l, want[int(after)+i]) {
				t.Errorf("after %d: line %d = %v, want %v", after, l.GetSequence(), l, want[int(after)+i])
			}
		}
	}
}
