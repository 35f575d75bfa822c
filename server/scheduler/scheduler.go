// Package scheduler turns PENDING runs into leases. One replica schedules at a
// time, elected through etcd; it reacts to watches on runs, agents' presence
// and assignments, and to a timer for runs that wait for their start time
// (or their backoff after a lost lease) and for runs that would stall.
//
// Each pass is level-triggered: it reads the runs in progress, the
// assignments and the connected agents, then leases what can be leased,
// re-queues runs whose assignment vanished (their agent's lease ended), flags
// runs without progress for StallAfter as stalled and marks agents without
// presence LOST. Events only say when to look again, so a missed or compacted
// event costs a pass, never a wrong state.
package scheduler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/metrics"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/store"
)

const (
	defaultElectionTTL    = 10 * time.Second
	defaultResyncInterval = time.Minute
	defaultLogRetention   = 30 * 24 * time.Hour
	defaultStallAfter     = 15 * time.Minute
	// pruneInterval spaces the passes that delete logs past their retention.
	pruneInterval = time.Hour
	// retryDelay spaces attempts after an error (etcd unreachable, lost
	// election session) so a broken cluster is not hammered.
	retryDelay = time.Second
)

// Config configures a Scheduler.
type Config struct {
	Store     *store.Store
	Servicing *servicing.Service
	// Agents is the registry of agent records and sessions.
	Agents *agents.Registry
	Logger hclog.Logger
	// Metrics, when set, counts the leases lost.
	Metrics *metrics.Metrics
	// ServerID names this replica in the election.
	ServerID string
	// ElectionTTL is the TTL of the election session: how long a dead
	// leader blocks the others. Default 10s; at least 1s.
	ElectionTTL time.Duration
	// ResyncInterval is the longest time between passes; default 1m.
	ResyncInterval time.Duration
	// LogRetention is how long the log lines of an ended run are kept;
	// default 30 days.
	LogRetention time.Duration
	// StallAfter is how long an IN_PROCESS run may go without a report
	// before it is flagged stalled; default 15m.
	StallAfter time.Duration
	// Now is the clock for start times and stalls; time.Now when nil.
	Now func() time.Time
}

// Scheduler leases runs to agents.
type Scheduler struct {
	metrics   *metrics.Metrics
	store     *store.Store
	client    *clientv3.Client
	servicing *servicing.Service
	registry  *agents.Registry
	logger    hclog.Logger
	serverID  string
	ttl       time.Duration
	resync    time.Duration
	retention time.Duration
	stall     time.Duration
	now       func() time.Time
}

// New validates cfg and returns a Scheduler.
func New(cfg Config) (*Scheduler, error) {
	if cfg.Store == nil {
		return nil, errors.New("scheduler: Config.Store is required")
	}
	if cfg.Servicing == nil {
		return nil, errors.New("scheduler: Config.Servicing is required")
	}
	if cfg.Agents == nil {
		return nil, errors.New("scheduler: Config.Agents is required")
	}
	if cfg.ServerID == "" {
		return nil, errors.New("scheduler: Config.ServerID is required; use the replica's host name")
	}
	s := &Scheduler{
		metrics:   cfg.Metrics,
		store:     cfg.Store,
		client:    cfg.Store.Client(),
		servicing: cfg.Servicing,
		registry:  cfg.Agents,
		logger:    cfg.Logger,
		serverID:  cfg.ServerID,
		ttl:       cmp.Or(cfg.ElectionTTL, defaultElectionTTL),
		resync:    cmp.Or(cfg.ResyncInterval, defaultResyncInterval),
		retention: cmp.Or(cfg.LogRetention, defaultLogRetention),
		stall:     cmp.Or(cfg.StallAfter, defaultStallAfter),
		now:       cfg.Now,
	}
	if s.ttl < time.Second {
		return nil, fmt.Errorf("scheduler: Config.ElectionTTL is %s; use at least 1s", cfg.ElectionTTL)
	}
	if s.resync < 0 {
		return nil, fmt.Errorf("scheduler: Config.ResyncInterval is %s; use a positive duration", cfg.ResyncInterval)
	}
	if s.retention < 0 {
		return nil, fmt.Errorf("scheduler: Config.LogRetention is %s; use a positive duration", cfg.LogRetention)
	}
	if s.stall < 0 {
		return nil, fmt.Errorf("scheduler: Config.StallAfter is %s; use a positive duration", cfg.StallAfter)
	}
	if s.logger == nil {
		s.logger = hclog.NewNullLogger()
	}
	s.logger = s.logger.Named("scheduler")
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Run campaigns for leadership and schedules while leader, until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	return s.store.RunElected(ctx, store.Election{Prefix: s.store.ElectionPrefix(), ID: s.serverID, TTL: s.ttl, Logger: s.logger}, s.loop)
}

// loop runs passes whenever a watch or the timer says so.
func (s *Scheduler) loop(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	watches := []struct {
		prefix   string
		relevant func(*clientv3.Event) bool
	}{
		{s.store.RunsPrefix(), relevantRunEvent},
		{s.store.PresencePrefix(), func(*clientv3.Event) bool { return true }},
		{s.store.AssignmentsPrefix(), func(ev *clientv3.Event) bool { return ev.Type == clientv3.EventTypeDelete }},
		// A schedule created or changed may be due, or due sooner.
		{s.store.SchedulesPrefix(""), func(ev *clientv3.Event) bool { return ev.Type != clientv3.EventTypeDelete }},
	}
	// The watches start right after the revision read here, before the first
	// pass reads anything: what that pass does not see, they report. Watches
	// started at "now" would begin whenever their goroutines get to it, and
	// miss what happens between the pass's reads and that moment.
	resp, err := s.client.Get(ctx, s.store.RunsPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("read the revision to watch from: %w", err)
	}
	start := resp.Header.Revision
	// The watches end with ctx, which ends before loop returns.
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, w := range watches {
		wg.Go(func() { s.watch(ctx, w.prefix, start, w.relevant, poke) })
	}

	timer := time.NewTimer(0)
	defer timer.Stop()
	var lastPrune time.Time
	for {
		if now := s.now(); now.Sub(lastPrune) >= pruneInterval {
			if _, err := s.servicing.PruneLogs(ctx, now.Add(-s.retention)); err != nil && ctx.Err() == nil {
				s.logger.Warn("cannot prune old run logs", "error", err)
			}
			lastPrune = now
		}
		next, err := s.Pass(ctx)
		wait := s.resync
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.logger.Warn("scheduling pass failed; trying again", "error", err)
			wait = retryDelay
		} else if !next.IsZero() {
			wait = min(wait, max(next.Sub(s.now()), time.Millisecond))
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-timer.C:
		}
	}
}

// relevantRunEvent keeps the run changes a pass acts on: runs waiting for a
// lease and inspections that ended. Progress of running runs, the bulk of
// the traffic, is not.
func relevantRunEvent(ev *clientv3.Event) bool {
	if ev.Type == clientv3.EventTypeDelete {
		return false
	}
	run, err := store.Unmarshal[*osvcv1.Run](ev.Kv.Value)
	if err != nil {
		return true
	}
	switch run.GetState() {
	case osvcv1.RunState_RUN_STATE_PENDING:
		return true
	}
	// An inspection that ended lets the servicing runs that waited for it
	// go; a servicing run that ended, the schedules that waited for it.
	return servicing.IsFinal(run.GetState())
}

// watch pokes on relevant events under prefix after revision rev, resuming
// from the last seen revision. A compacted history pokes (the pass relists)
// and resumes from the oldest revision kept, so nothing after it is missed.
func (s *Scheduler) watch(ctx context.Context, prefix string, rev int64, relevant func(*clientv3.Event) bool, poke func()) {
	for ctx.Err() == nil {
		for wresp := range s.client.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if wresp.CompactRevision != 0 {
				rev = wresp.CompactRevision - 1
				poke()
				break
			}
			if err := wresp.Err(); err != nil {
				s.logger.Debug("watch broke; resuming", "prefix", prefix, "error", err)
				break
			}
			for _, ev := range wresp.Events {
				rev = ev.Kv.ModRevision
				if relevant(ev) {
					poke()
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(retryDelay / 10):
			// A broken watch may mean missed events.
			poke()
		}
	}
}

// agentSlot is a connected agent as a pass sees it.
type agentSlot struct {
	agents.Connected
	name     string
	site     string
	capacity int
	held     int
}

// Pass looks at every run in progress once: re-queues runs whose assignment
// is gone, flags stalled runs, marks agents without presence
// LOST and leases PENDING runs whose time has come. It returns when it should
// look again: when the earliest waiting run may start or the earliest running
// run would stall (zero when neither). Pass is exported for tests and tools; Run
// calls it.
func (s *Scheduler) Pass(ctx context.Context) (time.Time, error) {
	// Due schedules queue their runs first, so this pass leases them.
	nextSchedule, err := s.servicing.StartDueSchedules(ctx, s.now())
	if err != nil {
		return time.Time{}, fmt.Errorf("start due schedules: %w", err)
	}
	next, err := s.pass(ctx)
	if err == nil && !nextSchedule.IsZero() && (next.IsZero() || nextSchedule.Before(next)) {
		next = nextSchedule
	}
	return next, err
}

// pass is Pass but for the schedules.
func (s *Scheduler) pass(ctx context.Context) (time.Time, error) {
	assigned, err := s.assignments(ctx)
	if err != nil {
		return time.Time{}, err
	}
	agents, err := s.agents(ctx, assigned)
	if err != nil {
		return time.Time{}, err
	}
	runs, err := s.servicing.ActiveRuns(ctx)
	if err != nil {
		return time.Time{}, err
	}
	slices.SortFunc(runs, func(a, b servicing.ActiveRun) int { return cmp.Compare(a.Run.GetName(), b.Run.GetName()) })

	var next time.Time
	wakeAt := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	now := s.now()
	for _, ar := range runs {
		run, rev := ar.Run, ar.Revision
		if servicing.IsLeased(run.GetState()) {
			if _, ok := assigned[run.GetName()]; ok {
				if at := s.checkStall(ctx, run, rev, now); !at.IsZero() {
					wakeAt(at)
				}
				continue
			}
			requeued, err := s.servicing.Requeue(ctx, run.GetName(), fmt.Sprintf("the lease of %s ended", run.GetAgent()))
			if err != nil {
				s.logger.Warn("cannot requeue", "run", run.GetName(), "error", err)
				continue
			}
			s.metrics.LeaseLost()
			run, rev = requeued, 0
		}
		if run.GetState() != osvcv1.RunState_RUN_STATE_PENDING || run.GetCancelRequested() {
			continue
		}
		if nb := run.GetNotBefore(); nb != nil && nb.AsTime().After(now) {
			wakeAt(nb.AsTime())
			why := "starts at " + nb.AsTime().UTC().Format(time.RFC3339)
			if run.GetAttempt() > 0 {
				why = fmt.Sprintf("the lease of its attempt %d was lost; tries again at %s", run.GetAttempt(), nb.AsTime().UTC().Format(time.RFC3339))
			}
			s.noteWaiting(ctx, run, why)
			continue
		}
		why, err := s.lease(ctx, run, rev, agents)
		if err != nil {
			s.logger.Warn("cannot lease", "run", run.GetName(), "error", err)
			continue
		}
		s.noteWaiting(ctx, run, why)
	}
	return next, nil
}

// checkStall flags an IN_PROCESS run stalled once StallAfter has passed since
// its last progress, and otherwise returns when that will be (zero when there
// is nothing to wait for). Reports clear the flag; they do not wake the
// scheduler, so the next stall of a run that moved on is found by the resync
// at the latest.
func (s *Scheduler) checkStall(ctx context.Context, run *osvcv1.Run, rev int64, now time.Time) time.Time {
	if run.GetState() != osvcv1.RunState_RUN_STATE_IN_PROCESS || run.GetStalled() {
		return time.Time{}
	}
	last := servicing.LastProgress(run)
	if last.IsZero() {
		return time.Time{}
	}
	if at := last.Add(s.stall); at.After(now) {
		return at
	}
	if _, err := s.servicing.MarkStalled(ctx, run.GetName(), rev); err != nil {
		// Contended means a report came in: not stalled after all, or the
		// next pass sees it again.
		if !errors.Is(err, errdefs.ErrContended) {
			s.logger.Warn("cannot flag a stalled run", "run", run.GetName(), "error", err)
		}
	}
	return time.Time{}
}

// lease gives run to the least loaded connected agent of its image's site.
func (s *Scheduler) lease(ctx context.Context, run *osvcv1.Run, rev int64, agents []*agentSlot) (waiting string, err error) {
	imageID, err := catalog.ImageID(run.GetImage())
	if err != nil {
		return "", err
	}
	img, _, err := store.Get[*osvcv1.Image](ctx, s.store, s.store.ImageKey(imageID))
	if err != nil {
		return "", fmt.Errorf("image of %s: %w", run.GetName(), err)
	}
	// A servicing run waits for its source version's inspection, and fails
	// when that inspection did.
	if !servicing.IsInspection(run) {
		if pending, err := servicing.ServiceableVersion(img, run.GetSourceVersion()); err != nil {
			if pending {
				s.logger.Trace("run waits for the inspection of its source version", "run", run.GetName(), "reason", err)
				return fmt.Sprintf("waits for the inspection of version %d, which an agent of site %s does first", run.GetSourceVersion(), img.GetSite()), nil
			}
			_, err := s.servicing.FailPending(ctx, run.GetName(), err.Error())
			return "", err
		}
	}
	var candidates []*agentSlot
	ofSite := 0
	for _, a := range agents {
		if a.site != img.GetSite() {
			continue
		}
		ofSite++
		if a.held < a.capacity {
			candidates = append(candidates, a)
		}
	}
	slices.SortFunc(candidates, func(a, b *agentSlot) int {
		return cmp.Or(cmp.Compare(a.held, b.held), cmp.Compare(b.capacity, a.capacity), cmp.Compare(a.name, b.name))
	})
	for _, a := range candidates {
		// The run and the agent as this pass read them make the lease one
		// transaction; after a race, it reads the run again.
		var err error
		if rev != 0 {
			_, err = s.servicing.LeaseSeen(ctx, servicing.ActiveRun{Run: run, Revision: rev}, a.Connected)
		} else {
			_, err = s.servicing.Lease(ctx, run.GetName(), 0, a.name, a.Lease)
		}
		if err == nil {
			a.held++
			return "", nil
		}
		if errors.Is(err, errdefs.ErrFailedPrecondition) {
			return "", nil // no longer PENDING: canceled or leased meanwhile
		}
		if !errors.Is(err, errdefs.ErrContended) {
			return "", err
		}
		// The run or this agent changed since the pass began; the watch will
		// bring another pass for the run, try the next agent meanwhile.
		s.logger.Debug("lease raced", "run", run.GetName(), "agent", a.name, "error", err)
		rev = 0
	}
	switch {
	case ofSite == 0:
		return fmt.Sprintf("no agent of site %s is connected ('osvcctl agent list'; 'osvcctl agent token create --site %s' enrolls one)", img.GetSite(), img.GetSite()), nil
	case len(candidates) == 0:
		s.logger.Trace("no agent with free capacity for the run's site", "run", run.GetName(), "site", img.GetSite())
		return fmt.Sprintf("every agent of site %s services as many runs as its capacity allows; the run goes when one ends", img.GetSite()), nil
	}
	return "", nil
}

// noteWaiting records why a PENDING run waits, when that changed.
func (s *Scheduler) noteWaiting(ctx context.Context, run *osvcv1.Run, why string) {
	if why == "" || run.GetWaiting() == why {
		return
	}
	if err := s.servicing.SetWaiting(ctx, run.GetName(), why); err != nil && ctx.Err() == nil {
		s.logger.Debug("cannot note why a run waits", "run", run.GetName(), "error", err)
	}
}

// assignments maps run names to their assignment.
func (s *Scheduler) assignments(ctx context.Context) (map[string]*storev1.Assignment, error) {
	resp, err := s.client.Get(ctx, s.store.AssignmentsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list assignments: %w", err)
	}
	out := make(map[string]*storev1.Assignment, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		a, err := store.Unmarshal[*storev1.Assignment](kv.Value)
		if err != nil {
			return nil, err
		}
		out[servicing.RunName(store.IDFromKey(string(kv.Key)))] = a
	}
	return out, nil
}

// agents returns the connected agents with their load, and marks agents
// without presence LOST.
func (s *Scheduler) agents(ctx context.Context, assigned map[string]*storev1.Assignment) ([]*agentSlot, error) {
	connected, err := s.registry.Scan(ctx, func(id string, rev int64) {
		if _, err := s.registry.MarkLost(ctx, id, rev); err != nil {
			s.logger.Warn("cannot mark agent lost", "agent", id, "error", err)
		}
	})
	if err != nil {
		return nil, err
	}
	held := map[string]int{}
	for _, a := range assigned {
		held[a.GetAgent()]++
	}
	out := make([]*agentSlot, 0, len(connected))
	for _, c := range connected {
		out = append(out, &agentSlot{
			Connected: c,
			name:      c.Agent.GetName(),
			site:      c.Agent.GetSite(),
			capacity:  max(int(c.Agent.GetCapacity()), 1),
			held:      held[c.Agent.GetName()],
		})
	}
	return out, nil
}
