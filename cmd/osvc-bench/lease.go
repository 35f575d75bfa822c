package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/store"
)

// agentLeaseTTL keeps the benchmark agents' etcd leases alive for the whole
// run without keepalives; they are revoked at the end.
const agentLeaseTTL = time.Hour

// benchLease compares leases per second through servicing.Service.LeaseSeen,
// as the scheduler calls it with the runs and agents its pass read, with bare
// etcd transactions of the lease's shape: four compares and two puts of the
// sizes a lease writes (assignment on the agent's etcd lease, run).
// Each of -c workers is an agent of its own site leasing PENDING runs of its
// site's images, one run per image as servicing allows, made beforehand with
// CreateSchedule and read once as a pass reads them. A lease is one
// transaction and no read, so a ratio near 1 means it costs what its etcd
// round trip costs.
//
// It runs twice in the same run: on etcd over mutual TLS (as osvc-server
// runs its embedded etcd, and as a production cluster should be), which is
// the main figure, and on plaintext etcd, an extra figure whose ratio is
// mTLS ÷ plaintext leases/s: what TLS to etcd costs.
func benchLease(ctx context.Context, cfg benchConfig) (*Result, error) {
	plainOsvc, plainFloor, err := leaseOn(ctx, cfg, false)
	if err != nil {
		return nil, fmt.Errorf("on plaintext etcd: %w", err)
	}
	osvcS, floorS, err := leaseOn(ctx, cfg, true)
	if err != nil {
		return nil, fmt.Errorf("on etcd over mutual TLS: %w", err)
	}
	res := &Result{Osvc: osvcS.figure(), Floor: floorS.figure()}
	return res, addPlaintext(res, plainOsvc, plainFloor)
}

// addPlaintext adds the plaintext run's figures to res, each with the
// ratio of its mutual TLS counterpart to it.
func addPlaintext(res *Result, osvc, floor series) error {
	o, f := osvc.figure(), floor.figure()
	if o.Value <= 0 || f.Value <= 0 {
		return fmt.Errorf("the plaintext run measured nothing")
	}
	o.Name += " in plaintext (ratio: over mutual TLS ÷ in plaintext)"
	o.Ratio = res.Osvc.Value / o.Value
	f.Name += " in plaintext (ratio: over mutual TLS ÷ in plaintext)"
	f.Ratio = res.Floor.Value / f.Value
	res.Extra = append(res.Extra, o, f)
	return nil
}

// leaseOn measures leases and their floor on a fresh etcd, over mutual TLS
// when secure.
func leaseOn(ctx context.Context, cfg benchConfig, secure bool) (osvcS, floorS series, err error) {
	e, err := startBenchEtcdTLS(ctx, cfg, secure)
	if err != nil {
		return series{}, series{}, err
	}
	defer e.close()
	libDir, err := os.MkdirTemp("", "osvc-bench-content-*")
	if err != nil {
		return series{}, series{}, fmt.Errorf("content directory: %w", err)
	}
	defer os.RemoveAll(libDir)
	st, svc, err := newServicing(e, libDir, cfg.Logger)
	if err != nil {
		return series{}, series{}, err
	}

	// One agent per worker, present on an etcd lease as agentsvc makes it.
	agents := make([]benchAgent, cfg.Workers)
	for w := range agents {
		a, err := presentAgent(ctx, st, w)
		if err != nil {
			return series{}, series{}, err
		}
		defer e.client.Revoke(context.WithoutCancel(ctx), clientv3.LeaseID(a.session))
		agents[w] = a
	}

	// A run per lease, plus one per worker to warm up and to take the sizes
	// of what a lease writes from.
	totals := workerTotals(cfg.N, cfg.Workers)
	names := make([][]string, cfg.Workers)
	if err := putUpdate(ctx, st); err != nil {
		return series{}, series{}, err
	}
	setupStart := time.Now()
	if _, err := measure(ctx, cfg.Workers, cfg.Workers, func(ctx context.Context, w, _ int) ([]time.Duration, error) {
		for i := range totals[w] + 1 {
			img, err := putImage(ctx, st, fmt.Sprintf("bench-%d-%d", w, i), siteCode(w))
			if err != nil {
				return nil, err
			}
			_, run, err := svc.CreateSchedule(ctx, img.GetName(), &osvcv1.Schedule{Updates: []string{catalog.UpdateName(benchUpdate)}}, false)
			if err != nil {
				return nil, fmt.Errorf("schedule %s: %w", img.GetName(), err)
			}
			names[w] = append(names[w], run.GetName())
		}
		return nil, nil
	}); err != nil {
		return series{}, series{}, fmt.Errorf("set up PENDING runs: %w", err)
	}
	runs, err := seenRuns(ctx, svc, names)
	if err != nil {
		return series{}, series{}, err
	}
	fmt.Fprintf(cfg.Out, "lease: %d PENDING runs on %d sites set up in %s\n", cfg.N+cfg.Workers, cfg.Workers,
		time.Since(setupStart).Round(time.Millisecond))

	// next[w] is worker w's next run; only worker w touches it.
	next := make([]int, cfg.Workers)
	lease := perOp(func(ctx context.Context, w, _ int) error {
		run := runs[w][next[w]]
		next[w]++
		if _, err := svc.LeaseSeen(ctx, run, agents[w].seen); err != nil {
			return fmt.Errorf("lease %s to %s: %w", run.Run.GetName(), agents[w].name, err)
		}
		return nil
	})
	if _, err := measure(ctx, cfg.Workers, cfg.Workers, lease); err != nil {
		return series{}, series{}, fmt.Errorf("warm up: %w", err)
	}
	sizes, err := leaseWriteSizes(ctx, st, names[0][0])
	if err != nil {
		return series{}, series{}, err
	}

	// The floor: each worker's transactions create two fresh keys, guarded
	// by compares that hold, and bind the first to its agent's etcd lease.
	assignValue, runValue := string(make([]byte, sizes[0])), string(make([]byte, sizes[1]))
	floorSeq := make([]int, cfg.Workers)
	floor := perOp(func(ctx context.Context, w, _ int) error {
		key := fmt.Sprintf("%sbench-floor/%d/%d/", st.Prefix(), w, floorSeq[w])
		floorSeq[w]++
		presence := st.PresenceKey(agents[w].id)
		resp, err := e.client.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(key+"run"), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(key+"assignment"), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(presence), "!=", 0),
			clientv3.Compare(clientv3.LeaseValue(presence), "=", agents[w].session),
		).Then(
			clientv3.OpPut(key+"assignment", assignValue, clientv3.WithLease(clientv3.LeaseID(agents[w].session))),
			clientv3.OpPut(key+"run", runValue),
		).Commit()
		if err != nil {
			return fmt.Errorf("floor txn: %w", err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("floor txn on %s: a compare failed", key)
		}
		return nil
	})

	osvcS = series{name: "osvc Service.LeaseSeen", unit: "leases/s"}
	floorS = series{name: fmt.Sprintf("bare etcd Txn (4 compares, puts of %d+%d bytes)", sizes[0], sizes[1]), unit: "txn/s"}
	rounds := roundSizes(cfg.N)
	for r, ops := range rounds {
		l, err := measure(ctx, cfg.Workers, ops, floor)
		if err != nil {
			return series{}, series{}, fmt.Errorf("floor round %d: %w", r+1, err)
		}
		floorS.add(l)
		roundLine(cfg, "lease", r, len(rounds), &floorS, l)
		if l, err = measure(ctx, cfg.Workers, ops, lease); err != nil {
			return series{}, series{}, fmt.Errorf("lease round %d: %w", r+1, err)
		}
		osvcS.add(l)
		roundLine(cfg, "lease", r, len(rounds), &osvcS, l)
	}
	return osvcS, floorS, nil
}

// newServicing builds the servicing service as osvc-server does, on e under
// the default prefix, with its content library in libDir.
func newServicing(e *benchEtcd, libDir string, logger hclog.Logger) (*store.Store, *servicing.Service, error) {
	st, err := store.New(store.Config{Client: e.client, Logger: logger})
	if err != nil {
		return nil, nil, err
	}
	lib, err := content.New(content.Config{Dir: libDir, Store: st, Logger: logger})
	if err != nil {
		return nil, nil, fmt.Errorf("content library: %w", err)
	}
	cat, err := catalog.New(catalog.Config{Store: st, Library: lib, Logger: logger})
	if err != nil {
		return nil, nil, fmt.Errorf("catalog: %w", err)
	}
	svc, err := servicing.New(servicing.Config{Store: st, Catalog: cat, Library: lib, Logger: logger})
	if err != nil {
		return nil, nil, fmt.Errorf("servicing: %w", err)
	}
	return st, svc, nil
}

// benchAgent is an agent present on its session (an etcd lease).
type benchAgent struct {
	id      string // the agent's name without "agents/"
	name    string // agents/{id}, as runs and leases name it
	session int64  // the etcd lease of its session
	// seen is the agent as a scheduling pass reads it.
	seen agents.Connected
}

// seenRuns reads the PENDING runs once, as a scheduling pass does, and
// returns each worker's in the order of names.
func seenRuns(ctx context.Context, svc *servicing.Service, names [][]string) ([][]servicing.ActiveRun, error) {
	active, err := svc.ActiveRuns(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the PENDING runs: %w", err)
	}
	byName := make(map[string]servicing.ActiveRun, len(active))
	for _, ar := range active {
		byName[ar.Run.GetName()] = ar
	}
	out := make([][]servicing.ActiveRun, len(names))
	for w, ns := range names {
		for _, n := range ns {
			ar, ok := byName[n]
			if !ok {
				return nil, fmt.Errorf("run %s is not active after its schedule", n)
			}
			out[w] = append(out[w], ar)
		}
	}
	return out, nil
}

// presentAgent records worker w's agent on its site and its presence on a
// fresh etcd lease, as agentsvc does when an agent connects.
func presentAgent(ctx context.Context, st *store.Store, w int) (benchAgent, error) {
	id := agentID(w)
	a := benchAgent{id: id, name: agents.Name(id)}
	g, err := st.Client().Grant(ctx, int64(agentLeaseTTL/time.Second))
	if err != nil {
		return a, fmt.Errorf("grant the lease of %s: %w", a.name, err)
	}
	a.session = int64(g.ID)
	agent := &osvcv1.Agent{Name: a.name, Site: siteCode(w), Capacity: 1, State: osvcv1.AgentState_AGENT_STATE_CONNECTED}
	if _, err := st.Put(ctx, st.AgentKey(id), agent); err != nil {
		return a, fmt.Errorf("record %s: %w", a.name, err)
	}
	presence, err := st.Marshal(&storev1.AgentPresence{Agent: a.name, SessionLease: a.session, Server: "osvc-bench", ConnectTime: timestamppb.Now()})
	if err != nil {
		return a, err
	}
	resp, err := st.Client().Put(ctx, st.PresenceKey(id), string(presence), clientv3.WithLease(g.ID))
	if err != nil {
		return a, fmt.Errorf("record the presence of %s: %w", a.name, err)
	}
	a.seen = agents.Connected{Agent: agent, Lease: a.session, Presence: presence, PresenceRevision: resp.Header.Revision}
	return a, nil
}

// leaseWriteSizes returns the sizes of the values a lease of run wrote:
// its assignment and the run.
func leaseWriteSizes(ctx context.Context, st *store.Store, run string) ([2]int, error) {
	var sizes [2]int
	id, err := servicing.RunID(run)
	if err != nil {
		return sizes, err
	}
	for i, key := range []string{st.AssignmentKey(id), st.RunKey(id)} {
		resp, err := st.Client().Get(ctx, key)
		if err != nil {
			return sizes, fmt.Errorf("read %s: %w", key, err)
		}
		if len(resp.Kvs) == 0 {
			return sizes, fmt.Errorf("read %s: the lease of %s did not write it", key, run)
		}
		sizes[i] = len(resp.Kvs[0].Value)
	}
	return sizes, nil
}
