// Package agentsvc serves the agents' Connect streams: it grants each agent an
// etcd lease kept alive while its stream lives, records its presence, pushes
// the runs leased to it (Assign) and the cancels of those runs, and hands its
// reports to servicing, answering each with an Ack.
//
// Every replica serves the streams of the agents connected to it: a registry
// of those streams, fed by watches on the assignments, runs and presence keys,
// routes each push to the right stream. A periodic resync, and one after a
// compacted watch, makes again from etcd any push an event did not bring.
package agentsvc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/distribution"
	"github.com/osvc/osvc/server/metrics"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/store"
)

const (
	defaultHeartbeatInterval = 10 * time.Second
	// missedHeartbeats ends a stream that stayed silent this many intervals:
	// the agent is gone even if TCP has not noticed.
	missedHeartbeats = 3
	// workQueue bounds the reports waiting for etcd per stream; past it the
	// stream's flow control slows the agent down. An agent keeps a few log
	// batches and one report per run in flight, so 32 is room enough; each
	// slot costs every stream 8 bytes, idle or not.
	workQueue = 32
	// teardownTimeout bounds the writes made after a stream ended.
	teardownTimeout = 5 * time.Second
	// defaultResyncInterval bounds how long a missed push (an Assign that
	// could not be built, a cancel event not seen) waits to be made again.
	defaultResyncInterval = 15 * time.Second
)

// Config configures a Service.
type Config struct {
	Store     *store.Store
	Servicing *servicing.Service
	// Agents keeps the agent records and sessions.
	Agents *agents.Registry
	// Distribution keeps what the distribution points are to hold.
	Distribution *distribution.Service
	// Metrics, when set, counts the reports fenced out and exports the
	// agents connected by site.
	Metrics *metrics.Metrics
	Logger  hclog.Logger
	// HeartbeatInterval is what agents are told to heartbeat at; default 10s.
	HeartbeatInterval time.Duration
	// ResyncInterval is how often the streams connected here are checked
	// against etcd for what a push may have missed: an Assign that could not
	// be built or a cancel whose event was not seen. Default 15s.
	ResyncInterval time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Service serves agent streams.
type Service struct {
	metrics   *metrics.Metrics
	store     *store.Store
	client    *clientv3.Client
	servicing *servicing.Service
	agents    *agents.Registry
	dist      *distribution.Service
	logger    hclog.Logger
	heartbeat time.Duration
	resync    time.Duration
	now       func() time.Time
	// assignment builds a run's Assign; a field so tests can make it fail.
	assignment func(ctx context.Context, run string, token int64) (*osvcv1.Assign, error)

	mu    sync.Mutex
	conns map[string]*conn // by agent id (the name without "agents/")
	// opening are the agent ids whose stream is opening (claim).
	opening map[string]bool
}

// New validates cfg and returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("agentsvc: Config.Store is required")
	}
	if cfg.Servicing == nil {
		return nil, errors.New("agentsvc: Config.Servicing is required")
	}
	if cfg.Agents == nil {
		return nil, errors.New("agentsvc: Config.Agents is required")
	}
	if cfg.Distribution == nil {
		return nil, errors.New("agentsvc: Config.Distribution is required")
	}
	s := &Service{
		metrics:   cfg.Metrics,
		store:     cfg.Store,
		client:    cfg.Store.Client(),
		servicing: cfg.Servicing,
		agents:    cfg.Agents,
		dist:      cfg.Distribution,
		logger:    cfg.Logger,
		heartbeat: cmp.Or(cfg.HeartbeatInterval, defaultHeartbeatInterval),
		resync:    cmp.Or(cfg.ResyncInterval, defaultResyncInterval),
		now:       cfg.Now,
		conns:     map[string]*conn{},
		opening:   map[string]bool{},
	}
	s.assignment = s.servicing.Assignment
	if s.resync <= 0 {
		return nil, fmt.Errorf("agentsvc: Config.ResyncInterval is %s; use a positive duration", cfg.ResyncInterval)
	}
	if s.heartbeat <= 0 {
		return nil, fmt.Errorf("agentsvc: Config.HeartbeatInterval is %s; use a positive duration", cfg.HeartbeatInterval)
	}
	if s.logger == nil {
		s.logger = hclog.NewNullLogger()
	}
	s.logger = s.logger.Named("agentsvc")
	if s.now == nil {
		s.now = time.Now
	}
	if s.metrics != nil {
		s.metrics.AgentsConnected(s.ConnectedBySite)
	}
	return s, nil
}

// ConnectedBySite counts the agents whose stream this replica holds, by
// site.
func (s *Service) ConnectedBySite() map[string]int {
	out := map[string]int{}
	for _, c := range s.local() {
		if c.ctx.Err() == nil {
			out[c.site]++
		}
	}
	return out
}

// Run follows assignments, runs and presence in etcd and pushes what
// concerns the agents connected here, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, w := range []struct {
		prefix string
		handle func(context.Context, *clientv3.Event)
	}{
		{s.store.AssignmentsPrefix(), s.onAssignment},
		{s.store.RunsPrefix(), s.onRun},
		{s.store.PresencePrefix(), s.onPresence},
		{s.store.DistributionsPrefix(""), s.onDistribution},
	} {
		wg.Go(func() { s.watch(ctx, w.prefix, w.handle) })
	}
	// The periodic resync sends again an Assign whose build failed (etcd
	// unavailable, say): its assignment key is written once and brings no
	// further event.
	wg.Go(func() { every(ctx, s.resync, func() { s.resyncAll(ctx) }) })
	wg.Go(func() { every(ctx, s.heartbeat, s.beatAll) })
	wg.Go(func() { s.agents.Run(ctx) })
	wg.Wait()
	// Agents reconnect to another replica, or to this one when it is back.
	s.mu.Lock()
	for _, c := range s.conns {
		c.end(errShutdown)
	}
	s.mu.Unlock()
	return nil
}

// watch calls handle for each event under prefix from now on, resuming from
// the last revision after a break; after a compaction every local stream is
// resynchronised from a fresh listing instead.
func (s *Service) watch(ctx context.Context, prefix string, handle func(context.Context, *clientv3.Event)) {
	rev := int64(0)
	for ctx.Err() == nil {
		if rev == 0 {
			resp, err := s.client.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				s.logger.Warn("cannot read etcd; retrying", "prefix", prefix, "error", err)
				sleep(ctx, time.Second)
				continue
			}
			rev = resp.Header.Revision
			s.resyncAll(ctx)
		}
		for wresp := range s.client.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if wresp.CompactRevision != 0 {
				rev = 0
				break
			}
			if err := wresp.Err(); err != nil {
				s.logger.Debug("watch broke; resuming", "prefix", prefix, "error", err)
				break
			}
			for _, ev := range wresp.Events {
				rev = ev.Kv.ModRevision
				handle(ctx, ev)
			}
		}
		sleep(ctx, 100*time.Millisecond)
	}
}

// every calls fn every d until ctx ends.
func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// beatAll beats every local stream: one ticker for all of them, not one per
// stream.
func (s *Service) beatAll() {
	for _, c := range s.local() {
		c.beat()
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// onAssignment pushes a new assignment to its agent when it is connected here.
func (s *Service) onAssignment(ctx context.Context, ev *clientv3.Event) {
	if ev.Type != clientv3.EventTypePut {
		return
	}
	a, err := store.Unmarshal[*storev1.Assignment](ev.Kv.Value)
	if err != nil {
		s.logger.Warn("bad assignment value", "key", string(ev.Kv.Key), "error", err)
		return
	}
	if c := s.lookup(agents.ID(a.GetAgent())); c != nil {
		c.assign(a.GetRun(), ev.Kv.ModRevision)
	}
}

// onRun pushes Cancel for a run whose cancel was requested, to the agent
// holding it when it is connected here.
func (s *Service) onRun(ctx context.Context, ev *clientv3.Event) {
	if ev.Type != clientv3.EventTypePut {
		return
	}
	run, err := store.Unmarshal[*osvcv1.Run](ev.Kv.Value)
	if err != nil || !run.GetCancelRequested() || !servicing.IsLeased(run.GetState()) {
		return
	}
	if c := s.lookup(agents.ID(run.GetAgent())); c != nil {
		c.cancelRun(run.GetName(), run.GetError())
	}
}

// onDistribution sends a distribution point connected here the Distribute
// of a record made PENDING: a new version for it, or one to try again.
func (s *Service) onDistribution(ctx context.Context, ev *clientv3.Event) {
	if ev.Type == clientv3.EventTypeDelete {
		// distributions/{agent}/{image}: the image is withdrawn from the agent.
		rest := strings.TrimPrefix(string(ev.Kv.Key), s.store.DistributionsPrefix(""))
		agent, image, ok := strings.Cut(rest, "/")
		if c := s.lookup(agent); ok && c != nil {
			c.withdraw(catalog.ImageName(image))
		}
		return
	}
	d, err := store.Unmarshal[*osvcv1.Distribution](ev.Kv.Value)
	if err != nil || d.GetState() != osvcv1.DistributionState_DISTRIBUTION_STATE_PENDING {
		return
	}
	if c := s.lookup(agents.ID(d.GetDistributionPoint())); c != nil {
		c.distribute(distribution.Message(d), true)
	}
}

// onPresence ends a local stream whose presence was deleted (its lease ended)
// or taken over by a newer stream on another replica.
func (s *Service) onPresence(ctx context.Context, ev *clientv3.Event) {
	c := s.lookup(store.IDFromKey(string(ev.Kv.Key)))
	if c == nil || ev.Kv.ModRevision <= c.session.PresenceRevision {
		return
	}
	switch ev.Type {
	case clientv3.EventTypeDelete:
		c.end(errSessionEnded)
	default:
		c.end(errReplaced)
	}
}

// local returns the streams connected here.
func (s *Service) local() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	conns := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

func (s *Service) lookup(id string) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[id]
}

// errAlreadyConnected refuses a second stream of an agent whose stream is
// live: a stolen identity must not take over the stream (and its runs'
// fencing tokens). The agent's own reconnect after its stream died works
// once the server has seen it die.
var errAlreadyConnected = status.Error(codes.AlreadyExists, "this agent already has a live stream to the server; a second one is refused (if the old one died, try again in a moment)")

// claim reserves id's stream slot while its stream opens: refused while
// another stream of id is live or opening. release frees the reservation.
func (s *Service) claim(id string) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.conns[id]; (old != nil && old.ctx.Err() == nil) || s.opening[id] {
		return nil, errAlreadyConnected
	}
	s.opening[id] = true
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.opening, id)
	}, nil
}

// register makes c the stream of its agent on this replica and ends the one it replaces.
func (s *Service) register(c *conn) {
	s.mu.Lock()
	old := s.conns[c.id]
	s.conns[c.id] = c
	s.mu.Unlock()
	if old != nil {
		s.logger.Info("a new stream replaces the agent's older one", "agent", c.name)
		old.end(errReplaced)
	}
}

func (s *Service) unregister(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns[c.id] == c {
		delete(s.conns, c.id)
	}
}

// resyncAll pushes to every local stream what a missed event may have hidden.
func (s *Service) resyncAll(ctx context.Context) {
	if err := s.push(ctx, s.local()); err != nil {
		s.logger.Warn("cannot resynchronise the agents' runs; the next resync tries again", "error", err)
	}
}

// pushAssigned queues for c what push queues.
func (s *Service) pushAssigned(ctx context.Context, c *conn) error {
	return s.push(ctx, []*conn{c})
}

// push queues, for each of conns, an Assign for every run leased to its
// agent that it was not sent yet (nor resumed), and a Cancel for those whose
// cancel was requested: after a missed event (a compacted watch) this is the
// only way either reaches the agent. It reads the assignments once and the
// runs of conns' assignments a hundred per round trip, whatever the number
// of streams.
func (s *Service) push(ctx context.Context, conns []*conn) error {
	if len(conns) == 0 {
		return nil
	}
	byName := make(map[string]*conn, len(conns))
	for _, c := range conns {
		byName[c.name] = c
	}
	resp, err := s.client.Get(ctx, s.store.AssignmentsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list assignments: %w", err)
	}
	var held []*conn
	var runKeys []string
	for _, kv := range resp.Kvs {
		a, err := store.Unmarshal[*storev1.Assignment](kv.Value)
		if err != nil {
			continue
		}
		c := byName[a.GetAgent()]
		id, idErr := servicing.RunID(a.GetRun())
		if c == nil || idErr != nil {
			continue
		}
		c.assign(a.GetRun(), kv.ModRevision)
		held = append(held, c)
		runKeys = append(runKeys, s.store.RunKey(id))
	}
	runs, _, err := store.GetMany[*osvcv1.Run](ctx, s.store, runKeys)
	if err != nil {
		return fmt.Errorf("read the assigned runs: %w", err)
	}
	for i, run := range runs {
		if c := held[i]; run != nil && run.GetCancelRequested() && servicing.IsLeased(run.GetState()) && run.GetAgent() == c.name {
			c.cancelRun(run.GetName(), run.GetError())
		}
	}
	return s.pushDistributions(ctx, byName)
}

// pushDistributions queues, for each stream of byName, the Distribute of
// every record of its agent not finished yet and not sent on the stream: it
// reads every distribution once, whatever the number of streams, or only
// the agent's own for one stream (a connect).
func (s *Service) pushDistributions(ctx context.Context, byName map[string]*conn) error {
	prefix := s.store.DistributionsPrefix("")
	if len(byName) == 1 {
		for _, c := range byName {
			prefix = s.store.DistributionsPrefix(c.id)
		}
	}
	resp, err := s.client.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list distributions: %w", err)
	}
	for _, kv := range resp.Kvs {
		d, err := store.Unmarshal[*osvcv1.Distribution](kv.Value)
		if err != nil {
			continue
		}
		if c, m := byName[d.GetDistributionPoint()], distribution.Message(d); c != nil && m != nil {
			c.distribute(m, false)
		}
	}
	return nil
}

// ListAgents lists the agents the server knows, in name order, with the runs
// each holds now.
func (s *Service) ListAgents(ctx context.Context, pageSize int, token string) ([]*osvcv1.Agent, string, error) {
	return s.agents.List(ctx, pageSize, token)
}

// DeleteAgent removes an agent that is neither connected nor holds a run,
// with within in the same transaction (agents.Registry.Delete).
func (s *Service) DeleteAgent(ctx context.Context, name string, within func(tx *store.Tx) error) error {
	return s.agents.Delete(ctx, name, within)
}
