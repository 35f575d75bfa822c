package servicing_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/servicing/servicingtest"
	"github.com/osvc/osvc/server/store"
)

// logKeys reads what the run's log lines left in etcd: its chunks, its log
// count key (nil when absent) and the run key itself.
type logKeys struct {
	chunks []*mvccpb.KeyValue
	count  *mvccpb.KeyValue
	run    *mvccpb.KeyValue
}

func readLogKeys(t *testing.T, env *servicingtest.Env, run string) logKeys {
	t.Helper()
	id, err := servicing.RunID(run)
	if err != nil {
		t.Fatal(err)
	}
	st := env.Store
	resp, err := st.Client().Txn(context.Background()).Then(
		clientv3.OpGet(st.LogsPrefix(id), clientv3.WithPrefix()),
		clientv3.OpGet(st.LogCountKey(id)),
		clientv3.OpGet(st.RunKey(id)),
	).Commit()
	if err != nil {
		t.Fatal(err)
	}
	var k logKeys
	k.chunks = resp.Responses[0].GetResponseRange().GetKvs()
	if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) == 1 {
		k.count = kvs[0]
	}
	if kvs := resp.Responses[2].GetResponseRange().GetKvs(); len(kvs) == 1 {
		k.run = kvs[0]
	}
	return k
}

// writes groups the chunk keys by the revision that wrote them.
func (k logKeys) writes() map[int64][]*mvccpb.KeyValue {
	out := map[int64][]*mvccpb.KeyValue{}
	for _, kv := range k.chunks {
		out[kv.ModRevision] = append(out[kv.ModRevision], kv)
	}
	return out
}

func report(t *testing.T, env *servicingtest.Env, b *osvcv1.LogBatch) {
	t.Helper()
	if err := env.Service.ReportLogs(context.Background(), agent, b); err != nil {
		t.Fatalf("ReportLogs: %v", err)
	}
}

func endRun(t *testing.T, env *servicingtest.Env, run *osvcv1.Run, token int64) {
	t.Helper()
	if err := env.Service.ReportRunResult(context.Background(), agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: token,
		State: osvcv1.RunState_RUN_STATE_FAILED}); err != nil {
		t.Fatalf("ReportRunResult: %v", err)
	}
}

func TestABatchOfSeveralChunksIsOneWriteAndLeavesTheRunAlone(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{Now: newClock().Now})
	run, _ := leasedRun(t, env, img)
	token := run.GetFencingToken()
	// The first report moves the run IN_PROCESS; the rest do not touch it.
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: agentLines(1, 10)})
	before := readLogKeys(t, env, run.GetName())

	big := agentLines(11, 6010) // about 900 KB before compression: several chunks
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: big})
	after := readLogKeys(t, env, run.GetName())
	if after.run.ModRevision != before.run.ModRevision {
		t.Errorf("the batch rewrote the run (revision %d, was %d)", after.run.ModRevision, before.run.ModRevision)
	}
	var fresh []*mvccpb.KeyValue
	for _, kv := range after.chunks {
		if kv.ModRevision > before.count.ModRevision {
			fresh = append(fresh, kv)
		}
	}
	if len(fresh) < 2 {
		t.Fatalf("the batch wrote %d chunks, want several (%d KB of lines, chunks of at most 256 KB)", len(fresh), linesBytes(big)>>10)
	}
	for _, kv := range fresh {
		if kv.ModRevision != after.count.ModRevision {
			t.Errorf("chunk %s written at revision %d, its count at %d: want one transaction", kv.Key, kv.ModRevision, after.count.ModRevision)
		}
	}
	if r := env.Run(t, run.GetName()); r.GetLogLineCount() != 6010 {
		t.Errorf("GetRun counts %d lines while the run goes, want 6010", r.GetLogLineCount())
	}
	runs, _, err := env.Service.ListRuns(context.Background(), img.GetName(), 10, "")
	if err != nil || len(runs) != 1 || runs[0].GetLogLineCount() != 6010 {
		t.Errorf("ListRuns = %v, %v; want the run counting 6010 lines", runs, err)
	}
	endRun(t, env, run, token)
	if _, got := watchAll(t, env, run.GetName(), 0); len(got) != 6010 || got[6009].GetSequence() != 6010 {
		t.Errorf("read back %d lines, want 1..6010", len(got))
	}
}

func linesBytes(lines []*osvcv1.LogLine) int {
	n := 0
	for _, l := range lines {
		n += len(l.GetMessage())
	}
	return n
}

func TestABatchLargerThanOneEtcdRequestGoesInSeveralTransactions(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	run, _ := leasedRun(t, env, img)
	// Lines that do not compress: 200 of 12 KiB of random hex, 2.4 MB.
	noise := make([]byte, 6<<10)
	var big []*osvcv1.LogLine
	for i := int64(1); i <= 200; i++ {
		_, _ = rand.Read(noise)
		big = append(big, &osvcv1.LogLine{Sequence: i, Time: timestamppb.Now(), Level: "info", Message: hex.EncodeToString(noise)})
	}
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: big})
	k := readLogKeys(t, env, run.GetName())
	writes := k.writes()
	if len(writes) < 2 {
		t.Errorf("%d chunks in %d transactions, want several transactions for 2.4 MB that does not compress", len(k.chunks), len(writes))
	}
	for rev, kvs := range writes {
		size := 0
		for _, kv := range kvs {
			size += len(kv.Key) + len(kv.Value)
		}
		if size > store.MaxValueBytes+1024 {
			t.Errorf("the transaction at revision %d wrote %d bytes of chunks, over what fits in an etcd request", rev, size)
		}
	}
	endRun(t, env, run, run.GetFencingToken())
	if _, got := watchAll(t, env, run.GetName(), 0); len(got) != 200 || got[199].GetMessage() != big[199].GetMessage() {
		t.Errorf("read back %d lines, want the 200 sent", len(got))
	}
}

func TestAResentBatchIsStoredOnceAndWritesNothing(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	run, _ := leasedRun(t, env, img)
	token := run.GetFencingToken()
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(1, 3)})
	before := readLogKeys(t, env, run.GetName())
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(1, 3)})
	if after := readLogKeys(t, env, run.GetName()); after.count.ModRevision != before.count.ModRevision || len(after.chunks) != len(before.chunks) {
		t.Errorf("a resent batch wrote: count at revision %d (was %d), %d chunks (were %d)",
			after.count.ModRevision, before.count.ModRevision, len(after.chunks), len(before.chunks))
	}
	// Out of order and overlapping: each line once.
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: append(lines(5, 6), lines(2, 5)...)})
	endRun(t, env, run, token)
	if _, got := watchAll(t, env, run.GetName(), 0); fmt.Sprint(sequences(got)) != "[1 2 3 4 5 6]" {
		t.Errorf("stored lines %v, want 1..6 once each", sequences(got))
	}
}

func TestLogLinesOfAStaleLeaseAreNeverStored(t *testing.T) {
	t.Parallel()
	env, img, ender := newFencedEnv(t)
	ctx := context.Background()
	run, lease := leasedRun(t, env, img)
	ender.lease = lease
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: lines(1, 2)})
	before := readLogKeys(t, env, run.GetName())
	for _, tt := range []struct {
		name  string
		agent string
		token int64
	}{
		{"with a token that is not the assignment's", agent, run.GetFencingToken() + 1000},
		{"with no token", agent, 0},
		{"from another agent", "agents/ps1-b", run.GetFencingToken()},
	} {
		err := env.Service.ReportLogs(ctx, tt.agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: tt.token, Lines: lines(3, 4)})
		if !errors.Is(err, errdefs.ErrStaleLease) {
			t.Errorf("a batch %s: err = %v, want ErrStaleLease", tt.name, err)
		}
	}
	// The agent's lease ends between the batch's reads and its commit.
	ender.armFor("report for " + run.GetName())
	err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: lines(3, 4)})
	if !ender.ended.Load() {
		t.Fatal("the batch's transaction never reached its commit")
	}
	if !errors.Is(err, errdefs.ErrStaleLease) {
		t.Errorf("a batch whose lease ended before its commit: err = %v, want ErrStaleLease", err)
	}
	after := readLogKeys(t, env, run.GetName())
	if len(after.chunks) != len(before.chunks) || after.count.ModRevision != before.count.ModRevision {
		t.Errorf("refused batches stored lines: %d chunks (were %d), count at revision %d (was %d)",
			len(after.chunks), len(before.chunks), after.count.ModRevision, before.count.ModRevision)
	}
}

func TestABatchFollowingALineNotStoredIsRefused(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	token := run.GetFencingToken()
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(1, 3)})
	// Lines 4..5 went in a batch that failed; 6..7 follow them.
	err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(6, 7), FollowsSequence: 5})
	if !errors.Is(err, errdefs.ErrOutOfRange) {
		t.Fatalf("a batch following a line not stored: err = %v, want ErrOutOfRange", err)
	}
	if n := env.Run(t, run.GetName()).GetLogLineCount(); n != 3 {
		t.Errorf("the refused batch moved the count to %d, want 3", n)
	}
	// Sent again in order, both go in; a batch following a stored line too.
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(4, 5), FollowsSequence: 3})
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(6, 7), FollowsSequence: 5})
	endRun(t, env, run, token)
	if _, got := watchAll(t, env, run.GetName(), 0); fmt.Sprint(sequences(got)) != "[1 2 3 4 5 6 7]" {
		t.Errorf("stored lines %v, want 1..7", sequences(got))
	}
}

func TestTheLinesPastTheCapAreCountedWhileTheRunGoesAndAfter(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{MaxLogLines: 3})
	run, _ := leasedRun(t, env, img)
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: lines(1, 2)})
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: lines(3, 6)})
	if n := env.Run(t, run.GetName()).GetLogLineCount(); n != 6 {
		t.Errorf("while the run goes it counts %d lines, want 6", n)
	}
	endRun(t, env, run, run.GetFencingToken())
	k := readLogKeys(t, env, run.GetName())
	if k.count != nil {
		t.Errorf("the ended run kept its log count key")
	}
	stored, err := store.Unmarshal[*osvcv1.Run](k.run.Value)
	if err != nil || stored.GetLogLineCount() != 6 {
		t.Errorf("the ended run stores %d lines (%v), want 6", stored.GetLogLineCount(), err)
	}
	if _, got := watchAll(t, env, run.GetName(), 0); fmt.Sprint(sequences(got)) != "[1 2 3]" {
		t.Errorf("stored lines %v, want 1..3", sequences(got))
	}
}

func TestALostRunKeepsItsLogCount(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{MaxAttempts: 1})
	ctx := context.Background()
	run, lease := leasedRun(t, env, img)
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: lines(1, 4)})
	if _, err := env.Store.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	r, err := env.Service.Requeue(ctx, run.GetName(), "lease revoked")
	if err != nil || r.GetState() != osvcv1.RunState_RUN_STATE_FAILED {
		t.Fatalf("Requeue on the last attempt = %v, %v; want FAILED", r, err)
	}
	k := readLogKeys(t, env, run.GetName())
	stored, err := store.Unmarshal[*osvcv1.Run](k.run.Value)
	if err != nil || stored.GetLogLineCount() != 4 || k.count != nil {
		t.Errorf("the failed run stores %d lines (%v), count key left: %v; want 4 in the run", stored.GetLogLineCount(), err, k.count != nil)
	}
}

func TestLogLinesCountAsProgressOnceAMinute(t *testing.T) {
	t.Parallel()
	clk := newClock()
	env, img := newEnv(t, servicingtest.Options{Now: clk.Now})
	run, _ := leasedRun(t, env, img)
	token := run.GetFencingToken()
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(1, 1)})
	first := readLogKeys(t, env, run.GetName()).run.ModRevision
	clk.Add(59 * time.Second)
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(2, 2)})
	if rev := readLogKeys(t, env, run.GetName()).run.ModRevision; rev != first {
		t.Errorf("a batch within the minute rewrote the run (revision %d, was %d)", rev, first)
	}
	at := clk.Add(time.Second)
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(3, 3)})
	if got := env.Run(t, run.GetName()).GetLastProgressTime().AsTime(); !got.Equal(at) {
		t.Errorf("a minute on, the run's last progress is %v, want %v", got, at)
	}
}

func TestTheLeaseWritesNoLogBaseAndTheFirstBatchFixesIt(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, lease := leasedRun(t, env, img)
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: lines(1, 3)})
	if _, err := env.Store.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Service.Requeue(ctx, run.GetName(), "lease revoked"); err != nil {
		t.Fatal(err)
	}
	lease = env.Connect(t, agents.ID(agent), "PS1", 1, 30*time.Second)
	second, err := env.Service.Lease(ctx, run.GetName(), 0, agent, int64(lease))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := servicing.RunID(run.GetName())
	if resp, err := env.Store.Client().Get(ctx, env.Store.LogBaseKey(id)); err != nil || resp.Count != 0 {
		t.Errorf("the lease wrote a log base (%v)", err)
	}
	// The second attempt's lines, in two batches, the first resent.
	token := second.GetFencingToken()
	for _, b := range [][]*osvcv1.LogLine{lines(1, 2), lines(1, 2), lines(3, 3)} {
		report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: b, FollowsSequence: b[0].GetSequence() - 1})
	}
	count, _, err := store.Get[*storev1.LogCount](ctx, env.Store, env.Store.LogCountKey(id))
	if err != nil || count.GetBase() != 3 || count.GetFencingToken() != token || count.GetLines() != 6 {
		t.Errorf("log count = %v (%v), want base 3 for token %d, 6 lines", count, err, token)
	}
	endRun(t, env, run, token)
	if _, got := watchAll(t, env, run.GetName(), 0); fmt.Sprint(sequences(got)) != "[1 2 3 4 5 6]" || got[3].GetMessage() != "line 1" {
		t.Errorf("stored lines %v, want attempt 1's 1..3 then attempt 2's as 4..6", sequences(got))
	}
}

func TestARunAnOlderServerCountedGoesOnFromItsCount(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	_, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := servicing.RunID(run.GetName())
	st := env.Store
	// As an older server left it: attempt 1 stored lines 1..3; attempt 2
	// was leased with log base 3 (in the lease's transaction, so at its
	// token's revision) and stored its lines 1..2 as 4..5; the run counts 5.
	if _, err := st.Create(ctx, st.LogKey(id, 1), &storev1.LogChunk{Lines: lines(1, 3)}); err != nil {
		t.Fatal(err)
	}
	second := lines(1, 2)
	for _, l := range second {
		l.Sequence += 3
	}
	if _, err := st.Create(ctx, st.LogKey(id, 4), &storev1.LogChunk{Lines: second}); err != nil {
		t.Fatal(err)
	}
	lease := env.Connect(t, agents.ID(agent), img.GetSite(), 1, 30*time.Second)
	run.State, run.Agent, run.Attempt, run.LogLineCount = osvcv1.RunState_RUN_STATE_IN_PROCESS, agent, 2, 5
	runValue, _ := st.Marshal(run)
	assignment, _ := st.Marshal(&storev1.Assignment{Run: run.GetName(), Agent: agent, SessionLease: int64(lease), Attempt: 2})
	base, _ := st.Marshal(wrapperspb.Int64(3))
	resp, err := st.Client().Txn(ctx).Then(
		clientv3.OpPut(st.AssignmentKey(id), string(assignment), clientv3.WithLease(lease)),
		clientv3.OpPut(st.RunKey(id), string(runValue)),
		clientv3.OpPut(st.LogBaseKey(id), string(base)),
	).Commit()
	if err != nil {
		t.Fatal(err)
	}
	token := resp.Header.Revision
	if n := env.Run(t, run.GetName()).GetLogLineCount(); n != 5 {
		t.Errorf("GetRun counts %d lines, want the 5 the run holds", n)
	}
	// The agent resends its line 2 and goes on with 3..4.
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(2, 4)})
	endRun(t, env, run, token)
	_, got := watchAll(t, env, run.GetName(), 0)
	if fmt.Sprint(sequences(got)) != "[1 2 3 4 5 6 7]" || got[5].GetMessage() != "line 3" {
		t.Errorf("stored lines %v, want 1..5 then the attempt's lines 3..4 as 6..7", sequences(got))
	}
	if k := readLogKeys(t, env, run.GetName()); k.count != nil {
		t.Error("the ended run kept its log count key")
	}
	if resp, err := st.Client().Get(ctx, st.LogBaseKey(id)); err != nil || resp.Count != 0 {
		t.Errorf("the ended run kept the older server's log base (%v)", err)
	}
}

func TestAChunkAlreadyStoredPastTheCountIsNeverOverwritten(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	report(t, env, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: lines(1, 2)})
	id, _ := servicing.RunID(run.GetName())
	stray := &storev1.LogChunk{Lines: []*osvcv1.LogLine{{Sequence: 3, Message: "stray"}}}
	if _, err := env.Store.Create(ctx, env.Store.LogKey(id, 3), stray); err != nil {
		t.Fatal(err)
	}
	err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: lines(3, 4)})
	if !errors.Is(err, errdefs.ErrInternal) {
		t.Errorf("a batch onto a stored chunk: err = %v, want ErrInternal", err)
	}
	got, _, err := store.Get[*storev1.LogChunk](ctx, env.Store, env.Store.LogKey(id, 3))
	if err != nil || len(got.GetLines()) != 1 || got.GetLines()[0].GetMessage() != "stray" {
		t.Errorf("the stored chunk is now %v (%v), want it untouched", got, err)
	}
}
