package metrics

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/store"
)

// runsElectionTTL is how long a dead follower keeps another from taking over.
const runsElectionTTL = 10 * time.Second

// runsPage is how many runs one read of the first listing asks for.
const runsPage = 500

// FollowRuns keeps the run metrics while this replica is the one elected
// to: it counts the runs by state, and records the durations and update
// results of each run that ends. It returns when ctx ends.
func (m *Metrics) FollowRuns(ctx context.Context, st *store.Store, serverID string, logger hclog.Logger) error {
	if m == nil {
		<-ctx.Done()
		return nil
	}
	e := store.Election{Prefix: st.MetricsElectionPrefix(), ID: serverID, TTL: runsElectionTTL, Logger: logger}
	return st.RunElected(ctx, e, func(ctx context.Context) error {
		// Another replica counts once this one no longer leads.
		defer m.runs.Reset()
		return m.follow(ctx, st)
	})
}

// runInfo is what the follower keeps of a run.
type runInfo struct {
	state osvcv1.RunState
	kind  string
}

// follow lists the runs, then follows their changes.
func (m *Metrics) follow(ctx context.Context, st *store.Store) error {
	m.runs.Reset()
	known := map[string]runInfo{}
	prefix := st.RunsPrefix()
	end := clientv3.GetPrefixRangeEnd(prefix)
	from, rev := prefix, int64(0)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(runsPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := st.Client().Get(ctx, from, opts...)
		if err != nil {
			return fmt.Errorf("list the runs: %w", err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			m.put(known, string(kv.Key), kv.Value, false)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	m.tellFollowed()
	for wresp := range st.Client().Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := wresp.Err(); err != nil {
			return fmt.Errorf("watch the runs: %w", err)
		}
		for _, ev := range wresp.Events {
			key := string(ev.Kv.Key)
			if ev.Type == clientv3.EventTypeDelete {
				if old, ok := known[key]; ok {
					m.runs.WithLabelValues(stateLabel(old.state), old.kind).Dec()
					delete(known, key)
				}
				continue
			}
			m.put(known, key, ev.Kv.Value, true)
		}
		m.tellFollowed()
	}
	return ctx.Err()
}

func (m *Metrics) tellFollowed() {
	if m.followed != nil {
		m.followed()
	}
}

// put counts a run as its record now says; when live, a run that ends
// with this change has its durations and update results recorded.
func (m *Metrics) put(known map[string]runInfo, key string, value []byte, live bool) {
	run, err := store.Unmarshal[*osvcv1.Run](value)
	if err != nil {
		return // not a run record (nothing else lives there)
	}
	now := runInfo{state: run.GetState(), kind: kindLabel(run.GetKind())}
	old, seen := known[key]
	// What the run took and gave first, its state last: a scrape that
	// shows the run ended shows its results too.
	if live && ended(now.state) && !(seen && ended(old.state)) {
		m.ended(run, now.kind)
	}
	if seen {
		m.runs.WithLabelValues(stateLabel(old.state), old.kind).Dec()
	}
	m.runs.WithLabelValues(stateLabel(now.state), now.kind).Inc()
	known[key] = now
}

// ended records what a run that just ended took and gave.
func (m *Metrics) ended(run *osvcv1.Run, kind string) {
	start := run.GetStartTime()
	if start == nil {
		start = run.GetCreateTime()
	}
	if start != nil && run.GetEndTime() != nil {
		m.runDuration.WithLabelValues(kind, stateLabel(run.GetState())).Observe(run.GetEndTime().AsTime().Sub(start.AsTime()).Seconds())
	}
	for _, s := range run.GetSteps() {
		if s.GetStartTime() != nil && s.GetEndTime() != nil {
			m.stepDuration.WithLabelValues(strings.TrimPrefix(s.GetStep().String(), "STEP_")).
				Observe(s.GetEndTime().AsTime().Sub(s.GetStartTime().AsTime()).Seconds())
		}
	}
	for _, u := range run.GetUpdateResults() {
		m.updates.WithLabelValues(strings.TrimPrefix(u.GetState().String(), "UPDATE_STATE_")).Inc()
	}
}

func ended(st osvcv1.RunState) bool {
	switch st {
	case osvcv1.RunState_RUN_STATE_SUCCEEDED, osvcv1.RunState_RUN_STATE_FAILED, osvcv1.RunState_RUN_STATE_CANCELED:
		return true
	}
	return false
}

func stateLabel(st osvcv1.RunState) string { return strings.TrimPrefix(st.String(), "RUN_STATE_") }

func kindLabel(k osvcv1.RunKind) string {
	if k == osvcv1.RunKind_RUN_KIND_UNSPECIFIED {
		return "SERVICING"
	}
	return strings.TrimPrefix(k.String(), "RUN_KIND_")
}
