package servicing

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/store"
)

// ActiveRun is a run that has not ended, with the ModRevision it was read at.
type ActiveRun struct {
	Run      *osvcv1.Run
	Revision int64
}

// ActiveRuns returns every run that has not ended, found through the images'
// active-run keys, so the cost follows the images in servicing, not history.
func (s *Service) ActiveRuns(ctx context.Context) ([]ActiveRun, error) {
	resp, err := s.client.Get(ctx, s.store.ActiveRunsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list active runs: %w", err)
	}
	out := make([]ActiveRun, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		name, err := store.Unmarshal[*wrapperspb.StringValue](kv.Value)
		if err != nil {
			return nil, fmt.Errorf("active run %s: %w", kv.Key, err)
		}
		id, err := RunID(name.GetValue())
		if err != nil {
			s.logger.Warn("active-run key names a bad run", "key", string(kv.Key), "value", name.GetValue())
			continue
		}
		run, rev, err := store.Get[*osvcv1.Run](ctx, s.store, s.store.RunKey(id))
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ActiveRun{Run: run, Revision: rev})
	}
	return out, nil
}

// Lease hands the PENDING run, read at runRevision, to agent: in one
// transaction comparing the run unchanged, its assignment key absent and the
// agent's presence bound to leaseID, it writes the assignment on that lease and
// the run LEASED with attempt+1. The assignment key's ModRevision becomes the
// fencing token, which a second transaction writes into the run. A run or
// agent that changed meanwhile is ErrContended.
func (s *Service) Lease(ctx context.Context, runName string, runRevision int64, agent string, leaseID int64) (*osvcv1.Run, error) {
	id, err := RunID(runName)
	if err != nil {
		return nil, err
	}
	runKey, assignKey := s.store.RunKey(id), s.store.AssignmentKey(id)
	run, rev, err := store.Get[*osvcv1.Run](ctx, s.store, runKey)
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", runName, err)
	}
	if runRevision != 0 && rev != runRevision {
		return nil, fmt.Errorf("lease %s: the run changed: %w", runName, errdefs.ErrContended)
	}
	if run.GetState() != osvcv1.RunState_RUN_STATE_PENDING || run.GetCancelRequested() {
		return nil, fmt.Errorf("lease %s: the run is %s: %w", runName, stateName(run.GetState()), errdefs.ErrFailedPrecondition)
	}
	now := timestamppb.New(s.now())
	run.State = osvcv1.RunState_RUN_STATE_LEASED
	run.Agent = agent
	run.Attempt++
	run.FencingToken = 0
	run.StartTime = now
	run.EndTime = nil
	assignment := &storev1.Assignment{Run: runName, Agent: agent, LeaseId: leaseID, Attempt: run.Attempt, AssignTime: now}
	runData, err := s.store.Marshal(run)
	if err != nil {
		return nil, err
	}
	assignData, err := s.store.Marshal(assignment)
	if err != nil {
		return nil, err
	}
	baseData, err := s.store.Marshal(wrapperspb.Int64(run.GetLogLineCount()))
	if err != nil {
		return nil, err
	}
	presenceKey := s.store.PresenceKey(AgentID(agent))
	resp, err := s.client.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(runKey), "=", rev),
		clientv3.Compare(clientv3.CreateRevision(assignKey), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(presenceKey), "!=", 0),
		clientv3.Compare(clientv3.LeaseValue(presenceKey), "=", leaseID),
	).Then(
		clientv3.OpPut(assignKey, string(assignData), clientv3.WithLease(clientv3.LeaseID(leaseID))),
		clientv3.OpPut(runKey, string(runData)),
		clientv3.OpPut(s.store.LogBaseKey(id), string(baseData)),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("lease %s to %s: %w", runName, agent, err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("lease %s to %s: the run or the agent changed: %w", runName, agent, errdefs.ErrContended)
	}
	token := resp.Header.Revision
	s.logger.Info("run leased", "run", runName, "agent", agent, "attempt", run.Attempt, "fencing_token", token)
	// The run was written in the same transaction, so it is still at token
	// unless a report came first; then writeFencingToken reads it again.
	run.FencingToken = token
	if runData, err = s.store.Marshal(run); err != nil {
		return nil, err
	}
	resp, err = s.client.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(assignKey), "=", token),
		clientv3.Compare(clientv3.ModRevision(runKey), "=", token),
	).Then(clientv3.OpPut(runKey, string(runData))).Commit()
	if err == nil && resp.Succeeded {
		return run, nil
	}
	leased, err := s.writeFencingToken(ctx, id, token)
	if err != nil {
		// The scheduler repairs a LEASED run without token; the agent's
		// reports carry the token anyway.
		s.logger.Warn("cannot write the fencing token into the run yet", "run", runName, "error", err)
		run.FencingToken = token
		return run, nil
	}
	return leased, nil
}

// RepairFencingToken writes the token of a leased run whose token is still 0
// (the lease's second write was lost). A run without assignment is left alone.
func (s *Service) RepairFencingToken(ctx context.Context, runName string) error {
	id, err := RunID(runName)
	if err != nil {
		return err
	}
	resp, err := s.client.Get(ctx, s.store.AssignmentKey(id))
	if err != nil {
		return fmt.Errorf("repair %s: %w", runName, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	_, err = s.writeFencingToken(ctx, id, resp.Kvs[0].ModRevision)
	return err
}

// writeFencingToken writes token into the run, guarded by the assignment
// still having it as its ModRevision.
func (s *Service) writeFencingToken(ctx context.Context, runID string, token int64) (*osvcv1.Run, error) {
	runKey, assignKey := s.store.RunKey(runID), s.store.AssignmentKey(runID)
	for attempt := 0; attempt < txnRetries; attempt++ {
		run, rev, err := store.Get[*osvcv1.Run](ctx, s.store, runKey)
		if err != nil {
			return nil, err
		}
		if run.GetFencingToken() == token {
			return run, nil
		}
		if !IsLeased(run.GetState()) || run.GetFencingToken() != 0 {
			return nil, fmt.Errorf("run %s is %s with token %d: %w", run.GetName(), stateName(run.GetState()), run.GetFencingToken(), errdefs.ErrStaleLease)
		}
		run.FencingToken = token
		data, err := s.store.Marshal(run)
		if err != nil {
			return nil, err
		}
		resp, err := s.client.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(assignKey), "=", token),
			clientv3.Compare(clientv3.ModRevision(runKey), "=", rev),
		).Then(clientv3.OpPut(runKey, string(data))).Else(clientv3.OpGet(assignKey)).Commit()
		if err != nil {
			return nil, err
		}
		if resp.Succeeded {
			return run, nil
		}
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 0 || kvs[0].ModRevision != token {
			return nil, fmt.Errorf("run %s lost its assignment: %w", run.GetName(), errdefs.ErrStaleLease)
		}
	}
	return nil, fmt.Errorf("write fencing token of runs/%s: %w", runID, errdefs.ErrContended)
}

// Requeue puts back a run whose lease was lost (its assignment key is gone):
// PENDING for another attempt, not before RetryDelay(attempt) from now, FAILED
// when it had MaxAttempts already, and CANCELED when a cancel was requested.
// A run that is not leased, or whose assignment still exists, is returned
// unchanged.
func (s *Service) Requeue(ctx context.Context, runName, reason string) (*osvcv1.Run, error) {
	id, err := RunID(runName)
	if err != nil {
		return nil, err
	}
	runKey, assignKey := s.store.RunKey(id), s.store.AssignmentKey(id)
	for attempt := 0; attempt < txnRetries; attempt++ {
		resp, err := s.client.Txn(ctx).Then(clientv3.OpGet(runKey), clientv3.OpGet(assignKey)).Commit()
		if err != nil {
			return nil, fmt.Errorf("requeue %s: %w", runName, err)
		}
		runKVs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(runKVs) == 0 {
			return nil, fmt.Errorf("run %s: %w", runName, errdefs.ErrNotFound)
		}
		run, err := store.Unmarshal[*osvcv1.Run](runKVs[0].Value)
		if err != nil {
			return nil, err
		}
		if !IsLeased(run.GetState()) || len(resp.Responses[1].GetResponseRange().GetKvs()) > 0 {
			return run, nil
		}
		ch := s.newChange(run)
		agent := run.GetAgent()
		var retryAfter time.Duration
		switch {
		case run.GetCancelRequested():
			err = s.end(ctx, ch, osvcv1.RunState_RUN_STATE_CANCELED, "")
		case int(run.GetAttempt()) >= s.maxAttempts:
			err = s.end(ctx, ch, osvcv1.RunState_RUN_STATE_FAILED, fmt.Sprintf(
				"the run lost its agent's lease on each of its %d attempts (last: %s); check the agents of the image's site and schedule it again",
				run.GetAttempt(), reason))
		default:
			resetForRetry(run)
			retryAfter = s.RetryDelay(run.GetAttempt())
			run.NotBefore = timestamppb.New(s.now().Add(retryAfter))
			err = s.setImageStatus(ctx, ch, osvcv1.ServicingStatus_SERVICING_STATUS_SCHEDULED, false)
		}
		if err != nil {
			return nil, err
		}
		ok, err := s.commit(ctx, ch,
			clientv3.Compare(clientv3.ModRevision(runKey), "=", runKVs[0].ModRevision),
			clientv3.Compare(clientv3.CreateRevision(assignKey), "=", 0))
		if err != nil {
			return nil, fmt.Errorf("requeue %s: %w", runName, err)
		}
		if ok {
			s.logger.Info("run requeued after a lost lease", "run", runName, "agent", agent, "attempt", run.GetAttempt(),
				"state", stateName(run.GetState()), "retry_after", retryAfter, "reason", reason)
			return run, nil
		}
	}
	return nil, fmt.Errorf("requeue %s: %w", runName, errdefs.ErrContended)
}

// MarkStalled flags the IN_PROCESS run, read at revision, as stalled: its
// agent has reported nothing since LastProgress. The flag is for
// administrators; the run keeps its state and lease, and its next report
// clears the flag. A run that changed since revision is ErrContended; a run
// that is not IN_PROCESS, or is flagged already, is returned unchanged.
func (s *Service) MarkStalled(ctx context.Context, runName string, revision int64) (*osvcv1.Run, error) {
	id, err := RunID(runName)
	if err != nil {
		return nil, err
	}
	runKey := s.store.RunKey(id)
	run, rev, err := store.Get[*osvcv1.Run](ctx, s.store, runKey)
	if err != nil {
		return nil, fmt.Errorf("mark %s stalled: %w", runName, err)
	}
	if revision != 0 && rev != revision {
		return nil, fmt.Errorf("mark %s stalled: the run changed: %w", runName, errdefs.ErrContended)
	}
	if run.GetState() != osvcv1.RunState_RUN_STATE_IN_PROCESS || run.GetStalled() {
		return run, nil
	}
	run.Stalled = true
	ok, err := s.commit(ctx, s.newChange(run), clientv3.Compare(clientv3.ModRevision(runKey), "=", rev))
	if err != nil {
		return nil, fmt.Errorf("mark %s stalled: %w", runName, err)
	}
	if !ok {
		return nil, fmt.Errorf("mark %s stalled: the run changed: %w", runName, errdefs.ErrContended)
	}
	s.logger.Warn("run stalled: its agent has reported no progress", "run", runName, "agent", run.GetAgent(),
		"step", strings.TrimPrefix(run.GetStep().String(), "STEP_"), "last_progress", LastProgress(run))
	return run, nil
}

// resetForRetry clears what the lost attempt reported; attempt stays counted.
func resetForRetry(run *osvcv1.Run) {
	run.State = osvcv1.RunState_RUN_STATE_PENDING
	run.Agent = ""
	run.FencingToken = 0
	run.Step = osvcv1.Step_STEP_UNSPECIFIED
	run.Steps = nil
	run.Percent = 0
	run.LastProgressTime = nil
	run.Stalled = false
	for _, r := range run.UpdateResults {
		r.State = osvcv1.UpdateState_UPDATE_STATE_PENDING
		r.Percent = 0
		r.Message = ""
	}
}

// Assignment builds what the agent needs to service a leased run: the run
// with its fencing token, the image, the source version and the updates with
// their files, in apply order. A token that is no longer the run's
// assignment (the run ended or was leased again) is ErrStaleLease.
func (s *Service) Assignment(ctx context.Context, runName string, token int64) (*osvcv1.Assign, error) {
	id, err := RunID(runName)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Get(ctx, s.store.AssignmentKey(id))
	if err != nil {
		return nil, fmt.Errorf("assign %s: %w", runName, err)
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].ModRevision != token {
		return nil, fmt.Errorf("assign %s: fencing token %d is no longer the run's: %w", runName, token, errdefs.ErrStaleLease)
	}
	run, err := s.GetRun(ctx, runName)
	if err != nil {
		return nil, err
	}
	run = proto.Clone(run).(*osvcv1.Run)
	run.FencingToken = token
	img, err := s.catalog.GetImage(ctx, run.GetImage())
	if err != nil {
		return nil, fmt.Errorf("assign %s: %w", runName, err)
	}
	var source *osvcv1.ImageVersion
	for _, v := range img.GetVersions() {
		if v.GetVersion() == run.GetSourceVersion() {
			source = v
		}
	}
	if source == nil {
		return nil, fmt.Errorf("assign %s: image %s no longer has version %d: %w", runName, img.GetName(), run.GetSourceVersion(), errdefs.ErrFailedPrecondition)
	}
	a := &osvcv1.Assign{Run: run, Image: img, Source: source}
	for _, name := range run.GetUpdates() {
		u, err := s.catalog.GetUpdate(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("assign %s: %w", runName, err)
		}
		a.Updates = append(a.Updates, u)
	}
	return a, nil
}
