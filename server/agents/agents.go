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
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
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
	now      func() time.Time
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
		now:      cfg.Now,
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
	}
	rev, err := r.store.Txn(ctx, "connect "+s.Agent, func(tx *store.Tx) error {
		if _, err := sites.Require(tx, hello.GetSite()); err != nil {
			return err
		}
		tx.PutRaw(r.store.PresenceKey(s.ID), presence, clientv3.WithLease(s.Lease))
		return tx.Put(r.store.AgentKey(s.ID), agent)
	})
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", s.Agent, err)
	}
	s.presence, s.PresenceRevision = presence, rev
	return s, nil
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
// the agent was last heard from.
func (r *Registry) Close(ctx context.Context, s *Session, lastSeen time.Time) error {
	presenceKey := r.store.PresenceKey(s.ID)
	_, err := r.store.Txn(ctx, "disconnect "+s.Agent, func(tx *store.Tx) error {
		if p, _, err := tx.Raw(presenceKey); err != nil || string(p) != string(s.presence) {
			return err // replaced, or the lease already ended
		}
		agent, err := store.Load[*osvcv1.Agent](tx, r.store.AgentKey(s.ID))
		if err != nil {
			return err
		}
		agent.State = osvcv1.AgentState_AGENT_STATE_DISCONNECTED
		agent.LastSeenTime = timestamppb.New(lastSeen)
		return tx.Put(r.store.AgentKey(s.ID), agent)
	})
	return err
}

// Heartbeat records when the agent was last heard from and the drives it reported.
func (r *Registry) Heartbeat(ctx context.Context, s *Session, seen time.Time, drives []*osvcv1.Drive) error {
	_, _, err := store.Update(ctx, r.store, r.store.AgentKey(s.ID), func(a *osvcv1.Agent) error {
		a.LastSeenTime = timestamppb.New(seen)
		a.Drives = drives
		return nil
	})
	return err
}

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
	presence := map[string]*storev1.AgentPresence{}
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		p, err := store.Unmarshal[*storev1.AgentPresence](kv.Value)
		if err != nil {
			return nil, err
		}
		presence[store.IDFromKey(string(kv.Key))] = p
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
			out = append(out, Connected{Agent: agent, Lease: p.GetSessionLease()})
		}
	}
	return out, nil
}
