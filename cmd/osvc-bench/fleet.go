package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/pki"
)

const (
	// fleetWindowBeats is how many heartbeat intervals the steady state is
	// measured over, after one interval to settle.
	fleetWindowBeats = 3
	// fleetDialers is how many agents connect at once.
	fleetDialers = 64
	// fleetSite is the site of every fleet agent.
	fleetSite = "PS1"
	// clockTicks is the unit of /proc/<pid>/stat's CPU times (USER_HZ).
	clockTicks = 100
)

// benchFleet measures what connected agents cost one osvc-server process,
// next to a bare AgentService server process in the same run (Welcome and
// an Ack for each message, no etcd, the same mutual TLS). For N/10, N/2 and
// N agents, each side starts fresh: its idle RSS is the baseline; the
// agents connect from this process over loopback, each with the certificate
// it enrolled, and heartbeat at -heartbeat (drives included, as osvc-agent
// does), each from a random offset. After one interval to settle, a window
// of three intervals measures the heartbeats' round trip (send to Ack), the
// server's CPU and, for osvc, etcd's revisions (writes) per second; RSS
// per agent above the baseline is read at its end. osvc-server runs on an
// external etcd that this process embeds, so its RSS is its own.
func benchFleet(ctx context.Context, cfg benchConfig) (*Result, error) {
	bin, cleanup, err := serverBinary(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	e, err := startBenchEtcdTLS(ctx, cfg, true)
	if err != nil {
		return nil, err
	}
	defer e.close()
	dataDir, err := os.MkdirTemp("", "osvc-bench-fleet-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dataDir)
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	sides := []*fleetSide{
		{name: "bare", start: func(ctx context.Context) (*serverProc, error) { return startBareAgents(ctx, cfg, self, dataDir) }},
		{name: "osvc", etcd: e, start: func(ctx context.Context) (*serverProc, error) { return startServerProc(ctx, cfg, bin, dataDir, e) }},
	}

	certs, err := enrollFleet(ctx, cfg, sides[1])
	if err != nil {
		return nil, err
	}
	res := &Result{}
	for _, n := range fleetSteps(cfg.N) {
		var got [2]*fleetMeasure
		for i, side := range sides {
			m, err := side.measure(ctx, cfg, certs[:n])
			if err != nil {
				return nil, fmt.Errorf("%d agents on %s: %w", n, side.name, err)
			}
			got[i] = m
		}
		bare, osvc := got[0], got[1]
		fmt.Fprintf(cfg.Out, "agents %d: RSS per agent %.1f KB (bare %.1f); heartbeat p99 %.2f ms (bare %.2f); connect all %.2f s (bare %.2f); CPU %.3f cores (bare %.3f); etcd %.2f writes/s\n",
			n, osvc.perAgentKB(), bare.perAgentKB(), millis(osvc.beatP99()), millis(bare.beatP99()),
			osvc.connect.Seconds(), bare.connect.Seconds(), osvc.cores, bare.cores, osvc.etcdWrites)
		res.Osvc = Figure{Name: fmt.Sprintf("osvc-server RSS per agent at %d agents", n), Unit: "KB", Value: osvc.perAgentKB(), Samples: []float64{osvc.perAgentKB()}}
		res.Floor = Figure{Name: fmt.Sprintf("bare AgentService RSS per agent at %d agents", n), Unit: "KB", Value: bare.perAgentKB(), Samples: []float64{bare.perAgentKB()}}
		res.Extra = append(res.Extra,
			fleetFigure(fmt.Sprintf("heartbeat p99 at %d agents (ratio: ÷ bare)", n), "ms", millis(osvc.beatP99()), millis(bare.beatP99())),
			fleetFigure(fmt.Sprintf("time to connect %d agents (ratio: ÷ bare)", n), "s", osvc.connect.Seconds(), bare.connect.Seconds()),
			fleetFigure(fmt.Sprintf("server CPU at %d agents (ratio: ÷ bare)", n), "cores", osvc.cores, bare.cores),
			Figure{Name: fmt.Sprintf("etcd writes at %d agents", n), Unit: "writes/s", Value: osvc.etcdWrites, Samples: []float64{osvc.etcdWrites}},
		)
		if n != cfg.N {
			res.Extra = append(res.Extra, fleetFigure(fmt.Sprintf("RSS per agent at %d agents (ratio: ÷ bare)", n), "KB", osvc.perAgentKB(), bare.perAgentKB()))
		}
	}
	return res, nil
}

// fleetFigure is an extra figure measured against a bare figure of its own.
func fleetFigure(name, unit string, osvc, bare float64) Figure {
	f := Figure{Name: name, Unit: unit, Value: osvc, Samples: []float64{osvc}}
	if bare > 0 {
		f.Ratio = osvc / bare
	}
	return f
}

// fleetSteps are the fleet sizes measured: N/10, N/2 and N.
func fleetSteps(n int) []int {
	var out []int
	for _, s := range []int{n / 10, n / 2, n} {
		if s >= 1 && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// enrollFleet enrolls N agents on osvc-server, fleetDialers at a time, and
// returns their certificates: both sides trust the same authority.
func enrollFleet(ctx context.Context, cfg benchConfig, osvc *fleetSide) ([]tls.Certificate, error) {
	p, err := osvc.start(ctx)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	conn, err := p.target.dial()
	if err != nil {
		return nil, err
	}
	err = createSite(ctx, conn, fleetSite)
	conn.Close()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	certs := make([]tls.Certificate, cfg.N)
	err = forEach(ctx, cfg.N, func(ctx context.Context, i int) error {
		cert, err := p.target.enroll(ctx, fleetName(i), fleetSite)
		certs[i] = cert
		return err
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Out, "agents: %d agents enrolled in %s\n", cfg.N, time.Since(start).Round(time.Millisecond))
	return certs, nil
}

func fleetName(i int) string { return fmt.Sprintf("fleet-%05d", i) }

// forEach calls fn for 0..n-1, fleetDialers at a time, and returns the
// first error.
func forEach(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(fleetDialers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// fleetSide is one side of the comparison: how to start its server, and
// the etcd it writes to (osvc only).
type fleetSide struct {
	name  string
	start func(ctx context.Context) (*serverProc, error)
	etcd  *benchEtcd
}

// fleetMeasure is one side's figures with n agents.
type fleetMeasure struct {
	n             int
	baseKB, rssKB int64
	connect       time.Duration
	cores         float64
	etcdWrites    float64
	beats         []time.Duration
}

func (m *fleetMeasure) perAgentKB() float64 { return float64(m.rssKB-m.baseKB) / float64(m.n) }

func (m *fleetMeasure) beatP99() time.Duration { return percentile(m.beats, 0.99) }

// measure starts the side's server fresh, reads its idle RSS, connects the
// agents of certs and measures the steady state.
func (side *fleetSide) measure(ctx context.Context, cfg benchConfig, certs []tls.Certificate) (*fleetMeasure, error) {
	p, err := side.start(ctx)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	m := &fleetMeasure{n: len(certs)}
	if err := sleepCtx(ctx, idleSettle); err != nil {
		return nil, err
	}
	if m.baseKB, err = procStatusKB(p.pid(), "VmRSS"); err != nil {
		return nil, err
	}

	rec := &rttRecorder{}
	agents := make([]*fleetAgent, len(certs))
	runCtx, stopAgents := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopAgents()
		wg.Wait()
		for _, a := range agents {
			if a != nil {
				a.conn.Close()
			}
		}
	}()
	start := time.Now()
	err = forEach(ctx, len(certs), func(ctx context.Context, i int) error {
		a, err := connectFleetAgent(ctx, runCtx, p.target, certs[i], fleetName(i))
		agents[i] = a
		return err
	})
	if err != nil {
		return nil, err
	}
	m.connect = time.Since(start)
	for _, a := range agents {
		wg.Go(func() { a.heartbeat(runCtx, cfg.Heartbeat, rec) })
	}
	// One interval for every agent to have beaten once, then the window.
	if err := sleepCtx(ctx, cfg.Heartbeat); err != nil {
		return nil, err
	}
	rev0, err := side.revision(ctx)
	if err != nil {
		return nil, err
	}
	cpu0, err := procCPU(p.pid())
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	rec.on.Store(true)
	if err := sleepCtx(ctx, fleetWindowBeats*cfg.Heartbeat); err != nil {
		return nil, err
	}
	rec.on.Store(false)
	elapsed := time.Since(t0)
	cpu1, err := procCPU(p.pid())
	if err != nil {
		return nil, err
	}
	rev1, err := side.revision(ctx)
	if err != nil {
		return nil, err
	}
	if m.rssKB, err = procStatusKB(p.pid(), "VmRSS"); err != nil {
		return nil, err
	}
	if p.pprof != "" && cfg.ServerHeap != "" {
		if err := saveHeap(ctx, p.pprof, fmt.Sprintf("%s.%d", cfg.ServerHeap, len(certs))); err != nil {
			return nil, err
		}
	}
	for _, a := range agents {
		if err := a.failed(); err != nil {
			return nil, fmt.Errorf("agent stream ended during the window: %w", err)
		}
	}
	m.cores = (cpu1 - cpu0).Seconds() / elapsed.Seconds()
	m.etcdWrites = float64(rev1-rev0) / elapsed.Seconds()
	m.beats = rec.take()
	if len(m.beats) < len(certs) {
		return nil, fmt.Errorf("only %d heartbeats of %d agents answered in %s", len(m.beats), len(certs), elapsed.Round(time.Millisecond))
	}
	return m, nil
}

// revision is the etcd revision the side writes to now; 0 for the bare side.
func (side *fleetSide) revision(ctx context.Context) (int64, error) {
	if side.etcd == nil {
		return 0, nil
	}
	resp, err := side.etcd.client.Get(ctx, "osvc-bench-revision")
	if err != nil {
		return 0, fmt.Errorf("etcd revision: %w", err)
	}
	return resp.Header.Revision, nil
}

// rttRecorder collects heartbeat round trips while on.
type rttRecorder struct {
	on   atomic.Bool
	mu   sync.Mutex
	rtts []time.Duration
}

func (r *rttRecorder) add(d time.Duration) {
	if !r.on.Load() {
		return
	}
	r.mu.Lock()
	r.rtts = append(r.rtts, d)
	r.mu.Unlock()
}

func (r *rttRecorder) take() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rtts
}

// fleetAgent is one connected agent: it heartbeats and times the Acks.
type fleetAgent struct {
	conn   *grpc.ClientConn
	stream osvcv1.AgentService_ConnectClient
	mu     sync.Mutex
	sent   map[uint64]time.Time
	err    error
}

// connectFleetAgent connects agent name with cert under ctx; its stream
// lives until parent ends.
func connectFleetAgent(ctx, parent context.Context, t target, cert tls.Certificate, name string) (*fleetAgent, error) {
	conn, err := t.dialCert(cert)
	if err != nil {
		return nil, err
	}
	a := &fleetAgent{conn: conn, sent: map[uint64]time.Time{}}
	stream, err := osvcv1.NewAgentServiceClient(conn).Connect(parent)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect %s: %w", name, err)
	}
	a.stream = stream
	if err := stream.Send(&osvcv1.ConnectRequest{Id: 1, Message: &osvcv1.ConnectRequest_Hello{Hello: &osvcv1.Hello{
		Name: name, Site: fleetSite, Host: name + ".bench", Version: "osvc-bench", Engines: []string{"wimlib"},
		Drives: fleetDrives(), Capacity: 1,
	}}}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("hello of %s: %w", name, err)
	}
	welcome := make(chan error, 1)
	go func() {
		m, err := stream.Recv()
		if err == nil && m.GetWelcome() == nil {
			err = fmt.Errorf("first message %T, want Welcome", m.GetMessage())
		}
		welcome <- err
	}()
	select {
	case err := <-welcome:
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("welcome of %s: %w", name, err)
		}
	case <-ctx.Done():
		conn.Close()
		return nil, ctx.Err()
	}
	return a, nil
}

// fleetDrives are the drives every fleet agent reports: the same each
// beat, as a site server's drives between runs.
func fleetDrives() []*osvcv1.Drive {
	return []*osvcv1.Drive{{Path: "/srv/osvc", FreeBytes: 400 << 30, TotalBytes: 500 << 30}}
}

// heartbeat sends a Heartbeat every interval from a random offset and
// records the round trip of each Ack, until ctx ends.
func (a *fleetAgent) heartbeat(ctx context.Context, interval time.Duration, rec *rttRecorder) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := a.stream.Recv()
			if err != nil {
				if ctx.Err() == nil {
					a.fail(err)
				}
				return
			}
			if ack := m.GetAck(); ack != nil {
				a.mu.Lock()
				at, ok := a.sent[ack.GetId()]
				delete(a.sent, ack.GetId())
				a.mu.Unlock()
				if ok {
					rec.add(time.Since(at))
				}
			}
		}
	}()
	defer func() { <-done }()
	if sleepCtx(ctx, rand.N(interval)) != nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for id := uint64(2); ; id++ {
		a.mu.Lock()
		a.sent[id] = time.Now()
		a.mu.Unlock()
		if err := a.stream.Send(&osvcv1.ConnectRequest{Id: id, Message: &osvcv1.ConnectRequest_Heartbeat{Heartbeat: &osvcv1.Heartbeat{Drives: fleetDrives()}}}); err != nil {
			if ctx.Err() == nil {
				a.fail(err)
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *fleetAgent) fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err == nil {
		a.err = err
	}
}

func (a *fleetAgent) failed() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// serverProc is a server under test running as a process.
type serverProc struct {
	cmd    *exec.Cmd
	exited chan error
	target target
	// pprof is the address of its Go profiles, when it serves them.
	pprof string
}

func (p *serverProc) pid() int { return p.cmd.Process.Pid }

func (p *serverProc) stop() { stopServer(p.cmd, p.exited) }

// startProc starts cmd and waits until t serves.
func startProc(ctx context.Context, cmd *exec.Cmd, t target) (*serverProc, error) {
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &serverProc{cmd: cmd, exited: make(chan error, 1), target: t}
	go func() { p.exited <- cmd.Wait() }()
	startCtx, cancel := context.WithTimeout(ctx, startupTimeout)
	defer cancel()
	if err := waitServing(startCtx, target{addr: t.addr, caFile: t.caFile}); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// startServerProc starts osvc-server on e with dataDir, as deployed with
// an external etcd.
func startServerProc(ctx context.Context, cfg benchConfig, bin, dataDir string, e *benchEtcd) (*serverProc, error) {
	addr, err := loopbackAddr()
	if err != nil {
		return nil, err
	}
	args := []string{"--data-dir", dataDir, "--listen", addr, "--log-level", cfg.LogLevel,
		"--etcd-endpoints", strings.Join(e.etcd.Endpoints(), ","),
		"--etcd-ca-file", e.tls.TrustedCAFile, "--etcd-cert-file", e.tls.CertFile, "--etcd-key-file", e.tls.KeyFile,
		"--heartbeat-interval", cfg.Heartbeat.String()}
	pprofAddr := ""
	if cfg.ServerHeap != "" {
		if pprofAddr, err = loopbackAddr(); err != nil {
			return nil, err
		}
		args = append(args, "--pprof-listen", pprofAddr)
	}
	p, err := startProc(ctx, exec.Command(bin, args...), target{addr: addr, caFile: filepath.Join(dataDir, "pki", pki.CACertFile), tokenFile: filepath.Join(dataDir, "admin.token")})
	if err != nil {
		return nil, err
	}
	p.pprof = pprofAddr
	return p, nil
}

// startBareAgents starts this program again as the bare AgentService
// server, with a certificate of the authority in dataDir/pki.
func startBareAgents(ctx context.Context, cfg benchConfig, self, dataDir string) (*serverProc, error) {
	addr, err := loopbackAddr()
	if err != nil {
		return nil, err
	}
	pkiDir := filepath.Join(dataDir, "pki")
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), bareAgentsListenEnv+"="+addr, bareAgentsPKIEnv+"="+pkiDir, bareAgentsHeartbeatEnv+"="+cfg.Heartbeat.String())
	return startProc(ctx, cmd, target{addr: addr, caFile: filepath.Join(pkiDir, pki.CACertFile)})
}

// saveHeap writes the heap profile the server at pprofAddr serves to file.
func saveHeap(ctx context.Context, pprofAddr, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+pprofAddr+"/debug/pprof/heap", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("heap profile: %s", resp.Status)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	return os.WriteFile(file, data, 0o644)
}

// serverBinary returns the osvc-server binary to run: -server-bin, or one
// built from this module into a temporary folder that cleanup removes.
func serverBinary(ctx context.Context, cfg benchConfig) (bin string, cleanup func(), err error) {
	if cfg.ServerBin != "" {
		return cfg.ServerBin, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "osvc-bench-bin-*")
	if err != nil {
		return "", nil, fmt.Errorf("binary directory: %w", err)
	}
	bin = filepath.Join(dir, "osvc-server")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/osvc/osvc/cmd/osvc-server")
	if out, err := build.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("build osvc-server (give a built one with -server-bin): %w\n%s", err, out)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// procCPU is the CPU time (user and system) process pid used so far.
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read the server's CPU time: %w", err)
	}
	// Fields after the command name, which ends with the last ')'.
	i := strings.LastIndexByte(string(data), ')')
	fields := strings.Fields(string(data[i+1:]))
	if i < 0 || len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	var ticks int64
	for _, f := range fields[11:13] { // utime, stime
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
