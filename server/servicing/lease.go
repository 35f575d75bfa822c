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
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/sites"
	"github.com/osvc/osvc/server/store"
)

// ActiveRun is a run that has not ended, with the ModRevision it was read at.
type ActiveRun struct {
	Run      *osvcv1.Run
	Revision int64
}

// ActiveRuns returns every run that has not ended, found through the images'
// active-run and active-inspection keys and read a hundred per round trip, so the cost follows the
// images in servicing, not history.
func (s *Service) ActiveRuns(ctx context.Context) ([]ActiveRun, error) {
	resp, err := s.client.Txn(ctx).Then(
		clientv3.OpGet(s.store.ActiveRunsPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(s.store.ActiveInspectionsPrefix(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("list active runs: %w", err)
	}
	kvs := append(resp.Responses[0].GetResponseRange().GetKvs(), resp.Responses[1].GetResponseRange().GetKvs()...)
	keys := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		name, err := store.Unmarshal[*wrapperspb.StringValue](kv.Value)
		if err != nil {
			return nil, fmt.Errorf("active run %s: %w", kv.Key, err)
		}
		id, err := RunID(name.GetValue())
		if err != nil {
			s.logger.Warn("active-run key names a bad run", "key", string(kv.Key), "value", name.GetValue())
			continue
		}
		keys = append(keys, s.store.RunKey(id))
	}
	runs, revs, err := store.GetMany[*osvcv1.Run](ctx, s.store, keys)
	if err != nil {
		return nil, err
	}
	out := make([]ActiveRun, 0, len(runs))
	for i, run := range runs {
		if run != nil {
			out = append(out, ActiveRun{Run: run, Revision: revs[i]})
		}
	}
	return out, nil
}

// Lease hands the PENDING run, read at runRevision (0: as it is now), to
// agent, reading the run and the agent's presence first. The scheduler,
// which has read both, calls LeaseSeen instead.
func (s *Service) Lease(ctx context.Context, runName string, runRevision int64, agent string, agentLease int64) (*osvcv1.Run, error) {
	id, err := RunID(runName)
	if err != nil {
		return nil, err
	}
	return s.lease(ctx, runName, runRevision, agent, agentLease,
		store.Prefetch(s.store.RunKey(id), s.store.AssignmentKey(id), s.store.PresenceKey(agents.ID(agent))))
}

// LeaseSeen hands the PENDING run, as the scheduler read it, to the
// connected agent, as the scheduler read its presence, in one etcd
// transaction and no read: what the scheduler read is the transaction's read
// set, so a run or presence that changed since makes the commit fail, the
// transaction read them again, and the lease ErrContended.
func (s *Service) LeaseSeen(ctx context.Context, run ActiveRun, agent agents.Connected) (*osvcv1.Run, error) {
	id, err := RunID(run.Run.GetName())
	if err != nil {
		return nil, err
	}
	runData, err := s.store.Marshal(run.Run)
	if err != nil {
		return nil, err
	}
	presenceKey := s.store.PresenceKey(agents.ID(agent.Agent.GetName()))
	return s.lease(ctx, run.Run.GetName(), run.Revision, agent.Agent.GetName(), agent.Lease,
		store.Seed(s.store.RunKey(id), runData, run.Revision, 0),
		store.Seed(s.store.AssignmentKey(id), nil, 0, 0),
		store.Seed(presenceKey, agent.Presence, agent.PresenceRevision, agent.Lease))
}

// lease is one transaction that reads the run unchanged since runRevision
// and PENDING, its assignment key absent and the agent's presence bound to
// the etcd lease agentLease (the agent's session), and writes the
// assignment on that etcd lease and the run LEASED with attempt+1. The
// revision of that commit, which is the assignment key's ModRevision, is the
// fencing token: the agent's reports compare it with the assignment key
// directly, and the first of them writes it into the run. The attempt's log
// base is fixed by its first log batch, not here. A run or agent that
// changed meanwhile is ErrContended.
func (s *Service) lease(ctx context.Context, runName string, runRevision int64, agent string, agentLease int64, reads ...store.TxnOption) (*osvcv1.Run, error) {
	id, err := RunID(runName)
	if err != nil {
		return nil, err
	}
	runKey, assignKey := s.store.RunKey(id), s.store.AssignmentKey(id)
	presenceKey := s.store.PresenceKey(agents.ID(agent))
	var run *osvcv1.Run
	token, err := s.store.Txn(ctx, "lease "+runName, func(tx *store.Tx) error {
		ch, err := s.loadRun(tx, runName)
		if err != nil {
			return fmt.Errorf("lease %s: %w", runName, err)
		}
		run = ch.run
		if rev, err := tx.Revision(runKey); err != nil {
			return err
		} else if runRevision != 0 && rev != runRevision {
			return fmt.Errorf("lease %s: the run changed: %w", runName, errdefs.ErrContended)
		}
		if run.GetState() != osvcv1.RunState_RUN_STATE_PENDING || run.GetCancelRequested() {
			return fmt.Errorf("lease %s: the run is %s: %w", runName, stateName(run.GetState()), errdefs.ErrFailedPrecondition)
		}
		if rev, err := tx.Revision(assignKey); err != nil {
			return err
		} else if rev != 0 {
			return fmt.Errorf("lease %s: the run is assigned already: %w", runName, errdefs.ErrContended)
		}
		if lease, err := tx.LeaseOf(presenceKey); err != nil {
			return err
		} else if lease == 0 || lease != agentLease {
			return fmt.Errorf("lease %s to %s: the agent is no longer connected on etcd lease %x: %w", runName, agent, agentLease, errdefs.ErrContended)
		}
		now := timestamppb.New(s.now())
		run.State = osvcv1.RunState_RUN_STATE_LEASED
		run.Waiting = ""
		run.Agent = agent
		run.Attempt++
		run.FencingToken = 0
		run.StartTime = now
		run.EndTime = nil
		assignment := &storev1.Assignment{Run: runName, Agent: agent, SessionLease: agentLease, Attempt: run.Attempt, AssignTime: now}
		if err := tx.Put(assignKey, assignment, clientv3.WithLease(clientv3.LeaseID(agentLease))); err != nil {
			return err
		}
		return s.write(ch)
	}, reads...)
	if err != nil {
		return nil, err
	}
	s.logger.Info("run leased", "run", runName, "agent", agent, "attempt", run.Attempt, "fencing_token", token)
	run.FencingToken = token
	return run, nil
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
	var out *osvcv1.Run
	var retryAfter time.Duration
	var agent string
	rev, err := s.store.Txn(ctx, "requeue "+runName, func(tx *store.Tx) error {
		ch, err := s.loadRun(tx, runName)
		if err != nil {
			return err
		}
		run := ch.run
		out, retryAfter, agent = run, 0, run.GetAgent()
		if !IsLeased(run.GetState()) {
			return nil
		}
		if assigned, err := tx.Revision(assignKey); err != nil || assigned != 0 {
			return err
		}
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
			if !IsInspection(run) {
				err = s.setImageStatus(ctx, ch, osvcv1.ServicingStatus_SERVICING_STATUS_SCHEDULED, false)
			}
		}
		if err != nil {
			return err
		}
		return s.write(ch)
	}, store.Prefetch(runKey, assignKey))
	if err != nil {
		return nil, fmt.Errorf("requeue %s: %w", runName, err)
	}
	if rev != 0 {
		s.logger.Info("run requeued after a lost lease", "run", runName, "agent", agent, "attempt", out.GetAttempt(),
			"state", stateName(out.GetState()), "retry_after", retryAfter, "reason", reason)
	}
	return out, nil
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
	var out *osvcv1.Run
	rev, err := s.store.Txn(ctx, "mark "+runName+" stalled", func(tx *store.Tx) error {
		ch, err := s.loadRun(tx, runName)
		if err != nil {
			return err
		}
		out = ch.run
		if rev, err := tx.Revision(runKey); err != nil {
			return err
		} else if revision != 0 && rev != revision {
			return fmt.Errorf("the run changed: %w", errdefs.ErrContended)
		}
		if ch.run.GetState() != osvcv1.RunState_RUN_STATE_IN_PROCESS || ch.run.GetStalled() {
			return nil
		}
		ch.run.Stalled = true
		return s.write(ch)
	})
	if err != nil {
		return nil, fmt.Errorf("mark %s stalled: %w", runName, err)
	}
	if rev != 0 {
		s.logger.Warn("run stalled: its agent has reported no progress", "run", runName, "agent", out.GetAgent(),
			"step", strings.TrimPrefix(out.GetStep().String(), "STEP_"), "last_progress", LastProgress(out))
	}
	return out, nil
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
	// The site's drive as it is now: a change reaches the next run.
	site, err := sites.Lookup(ctx, s.store, img.GetSite())
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		// An image's site cannot be deleted; the agent still services
		// on its Automatic drive.
		s.logger.Warn("the image's site has no record: the run goes to the Automatic drive", "run", runName, "image", img.GetName(), "site", img.GetSite())
	case err != nil:
		return nil, fmt.Errorf("assign %s: %w", runName, err)
	}
	a := &osvcv1.Assign{Run: run, Image: img, Source: source, OfflineServicingDrive: site.GetOfflineServicingDrive()}
	for _, name := range run.GetUpdates() {
		u, err := s.catalog.GetUpdate(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("assign %s: %w", runName, err)
		}
		a.Updates = append(a.Updates, u)
	}
	return a, nil
}

// FailPending ends a PENDING run FAILED with reason before any agent took
// it: the scheduler's verdict on a run that cannot start (its source
// version failed inspection). A run that is no longer PENDING is returned
// unchanged.
func (s *Service) FailPending(ctx context.Context, runName, reason string) (*osvcv1.Run, error) {
	var out *osvcv1.Run
	rev, err := s.store.Txn(ctx, "fail "+runName, func(tx *store.Tx) error {
		ch, err := s.loadRun(tx, runName)
		if err != nil {
			return err
		}
		out = ch.run
		if ch.run.GetState() != osvcv1.RunState_RUN_STATE_PENDING {
			return nil
		}
		if err := s.end(ctx, ch, osvcv1.RunState_RUN_STATE_FAILED, clipText(reason)); err != nil {
			return err
		}
		return s.write(ch)
	})
	if err != nil {
		return nil, fmt.Errorf("fail %s: %w", runName, err)
	}
	if rev != 0 {
		s.logger.Warn("run failed before it started", "run", runName, "reason", reason)
	}
	return out, nil
}

// SetWaiting records why a PENDING run is not leased yet (Run.waiting),
// when that changed; a run no longer PENDING is left alone.
func (s *Service) SetWaiting(ctx context.Context, runName, reason string) error {
	_, err := s.store.Txn(ctx, "note why "+runName+" waits", func(tx *store.Tx) error {
		ch, err := s.loadRun(tx, runName)
		if err != nil {
			return err
		}
		if ch.run.GetState() != osvcv1.RunState_RUN_STATE_PENDING || ch.run.GetWaiting() == reason {
			return nil
		}
		ch.run.Waiting = clipText(reason)
		return s.write(ch)
	})
	if err != nil {
		return fmt.Errorf("note why %s waits: %w", runName, err)
	}
	return nil
}

// agentAssignments are the runs assigned to agent now, with their fencing tokens.
func (s *Service) agentAssignments(ctx context.Context, agent string) (map[string]int64, error) {
	resp, err := s.client.Get(ctx, s.store.AssignmentsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("the runs of agent %s: %w", agent, err)
	}
	runs := make(map[string]int64)
	for _, kv := range resp.Kvs {
		if as, err := store.Unmarshal[*storev1.Assignment](kv.Value); err == nil && as.GetAgent() == agent {
			runs[as.GetRun()] = kv.ModRevision
		}
	}
	return runs, nil
}

// AgentHoldsRun reports whether a run is assigned to agent now.
func (s *Service) AgentHoldsRun(ctx context.Context, agent string) (bool, error) {
	runs, err := s.agentAssignments(ctx, agent)
	return len(runs) > 0, err
}

// AgentBlobs are the blobs of the runs assigned to agent now (each run's
// source version and update files): what the agent may read.
func (s *Service) AgentBlobs(ctx context.Context, agent string) (map[string]bool, error) {
	runs, err := s.agentAssignments(ctx, agent)
	if err != nil {
		return nil, err
	}
	blobs := make(map[string]bool)
	for run, token := range runs {
		a, err := s.Assignment(ctx, run, token)
		if errors.Is(err, errdefs.ErrStaleLease) || errors.Is(err, errdefs.ErrNotFound) {
			continue // ended meanwhile
		}
		if err != nil {
			return nil, err
		}
		blobs[a.GetSource().GetSha256()] = true
		for _, u := range a.GetUpdates() {
			for _, f := range u.GetFiles() {
				blobs[f.GetSha256()] = true
			}
		}
	}
	return blobs, nil
}
