// Package agents keeps the records of the servicing agents: agents/{name}
// with what each announced and its link state, and its presence while it is
// connected.
//
// Two leases meet here and keep different names. An agent's *session* is an
// etcd lease that the replica holding its stream keeps alive; its presence
// key lives on it, and so do the assignments of the runs it holds, so all of
// them vanish when the agent is gone past the session's TTL. A run's *lease*
// (package servicing) is that assignment: the run given to an agent, fenced
// by the assignment key's revision.
package agents

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/names"
	"github.com/osvc/osvc/server/sites"
	"github.com/osvc/osvc/server/store"
)

const (
	collection        = "agents/"
	defaultSessionTTL = 30 * time.Second
	// defaultRefreshEvery is how stale a connected agent's record may grow:
	// its last-seen time and drives are rewritten this often when nothing
	// else brings a write. Liveness is the session, not the record.
	defaultRefreshEvery = 5 * time.Minute
	// defaultFlushEvery is how long record refreshes gather before one
	// etcd transaction writes them.
	defaultFlushEvery = time.Second
	// flushBatch bounds the records one transaction writes, under etcd's
	// default of 128 operations per transaction.
	flushBatch = 100
	// replicaTTL is how long a replica's liveness key outlives it: how
	// long after a replica died its agents' streams may not move yet.
	replicaTTL = 5 * time.Second
)

// Name returns agents/{id}.
func Name(id string) string { return collection + id }

// ID returns the last segment of agents/{id}.
func ID(name string) string { return strings.TrimPrefix(name, collection) }

// Config configures a Registry.
type Config struct {
	Store  *store.Store
	Logger hclog.Logger
	// SessionTTL is the TTL of each agent's session (etcd lease): how long
	// after its stream dropped an agent keeps its runs. Default 30s; at
	// least 1s (etcd counts whole seconds).
	SessionTTL time.Duration
	// ServerID names this replica in presence records.
	ServerID string
	// RefreshEvery is how often a connected agent's record is rewritten
	// when its drives did not move; default 5m.
	RefreshEvery time.Duration
	// FlushEvery is how long heartbeats gather before one transaction
	// writes the records due; default 1s.
	FlushEvery time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Registry reads and writes agent records and presence.
type Registry struct {
	store    *store.Store
	client   *clientv3.Client
	logger   hclog.Logger
	ttl      time.Duration
	serverID string
	refresh  time.Duration
	flush    time.Duration
	now      func() time.Time

	mu sync.Mutex
	// due are the sessions whose record a heartbeat made due for a rewrite.
	due map[*Session]beat
	// flushed is signalled after each flush (tests wait on it).
	flushed chan struct{}
}

// beat is what a heartbeat brought: when the agent was heard from and its drives.
type beat struct {
	seen   time.Time
	drives []*osvcv1.Drive
}

// New validates cfg and returns a Registry.
func New(cfg Config) (*Registry, error) {
	if cfg.Store == nil {
		return nil, errors.New("agents: Config.Store is required")
	}
	if cfg.ServerID == "" {
		return nil, errors.New("agents: Config.ServerID is required; use the replica's host name")
	}
	r := &Registry{
		store:    cfg.Store,
		client:   cfg.Store.Client(),
		logger:   cfg.Logger,
		ttl:      cmp.Or(cfg.SessionTTL, defaultSessionTTL),
		serverID: cfg.ServerID,
		refresh:  cmp.Or(cfg.RefreshEvery, defaultRefreshEvery),
		flush:    cmp.Or(cfg.FlushEvery, defaultFlushEvery),
		now:      cfg.Now,
		due:      map[*Session]beat{},
		flushed:  make(chan struct{}, 1),
	}
	if r.refresh <= 0 || r.flush <= 0 {
		return nil, fmt.Errorf("agents: Config.RefreshEvery %s and FlushEvery %s must be positive", cfg.RefreshEvery, cfg.FlushEvery)
	}
	if r.ttl < time.Second {
		return nil, fmt.Errorf("agents: Config.SessionTTL is %s; use at least 1s", cfg.SessionTTL)
	}
	if r.logger == nil {
		r.logger = hclog.NewNullLogger()
	}
	r.logger = r.logger.Named("agents")
	if r.now == nil {
		r.now = time.Now
	}
	return r, nil
}

// SessionTTL is the TTL of the agents' sessions.
func (r *Registry) SessionTTL() time.Duration { return r.ttl }

// ValidateHello checks what an agent announces when it connects.
func ValidateHello(h *osvcv1.Hello) error {
	if h == nil {
		return errdefs.InvalidArgument("hello", "open the stream with Hello")
	}
	if err := names.ValidateID(h.GetName()); err != nil {
		return errdefs.InvalidArgument("hello.name", fmt.Sprintf("%s: %v", names.Quote(h.GetName()), err))
	}
	if err := names.ValidateSite(h.GetSite()); err != nil {
		return errdefs.InvalidArgument("hello.site", err.Error())
	}
	if h.GetCapacity() < 0 {
		return errdefs.InvalidArgument("hello.capacity", fmt.Sprintf("%d; send how many runs the agent services at once (0 means 1)", h.GetCapacity()))
	}
	if err := ValidateDistributionURL(h.GetDistributionUrl()); err != nil {
		return errdefs.InvalidArgument("hello.distribution_url", err.Error())
	}
	if n := len(h.GetDistributedImages()); n > MaxDistributedImages {
		return errdefs.InvalidArgument("hello.distributed_images", fmt.Sprintf("%d images: at most %d", n, MaxDistributedImages))
	}
	return nil
}

// MaxDistributedImages bounds the images a distribution point lists in its Hello.
const MaxDistributedImages = 10000

// maxURLLen bounds the distribution URL an agent announces.
const maxURLLen = 2048

// ValidateDistributionURL checks the address a distribution point announces:
// empty, or an absolute http or https URL.
func ValidateDistributionURL(raw string) error {
	if raw == "" {
		return nil
	}
	if len(raw) > maxURLLen {
		return fmt.Errorf("%d bytes: at most %d", len(raw), maxURLLen)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s: %v", names.Quote(raw), err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%s: want an http:// or https:// URL with a host, e.g. http://dp1.example:8090/", names.Quote(raw))
	}
	return nil
}

// Session is one connected agent's etcd lease and the presence its stream
// wrote on it.
type Session struct {
	// ID is the agent's id, Agent its name agents/{id}.
	ID, Agent string
	// Lease is the etcd lease the presence and the agent's assignments live on.
	Lease clientv3.LeaseID
	// Resumed tells a session taken over from a stream that dropped within
	// the TTL: the agent keeps the runs it holds.
	Resumed bool
	// PresenceRevision is the revision at which this stream wrote the
	// presence; a later write is another stream's.
	PresenceRevision int64
	presence         []byte

	// The agent record as this stream last wrote it, guarded by the
	// registry's mu: a refresh compares recordRev, so a record someone else
	// wrote since (the stream's close, a newer stream) is never overwritten.
	record    *osvcv1.Agent
	recordRev int64
	// gone is set once the record is no longer this stream's to write.
	gone bool
}

// Open starts an agent's session: it resumes the etcd lease its presence
// names when that lease is still alive (a reconnect within the TTL keeps its
// runs), or grants a new one, and writes the presence on it with the agent
// record CONNECTED, in one transaction. The caller keeps the lease alive
// while the stream lives. An agent of a site that does not exist is
// ErrFailedPrecondition, saying how to create the site.
func (r *Registry) Open(ctx context.Context, hello *osvcv1.Hello) (*Session, error) {
	if err := ValidateHello(hello); err != nil {
		return nil, err
	}
	s := &Session{ID: hello.GetName(), Agent: Name(hello.GetName())}
	if err := r.lease(ctx, s); err != nil {
		return nil, fmt.Errorf("session of %s: %w", s.Agent, err)
	}
	now := timestamppb.New(r.now())
	presence, err := r.store.Marshal(&storev1.AgentPresence{Agent: s.Agent, SessionLease: int64(s.Lease), Server: r.serverID, ConnectTime: now})
	if err != nil {
		return nil, err
	}
	agent := &osvcv1.Agent{
		Name:         s.Agent,
		Site:         hello.GetSite(),
		Host:         hello.GetHost(),
		Version:      hello.GetVersion(),
		Engines:      hello.GetEngines(),
		Drives:       hello.GetDrives(),
		Capacity:     max(hello.GetCapacity(), 1),
		State:        osvcv1.AgentState_AGENT_STATE_CONNECTED,
		LastSeenTime: now,

		DistributionPoint: hello.GetDistributionPoint(),
		DistributionUrl:   hello.GetDistributionUrl(),
	}
	role, err := r.store.Marshal(&storev1.DistributionPointRole{Agent: s.Agent, Site: hello.GetSite()})
	if err != nil {
		return nil, err
	}
	rev, err := r.store.Txn(ctx, "connect "+s.Agent, func(tx *store.Tx) error {
		if _, err := sites.Require(tx, hello.GetSite()); err != nil {
			return err
		}
		if err := r.refuseLiveElsewhere(tx, s.Agent); err != nil {
			return err
		}
		tx.PutRaw(r.store.PresenceKey(s.ID), presence, clientv3.WithLease(s.Lease))
		if hello.GetDistributionPoint() {
			tx.PutRaw(r.store.DistributionPointKey(s.ID), role)
		} else {
			tx.Delete(r.store.DistributionPointKey(s.ID))
		}
		return tx.Put(r.store.AgentKey(s.ID), agent)
	})
	var elsewhere *liveElsewhere
	if errors.As(err, &elsewhere) {
		// The refusal ends with the other replica's liveness: tell when.
		return nil, errdefs.RetryAfter(err, r.replicaLeft(ctx, elsewhere.server))
	}
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", s.Agent, err)
	}
	s.presence, s.PresenceRevision = presence, rev
	s.record, s.recordRev = agent, rev
	return s, nil
}

// refuseLiveElsewhere refuses, within tx, a stream of agent while another
// replica holds an open one: its presence names a replica that is alive
// and a stream not closed. A stolen identity must not take over a live
// stream (and its runs' fencing tokens) through another replica. A dead
// replica's streams are taken over once its liveness key expired.
func (r *Registry) refuseLiveElsewhere(tx *store.Tx, agent string) error {
	p, err := store.Load[*storev1.AgentPresence](tx, r.store.PresenceKey(ID(agent)))
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if p.GetServer() == r.serverID || p.GetStreamClosed() {
		return nil
	}
	if alive, err := tx.Revision(r.store.ReplicaKey(p.GetServer())); err != nil || alive == 0 {
		return err
	}
	return &liveElsewhere{server: p.GetServer(), err: errdefs.Newf(errdefs.ErrConflict,
		"%s has a live stream on replica %s; a second one is refused (if the old one died, try again once the replica's liveness expired, at most %s after it died)",
		agent, p.GetServer(), replicaTTL)}
}

// liveElsewhere is the refusal of a stream an alive replica holds.
type liveElsewhere struct {
	server string
	err    error
}

func (e *liveElsewhere) Error() string { return e.err.Error() }
func (e *liveElsewhere) Unwrap() error { return e.err }

// replicaLeft is how long the liveness of replica server may still last:
// its lease's time to live, rounded up, or replicaTTL when it cannot be
// read.
func (r *Registry) replicaLeft(ctx context.Context, server string) time.Duration {
	resp, err := r.client.Get(ctx, r.store.ReplicaKey(server))
	if err != nil || len(resp.Kvs) == 0 {
		return replicaTTL
	}
	ttl, err := r.client.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil || ttl.TTL < 0 {
		return replicaTTL
	}
	// etcd counts whole seconds: the lease may last up to one more.
	return time.Duration(ttl.TTL+1) * time.Second
}

// lease resumes the session its presence names when still alive, else grants one.
func (r *Registry) lease(ctx context.Context, s *Session) error {
	p, _, err := store.Get[*storev1.AgentPresence](ctx, r.store, r.store.PresenceKey(s.ID))
	switch {
	case err == nil && p.GetSessionLease() != 0:
		ttl, err := r.client.TimeToLive(ctx, clientv3.LeaseID(p.GetSessionLease()))
		if err == nil && ttl.TTL > 0 {
			s.Lease, s.Resumed = clientv3.LeaseID(p.GetSessionLease()), true
			return nil
		}
	case err != nil && !errors.Is(err, errdefs.ErrNotFound):
		return err
	}
	g, err := r.client.Grant(ctx, int64((r.ttl+time.Second-1)/time.Second))
	if err != nil {
		return err
	}
	s.Lease = g.ID
	return nil
}

// Close records that the session's stream dropped, unless a newer stream of
// the agent took over. The session's lease is left to expire: a reconnect
// within the TTL resumes it and the agent keeps its runs. lastSeen is when
// the agent was last heard from; the drives of a heartbeat not written yet
// are written with it.
func (r *Registry) Close(ctx context.Context, s *Session, lastSeen time.Time) error {
	r.mu.Lock()
	pending, hasPending := r.due[s]
	delete(r.due, s)
	s.gone = true
	r.mu.Unlock()
	presenceKey := r.store.PresenceKey(s.ID)
	_, err := r.store.Txn(ctx, "disconnect "+s.Agent, func(tx *store.Tx) error {
		if p, _, err := tx.Raw(presenceKey); err != nil || string(p) != string(s.presence) {
			return err // replaced, or the lease already ended
		}
		// The session lives on for a reconnect, through any replica.
		closed, err := store.Unmarshal[*storev1.AgentPresence](s.presence)
		if err != nil {
			return err
		}
		closed.StreamClosed = true
		if err := tx.Put(presenceKey, closed); err != nil {
			return err
		}
		agent, err := store.Load[*osvcv1.Agent](tx, r.store.AgentKey(s.ID))
		if err != nil {
			return err
		}
		agent.State = osvcv1.AgentState_AGENT_STATE_DISCONNECTED
		agent.LastSeenTime = timestamppb.New(lastSeen)
		if hasPending {
			agent.Drives = pending.drives
		}
		return tx.Put(r.store.AgentKey(s.ID), agent)
	})
	return err
}

// Heartbeat notes that the agent was heard from at seen with drives. It
// writes nothing itself: the record is due for a rewrite only when a drive
// came, went or moved, or when it is RefreshEvery old, and Run writes the
// records due in batches.
func (r *Registry) Heartbeat(s *Session, seen time.Time, drives []*osvcv1.Drive) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.gone || s.record == nil {
		return
	}
	if len(drives) == 0 {
		drives = s.record.GetDrives()
	}
	if !drivesMoved(s.record.GetDrives(), drives) && seen.Sub(s.record.GetLastSeenTime().AsTime()) < r.refresh {
		return
	}
	r.due[s] = beat{seen: seen, drives: drives}
}

// drivesMoved tells whether the drives an agent reports differ from those
// recorded enough to rewrite the record: a drive came or went, changed size,
// or its free space moved by a twentieth of its size.
func drivesMoved(old, cur []*osvcv1.Drive) bool {
	if len(old) != len(cur) {
		return true
	}
	for i, d := range cur {
		o := old[i]
		if o.GetPath() != d.GetPath() || o.GetTotalBytes() != d.GetTotalBytes() {
			return true
		}
		diff := o.GetFreeBytes() - d.GetFreeBytes()
		if diff < 0 {
			diff = -diff
		}
		if diff > 0 && diff >= d.GetTotalBytes()/20 {
			return true
		}
	}
	return false
}

// Run keeps this replica's liveness key and writes the records heartbeats
// made due, every FlushEvery, until ctx ends.
func (r *Registry) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for ctx.Err() == nil {
			if err := r.live(ctx); err != nil && ctx.Err() == nil {
				r.logger.Warn("cannot keep this replica's liveness key; trying again", "error", err)
				t := time.NewTimer(time.Second)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
			}
		}
	})
	t := time.NewTicker(r.flush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.Flush(ctx); err != nil && ctx.Err() == nil {
			r.logger.Warn("cannot refresh agent records; the next flush tries again", "error", err)
		}
	}
}

// Flush writes the records due now, up to flushBatch per etcd transaction.
// Each record is written in a nested transaction of its own that compares
// the record's revision with the one its stream last wrote: a record the
// stream no longer owns (closed, replaced, marked lost) is left alone, and
// its session writes no more.
func (r *Registry) Flush(ctx context.Context) error {
	r.mu.Lock()
	type item struct {
		s    *Session
		rec  *osvcv1.Agent
		rev  int64
		data []byte
	}
	var items []item
	for s, b := range r.due {
		rec := proto.Clone(s.record).(*osvcv1.Agent)
		rec.LastSeenTime, rec.Drives = timestamppb.New(b.seen), b.drives
		data, err := r.store.Marshal(rec)
		if err != nil {
			r.mu.Unlock()
			return err
		}
		items = append(items, item{s: s, rec: rec, rev: s.recordRev, data: data})
	}
	clear(r.due)
	r.mu.Unlock()
	defer func() {
		select {
		case r.flushed <- struct{}{}:
		default:
		}
	}()
	for batch := range slices.Chunk(items, flushBatch) {
		ops := make([]clientv3.Op, len(batch))
		for i, it := range batch {
			key := r.store.AgentKey(it.s.ID)
			ops[i] = clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", it.rev)},
				[]clientv3.Op{clientv3.OpPut(key, string(it.data))}, nil)
		}
		resp, err := r.client.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			// Due again, unless a newer beat replaced it meanwhile.
			r.mu.Lock()
			for _, it := range batch {
				if _, ok := r.due[it.s]; !ok && !it.s.gone {
					r.due[it.s] = beat{seen: it.rec.GetLastSeenTime().AsTime(), drives: it.rec.GetDrives()}
				}
			}
			r.mu.Unlock()
			return fmt.Errorf("refresh %d agent records: %w", len(batch), err)
		}
		r.mu.Lock()
		for i, it := range batch {
			if !resp.Responses[i].GetResponseTxn().GetSucceeded() {
				it.s.gone = true
				delete(r.due, it.s)
				continue
			}
			if it.s.recordRev == it.rev {
				it.s.record, it.s.recordRev = it.rec, resp.Header.Revision
			}
		}
		r.mu.Unlock()
	}
	return nil
}

// live writes this replica's liveness key on an etcd lease of its own and
// keeps it alive until ctx ends (then revokes it: the replica's agents may
// move at once) or the lease is lost.
func (r *Registry) live(ctx context.Context) error {
	g, err := r.client.Grant(ctx, int64(replicaTTL/time.Second))
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = r.client.Revoke(ctx, g.ID)
	}()
	if _, err := r.client.Put(ctx, r.store.ReplicaKey(r.serverID), r.serverID, clientv3.WithLease(g.ID)); err != nil {
		return err
	}
	ka, err := r.client.KeepAlive(ctx, g.ID)
	if err != nil {
		return err
	}
	for range ka {
	}
	if ctx.Err() == nil {
		return errors.New("the liveness lease ended")
	}
	return nil
}

// Flushed is signalled after each flush; for tests.
func (r *Registry) Flushed() <-chan struct{} { return r.flushed }

// MarkLost records that the agent's session ended (its presence is gone), as
// the scheduler finds it: the agent record read at rev turns LOST unless the
// agent reconnected or changed meanwhile. It tells whether it did.
func (r *Registry) MarkLost(ctx context.Context, id string, rev int64) (bool, error) {
	key := r.store.AgentKey(id)
	var lost *osvcv1.Agent
	wrote, err := r.store.Txn(ctx, "mark agents/"+id+" lost", func(tx *store.Tx) error {
		if cur, err := tx.Revision(key); err != nil || cur != rev {
			return err
		}
		if present, err := tx.Revision(r.store.PresenceKey(id)); err != nil || present != 0 {
			return err
		}
		agent, err := store.Load[*osvcv1.Agent](tx, key)
		if err != nil {
			return err
		}
		agent.State = osvcv1.AgentState_AGENT_STATE_LOST
		agent.Runs = nil
		lost = agent
		return tx.Put(key, agent)
	})
	if err != nil || wrote == 0 {
		return false, err
	}
	r.logger.Info("agent lost: its session ended", "agent", lost.GetName(), "last_seen", lost.GetLastSeenTime().AsTime())
	return true, nil
}

// Held sorts the runs an agent says it holds when it (re)connects: those
// whose assignment is still its own with the same fencing token are
// resumed, the others discarded. resumed maps each resumed run to its token.
func (r *Registry) Held(ctx context.Context, s *Session, held []*osvcv1.HeldRun) (resume, discard []string, resumed map[string]int64, err error) {
	resumed = map[string]int64{}
	for _, h := range held {
		id, ok := strings.CutPrefix(h.GetRun(), "runs/")
		if !ok || names.ValidateID(id) != nil {
			discard = append(discard, h.GetRun())
			continue
		}
		resp, err := r.client.Get(ctx, r.store.AssignmentKey(id))
		if err != nil {
			return nil, nil, nil, fmt.Errorf("look up held run %s: %w", h.GetRun(), err)
		}
		own := false
		if len(resp.Kvs) == 1 && resp.Kvs[0].ModRevision == h.GetFencingToken() {
			a, err := store.Unmarshal[*storev1.Assignment](resp.Kvs[0].Value)
			own = err == nil && a.GetAgent() == s.Agent
		}
		if own {
			resume = append(resume, h.GetRun())
			resumed[h.GetRun()] = h.GetFencingToken()
		} else {
			discard = append(discard, h.GetRun())
		}
	}
	return resume, discard, resumed, nil
}

// List lists the agents in name order, with the runs each holds now.
func (r *Registry) List(ctx context.Context, pageSize int, token string) ([]*osvcv1.Agent, string, error) {
	agents, next, err := store.List[*osvcv1.Agent](ctx, r.store, r.store.AgentsPrefix(), pageSize, token)
	if err != nil {
		return nil, "", err
	}
	resp, err := r.client.Get(ctx, r.store.AssignmentsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, "", fmt.Errorf("list assignments: %w", err)
	}
	runs := map[string][]string{}
	for _, kv := range resp.Kvs {
		if a, err := store.Unmarshal[*storev1.Assignment](kv.Value); err == nil {
			runs[a.GetAgent()] = append(runs[a.GetAgent()], a.GetRun())
		}
	}
	for _, a := range agents {
		a.Runs = runs[a.GetName()]
	}
	return agents, next, nil
}

// Connected is an agent with a live session, as the scheduler leases runs to it.
type Connected struct {
	Agent *osvcv1.Agent
	// Lease is the agent's session (etcd lease).
	Lease int64
	// Presence is the agent's presence key as read, at PresenceRevision: a
	// lease transaction compares it instead of reading it again.
	Presence         []byte
	PresenceRevision int64
}

// Scan reads every agent and presence in one revision: it returns the
// connected agents (CONNECTED with presence) and calls lost for each record
// without presence that is not LOST yet, with the record's revision.
func (r *Registry) Scan(ctx context.Context, lost func(id string, rev int64)) ([]Connected, error) {
	resp, err := r.client.Txn(ctx).Then(
		clientv3.OpGet(r.store.PresencePrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(r.store.AgentsPrefix(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	presence := map[string]Connected{}
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		p, err := store.Unmarshal[*storev1.AgentPresence](kv.Value)
		if err != nil {
			return nil, err
		}
		presence[store.IDFromKey(string(kv.Key))] = Connected{Lease: p.GetSessionLease(), Presence: kv.Value, PresenceRevision: kv.ModRevision}
	}
	var out []Connected
	for _, kv := range resp.Responses[1].GetResponseRange().GetKvs() {
		agent, err := store.Unmarshal[*osvcv1.Agent](kv.Value)
		if err != nil {
			return nil, err
		}
		id := store.IDFromKey(string(kv.Key))
		p, ok := presence[id]
		switch {
		case !ok:
			if agent.GetState() != osvcv1.AgentState_AGENT_STATE_LOST {
				lost(id, kv.ModRevision)
			}
		case agent.GetState() == osvcv1.AgentState_AGENT_STATE_CONNECTED:
			// An agent whose stream dropped keeps its runs on its session,
			// but new ones wait for an agent that can start them.
			p.Agent = agent
			out = append(out, p)
		}
	}
	return out, nil
}

// Delete removes the record of the agent named name (agents/{id}) and its
// own distribution point role, and runs within in the same transaction
// (auth revokes the agent's certificates there, so it comes back only by
// enrolling again). An agent that holds a run, or whose presence exists
// (connected, or its session not yet ended after its stream closed), is
// ErrFailedPrecondition: its presence is read in the transaction, and an
// agent without presence is given no run. An agent without record is
// ErrNotFound when within says it was never enrolled either.
func (r *Registry) Delete(ctx context.Context, name string, within func(tx *store.Tx) error) error {
	id, ok := strings.CutPrefix(name, collection)
	if !ok {
		return errdefs.InvalidArgument("name", fmt.Sprintf("want agents/{name}, got %s", names.Quote(name)))
	}
	if err := names.ValidateID(id); err != nil {
		return errdefs.InvalidArgument("name", fmt.Sprintf("%s: %v", names.Quote(name), err))
	}
	if run, err := r.heldRun(ctx, name); err != nil {
		return err
	} else if run != "" {
		return fmt.Errorf("%s holds run %s; delete it once the run ended (or cancel it: osvcctl run cancel %s) and the agent is stopped: %w",
			name, run, run, errdefs.ErrFailedPrecondition)
	}
	agentKey, presenceKey := r.store.AgentKey(id), r.store.PresenceKey(id)
	_, err := r.store.Txn(ctx, "delete "+name, func(tx *store.Tx) error {
		if present, err := tx.Revision(presenceKey); err != nil {
			return err
		} else if present != 0 {
			return fmt.Errorf("%s is connected, or its session lasts until osvc-server --lease-ttl after its stream closed; stop the agent (and uninstall its service) first: %w",
				name, errdefs.ErrFailedPrecondition)
		}
		_, recorded, err := tx.Raw(agentKey)
		if err != nil {
			return err
		}
		err = within(tx)
		if errors.Is(err, errdefs.ErrNotFound) && recorded {
			err = nil // a record without enrollment: nothing to revoke
		}
		if err != nil {
			return err
		}
		tx.Delete(agentKey)
		tx.Delete(r.store.DistributionPointKey(id))
		return nil
	}, store.Prefetch(agentKey, presenceKey))
	if err != nil {
		return err
	}
	r.logger.Info("agent deleted", "agent", name)
	return nil
}

// heldRun names a run assigned to the agent named name now, "" for none.
func (r *Registry) heldRun(ctx context.Context, name string) (string, error) {
	resp, err := r.client.Get(ctx, r.store.AssignmentsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return "", fmt.Errorf("the runs of %s: %w", name, err)
	}
	for _, kv := range resp.Kvs {
		if a, err := store.Unmarshal[*storev1.Assignment](kv.Value); err == nil && a.GetAgent() == name {
			return a.GetRun(), nil
		}
	}
	return "", nil
}
