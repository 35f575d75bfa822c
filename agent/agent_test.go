package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/osvc/osvc/agent/engine"
	"github.com/osvc/osvc/agent/engine/wimlib"
	"github.com/osvc/osvc/agent/identity"
	"github.com/osvc/osvc/agent/pipeline"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/names"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/store/storetest"
)

// fakeServer speaks the server side of the agent protocol: Welcome to each
// Hello (resume or discard as the test says), an Ack to each report with the
// code ack picks, every message recorded. Its ContentService never finishes a
// download, so an assigned run stays in its COPY step until stopped.
type fakeServer struct {
	osvcv1.UnimplementedAgentServiceServer
	osvcv1.UnimplementedContentServiceServer

	mu      sync.Mutex
	ack     func(r *osvcv1.ConnectRequest) error
	discard []string

	streams chan *fakeStream
	reqs    chan *osvcv1.ConnectRequest
}

type fakeStream struct {
	hello *osvcv1.Hello
	out   chan *osvcv1.ConnectResponse
	end   chan error
}

func (s *fakeServer) setAck(f func(r *osvcv1.ConnectRequest) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ack = f
}

func (s *fakeServer) ackOf(r *osvcv1.ConnectRequest) *osvcv1.Ack {
	s.mu.Lock()
	defer s.mu.Unlock()
	ack := &osvcv1.Ack{Id: r.GetId()}
	if s.ack == nil {
		return ack
	}
	if err := s.ack(r); err != nil {
		ack.Code, ack.Reason, ack.Message = int32(errdefs.Code(err)), errdefs.Reason(err), err.Error()
	}
	return ack
}

func (s *fakeServer) Connect(stream grpc.BidiStreamingServer[osvcv1.ConnectRequest, osvcv1.ConnectResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHello()
	if h.GetName() == "" || h.GetSite() == "" {
		return status.Error(codes.InvalidArgument, "hello: name and site are required")
	}
	w := &osvcv1.Welcome{Agent: "agents/" + h.GetName(), HeartbeatInterval: durationpb.New(time.Hour)}
	s.mu.Lock()
	for _, held := range h.GetHeldRuns() {
		discard := false
		for _, d := range s.discard {
			discard = discard || d == held.GetRun()
		}
		if discard {
			w.DiscardRuns = append(w.DiscardRuns, held.GetRun())
		} else {
			w.ResumeRuns = append(w.ResumeRuns, held.GetRun())
		}
	}
	s.mu.Unlock()
	if err := stream.Send(&osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Welcome{Welcome: w}}); err != nil {
		return err
	}
	fs := &fakeStream{hello: h, out: make(chan *osvcv1.ConnectResponse, 64), end: make(chan error, 1)}
	s.streams <- fs
	ctx := stream.Context()
	recvErr := make(chan error, 1)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			s.reqs <- r
			if r.GetHeartbeat() != nil {
				continue
			}
			select {
			case fs.out <- &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Ack{Ack: s.ackOf(r)}}:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case m := <-fs.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case err := <-fs.end:
			return err
		case err := <-recvErr:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Read never finishes: the run stays in its COPY step until it is stopped.
func (s *fakeServer) Read(_ *osvcv1.ReadRequest, stream grpc.ServerStreamingServer[osvcv1.ReadResponse]) error {
	<-stream.Context().Done()
	return stream.Context().Err()
}

type harness struct {
	srv   *fakeServer
	agent *Agent
	drive string
	stop  func()
}

func start(t *testing.T) *harness { return startSetup(t, setup{}) }

// startWith runs an agent against the fake server; content, when set, serves
// ContentService instead of the fake's never-ending reads.
func startWith(t *testing.T, content osvcv1.ContentServiceServer) *harness {
	t.Helper()
	return startSetup(t, setup{content: content})
}

// setup changes how startSetup starts the agent.
type setup struct {
	// content, when set, serves ContentService.
	content osvcv1.ContentServiceServer
	// drive, when set, is the agent's drive instead of a new empty folder.
	drive string
	// followSite starts the agent without a drive of its own: its runs
	// work on their site's drive.
	followSite bool
	// before, when set, changes the agent between New and Run.
	before func(a *Agent)
}

func startSetup(t *testing.T, su setup) *harness {
	t.Helper()
	content := su.content
	srv := &fakeServer{streams: make(chan *fakeStream, 16), reqs: make(chan *osvcv1.ConnectRequest, 10000)}
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(transfer.ServerOptions()...)
	osvcv1.RegisterAgentServiceServer(gs, srv)
	if content == nil {
		content = srv
	}
	osvcv1.RegisterContentServiceServer(gs, content)
	var wg sync.WaitGroup
	wg.Go(func() { _ = gs.Serve(lis) })
	t.Cleanup(func() { gs.Stop(); wg.Wait() })

	eng, err := wimlib.New(wimlib.Config{})
	if err != nil {
		t.Fatal(err)
	}
	drive := su.drive
	if drive == "" && !su.followSite {
		drive = t.TempDir()
	}
	a, err := New(Config{
		Server:         "passthrough:///bufnet",
		Site:           "PS1",
		Name:           "agent-1",
		Drive:          drive,
		DataDir:        t.TempDir(),
		Engine:         eng,
		NewEngine:      func(l hclog.Logger, _ string) (engine.Engine, error) { return wimlib.New(wimlib.Config{Logger: l}) },
		Logger:         hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}),
		Version:        "test",
		InitialBackoff: 10 * time.Millisecond,
		MaxBackoff:     50 * time.Millisecond,
		// An in-memory listener: plaintext, whatever TLS would say.
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return lis.DialContext(ctx)
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	if su.before != nil {
		su.before(a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	h := &harness{srv: srv, agent: a, drive: a.Drive()}
	h.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent Run: %v", err)
			}
		})
	}
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stream(t *testing.T) *fakeStream {
	t.Helper()
	select {
	case fs := <-h.srv.streams:
		return fs
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not connect")
		return nil
	}
}

// waitFor returns the first recorded report matching ok, failing the test
// after a deadline.
func (h *harness) waitFor(t *testing.T, what string, ok func(*osvcv1.ConnectRequest) bool) *osvcv1.ConnectRequest {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case r := <-h.srv.reqs:
			if ok(r) {
				return r
			}
		case <-deadline:
			t.Fatalf("the server never got %s", what)
			return nil
		}
	}
}

// waitReleased polls (with a deadline) until the agent holds no run.
func (h *harness) waitReleased(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(h.agent.heldRuns()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the agent still holds %v", h.agent.heldRuns())
		}
		runtime.Gosched() // the deadline bounds the poll
	}
}

func assign(run string, token int64) *osvcv1.ConnectResponse {
	return &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Assign{Assign: &osvcv1.Assign{
		Run:    &osvcv1.Run{Name: run, Image: "images/win11", FencingToken: token},
		Image:  &osvcv1.Image{Name: "images/win11"},
		Source: &osvcv1.ImageVersion{Version: 1, Sha256: strings.Repeat("ab", 32), SizeBytes: 1 << 20},
	}}}
}

func isStep(step osvcv1.Step, state osvcv1.StepState) func(*osvcv1.ConnectRequest) bool {
	return func(r *osvcv1.ConnectRequest) bool {
		s := r.GetStepChanged().GetStep()
		return s.GetStep() == step && s.GetState() == state
	}
}

func isResult(r *osvcv1.ConnectRequest) bool { return r.GetRunResult() != nil }

func TestACanceledRunIsDiscardedAndReportedCanceled(t *testing.T) {
	t.Parallel()
	h := start(t)
	fs := h.stream(t)
	fs.out <- assign("runs/r1", 5)
	first := h.waitFor(t, "the DRIVE step", func(r *osvcv1.ConnectRequest) bool { return r.GetStepChanged() != nil })
	if s := first.GetStepChanged(); s.GetStep().GetStep() != osvcv1.Step_STEP_DRIVE || s.GetStep().GetState() != osvcv1.StepState_STEP_STATE_RUNNING || s.GetFencingToken() != 5 {
		t.Fatalf("first report = %v, want DRIVE running with token 5", s)
	}
	h.waitFor(t, "the COPY step", isStep(osvcv1.Step_STEP_COPY, osvcv1.StepState_STEP_STATE_RUNNING))
	fs.out <- &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Cancel{Cancel: &osvcv1.Cancel{Run: "runs/r1", FencingToken: 5, Reason: "canceled by admin"}}}
	res := h.waitFor(t, "the run result", isResult).GetRunResult()
	if res.GetState() != osvcv1.RunState_RUN_STATE_CANCELED || res.GetRun() != "runs/r1" || res.GetFencingToken() != 5 {
		t.Fatalf("result = %v, want CANCELED for runs/r1 token 5", res)
	}
	h.waitReleased(t)
	// The copy is gone, the run log stays.
	work := filepath.Join(h.drive, "OfflineImageServicing", "r1")
	entries, err := os.ReadDir(work)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "OfflineServicingMgr.log" {
			t.Errorf("work folder still holds %s", e.Name())
		}
	}
}

func TestAnAbortedReportStopsTheRunWithoutFurtherReports(t *testing.T) {
	t.Parallel()
	h := start(t)
	h.srv.setAck(func(r *osvcv1.ConnectRequest) error {
		if r.GetStepChanged() != nil {
			return errdefs.ErrStaleLease
		}
		return nil
	})
	fs := h.stream(t)
	fs.out <- assign("runs/r1", 5)
	h.waitFor(t, "the DRIVE step", isStep(osvcv1.Step_STEP_DRIVE, osvcv1.StepState_STEP_STATE_RUNNING))
	h.waitReleased(t)
	// Every report the run made was sent (and acked) before it was released.
	for {
		select {
		case r := <-h.srv.reqs:
			if r.GetStepChanged() != nil || r.GetRunResult() != nil || r.GetProgress() != nil || r.GetUpdateResult() != nil {
				t.Fatalf("report after the ABORTED ack: %v", r)
			}
			continue
		default:
		}
		break
	}
}

func TestTheAgentReconnectsAndListsItsHeldRun(t *testing.T) {
	t.Parallel()
	h := start(t)
	fs := h.stream(t)
	if len(fs.hello.GetHeldRuns()) != 0 || fs.hello.GetSite() != "PS1" || len(fs.hello.GetDrives()) != 1 {
		t.Fatalf("first hello = %v, want site PS1, one drive, no held runs", fs.hello)
	}
	if d := fs.hello.GetDrives()[0]; d.GetPath() != h.drive || d.GetTotalBytes() <= 0 {
		t.Errorf("drive = %v, want %s with its sizes", d, h.drive)
	}
	fs.out <- assign("runs/r1", 5)
	h.waitFor(t, "the COPY step", isStep(osvcv1.Step_STEP_COPY, osvcv1.StepState_STEP_STATE_RUNNING))
	fs.end <- status.Error(codes.Unavailable, "stream dropped")
	again := h.stream(t)
	held := again.hello.GetHeldRuns()
	if len(held) != 1 || held[0].GetRun() != "runs/r1" || held[0].GetFencingToken() != 5 {
		t.Fatalf("hello after reconnect holds %v, want runs/r1 token 5", held)
	}
	// Resumed: the run goes on and still answers a cancel on the new stream.
	again.out <- &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Cancel{Cancel: &osvcv1.Cancel{Run: "runs/r1", FencingToken: 5}}}
	if res := h.waitFor(t, "the run result", isResult).GetRunResult(); res.GetState() != osvcv1.RunState_RUN_STATE_CANCELED {
		t.Fatalf("result = %v, want CANCELED", res)
	}
}

func TestARunTheServerDiscardsOnReconnectEndsWithoutAResult(t *testing.T) {
	t.Parallel()
	h := start(t)
	h.srv.mu.Lock()
	h.srv.discard = []string{"runs/r1"}
	h.srv.mu.Unlock()
	fs := h.stream(t)
	fs.out <- assign("runs/r1", 5)
	h.waitFor(t, "the COPY step", isStep(osvcv1.Step_STEP_COPY, osvcv1.StepState_STEP_STATE_RUNNING))
	fs.end <- status.Error(codes.Unavailable, "lease expired")
	h.stream(t)
	h.waitReleased(t)
	for {
		select {
		case r := <-h.srv.reqs:
			if r.GetRunResult() != nil {
				t.Fatalf("a discarded run reported %v", r.GetRunResult())
			}
			continue
		default:
		}
		break
	}
}

func TestShutdownDiscardsRunningRunsWithoutReportingThem(t *testing.T) {
	t.Parallel()
	h := start(t)
	fs := h.stream(t)
	fs.out <- assign("runs/r1", 5)
	h.waitFor(t, "the COPY step", isStep(osvcv1.Step_STEP_COPY, osvcv1.StepState_STEP_STATE_RUNNING))
	h.stop()
	if held := h.agent.heldRuns(); len(held) != 0 {
		t.Errorf("after Run returned the agent holds %v", held)
	}
	for {
		select {
		case r := <-h.srv.reqs:
			if r.GetRunResult() != nil {
				t.Fatalf("shutdown reported %v; the server should re-queue the run instead", r.GetRunResult())
			}
			continue
		default:
		}
		break
	}
}

func TestTheAgentWorksOnItsDriveOrSaysWhyItWorksOnTheAutomaticOne(t *testing.T) {
	t.Parallel()
	eng, err := wimlib.New(wimlib.Config{})
	if err != nil {
		t.Fatal(err)
	}
	existing := t.TempDir()
	tests := []struct {
		name  string
		drive string
		// automatic: the data folder is the drive; warned: the agent's log says why.
		automatic, warned bool
	}{
		{"an existing folder is the drive", existing, false, false},
		{"Automatic is the data folder, silently", "Automatic", true, false},
		{"a folder this server lacks is the data folder, with a warning", filepath.Join(existing, "no-such-drive"), true, true},
		{"a Windows drive on Linux is the data folder, with a warning", "D:", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dataDir := t.TempDir()
			var logs bytes.Buffer // New logs before it returns, from this goroutine
			a, err := New(Config{Server: "localhost:7300", Site: "PS1", Engine: eng, DataDir: dataDir, Drive: tt.drive,
				Logger: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})})
			if err != nil {
				t.Fatal(err)
			}
			want := existing
			if tt.automatic {
				want = dataDir
			}
			if a.Drive() != want {
				t.Errorf("drive %q = %q, want %q", tt.drive, a.Drive(), want)
			}
			warned := strings.Contains(logs.String(), "[WARN]  agent: the offline servicing drive is not on this server: runs work on the Automatic drive")
			if warned != tt.warned || (warned && !strings.Contains(logs.String(), "setting="+tt.drive)) {
				t.Errorf("warned %t naming the setting, want %t; the agent's log:\n%s", warned, tt.warned, logs.String())
			}
		})
	}
}

func TestARunOnTheAutomaticDriveInPlaceOfAMissingOneSaysSoInItsLog(t *testing.T) {
	t.Parallel()
	h := startSetup(t, setup{drive: filepath.Join(t.TempDir(), "no-such-drive")})
	const warning = "this run works on the Automatic drive"
	fs := h.stream(t)
	fs.out <- assign("runs/r1", 5)
	// Log lines linger a moment before they go: the warning may come after
	// the next step's report.
	warned, copying, isCopy := false, false, isStep(osvcv1.Step_STEP_COPY, osvcv1.StepState_STEP_STATE_RUNNING)
	h.waitFor(t, "the run's warning and the COPY step", func(r *osvcv1.ConnectRequest) bool {
		for _, l := range r.GetLogBatch().GetLines() {
			if strings.Contains(l.GetMessage(), warning) && strings.Contains(l.GetMessage(), "no-such-drive") && l.GetLevel() == "WARN" {
				warned = true
			}
		}
		copying = copying || isCopy(r)
		return warned && copying
	})
	h.stop()
	data, err := os.ReadFile(filepath.Join(h.agent.cfg.DataDir, pipeline.WorkFolder, "r1", pipeline.LogFile))
	if err != nil {
		t.Fatalf("the run log is not in the work folder on the data folder's drive: %v", err)
	}
	if !strings.Contains(string(data), warning) {
		t.Errorf("the run log does not say the run works on the Automatic drive:\n%s", data)
	}
}

func TestNewRefusesAnIncompleteConfig(t *testing.T) {
	t.Parallel()
	eng, err := wimlib.New(wimlib.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ok := Config{Server: "localhost:7300", Site: "PS1", Engine: eng, DataDir: t.TempDir()}
	tests := []struct {
		name   string
		change func(*Config)
	}{
		{"without a server", func(c *Config) { c.Server = "" }},
		{"with a site that is not a site code", func(c *Config) { c.Site = "ps 1" }},
		{"with a damaged identity file", func(c *Config) { c.DataDir = identityDir(t, []byte("not PEM"), 0o600) }},
		{"with an identity file others may read", func(c *Config) { c.DataDir = identityDir(t, nil, 0o644) }},
		{"without an engine", func(c *Config) { c.Engine = nil }},
		{"without a data folder", func(c *Config) { c.DataDir = "" }},
		{"with a negative capacity", func(c *Config) { c.Capacity = -1 }},
		{"with a name the server would refuse", func(c *Config) { c.Name = "PS1 Agent" }},
		{"with a distribution point address that is no URL", func(c *Config) { c.Distribution.URL = "dp1.example:8090" }},
		{"with a distribution point address of another scheme", func(c *Config) { c.Distribution.URL = "ftp://dp1.example/" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := ok
			tt.change(&cfg)
			if _, err := New(cfg); err == nil {
				t.Error("New succeeded, want an error")
			}
		})
	}
}

// identityDir is a data folder whose identity file holds data with perm.
func identityDir(t *testing.T, data []byte, perm os.FileMode) string {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "identity"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "identity", identity.File), data, perm); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	os.Exit(code)
}

func TestAnAssignedRunIsServicedAndReportedOverTheStream(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir(), PayloadBytes: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	lib, err := content.New(content.Config{Dir: t.TempDir(), Store: storetest.New(t), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	put := func(path string) *osvcv1.Content {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		c, _, err := lib.Write(ctx, content.WriteHeader{}, f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	wim := put(sample.WIM)
	asg := &osvcv1.Assign{
		Run:    &osvcv1.Run{Name: "runs/r1", Image: "images/win11", FencingToken: 9},
		Image:  &osvcv1.Image{Name: "images/win11"},
		Source: &osvcv1.ImageVersion{Version: 1, Sha256: wim.GetSha256(), SizeBytes: wim.GetSizeBytes()},
	}
	for _, u := range sample.Updates {
		c := put(u.File)
		asg.Updates = append(asg.Updates, &osvcv1.Update{Name: "updates/" + strings.ToLower(u.KB), Kb: u.KB,
			Files: []*osvcv1.UpdateFile{{FileName: filepath.Base(u.File), Sha256: c.GetSha256(), SizeBytes: c.GetSizeBytes()}}})
	}

	h := startWith(t, api.NewContentServer(lib, hclog.NewNullLogger()))
	fs := h.stream(t)
	fs.out <- &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Assign{Assign: asg}}

	var results []*osvcv1.UpdateResult
	var logSeqs []int64
	var res *osvcv1.RunResult
	deadline := time.After(60 * time.Second)
	for res == nil {
		select {
		case r := <-h.srv.reqs:
			if tok := reportToken(r); tok != 0 && tok != 9 {
				t.Fatalf("report with fencing token %d, want 9: %v", tok, r)
			}
			if u := r.GetUpdateResult(); u != nil {
				results = append(results, u.GetResult())
			}
			for _, l := range r.GetLogBatch().GetLines() {
				logSeqs = append(logSeqs, l.GetSequence())
			}
			res = r.GetRunResult()
		case <-deadline:
			t.Fatal("no run result")
		}
	}
	if res.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || res.GetResultSha256() == "" {
		t.Fatalf("result = %v, want SUCCEEDED with the result's sha256", res)
	}
	if _, err := lib.Stat(ctx, res.GetResultSha256()); err != nil {
		t.Errorf("the result is not in the content library: %v", err)
	}
	if len(results) != len(sample.Updates) {
		t.Errorf("%d update results, want %d", len(results), len(sample.Updates))
	}
	for i, u := range sample.Updates {
		if i < len(results) && results[i].GetState() != u.Want {
			t.Errorf("%s = %s, want %s", u.KB, results[i].GetState(), u.Want)
		}
	}
	// Every log line logged before the result reached the server first, in order from 1.
	if len(logSeqs) == 0 {
		t.Fatal("no log lines before the result")
	}
	for i, seq := range logSeqs {
		if seq != int64(i+1) {
			t.Fatalf("log line %d has sequence %d", i+1, seq)
		}
	}
	h.waitReleased(t)
}

func reportToken(r *osvcv1.ConnectRequest) int64 {
	switch {
	case r.GetStepChanged() != nil:
		return r.GetStepChanged().GetFencingToken()
	case r.GetProgress() != nil:
		return r.GetProgress().GetFencingToken()
	case r.GetUpdateResult() != nil:
		return r.GetUpdateResult().GetFencingToken()
	case r.GetLogBatch() != nil:
		return r.GetLogBatch().GetFencingToken()
	case r.GetRunResult() != nil:
		return r.GetRunResult().GetFencingToken()
	}
	return 0
}

func TestTheDefaultNameIsAValidAgentNameMadeOfTheHostName(t *testing.T) {
	t.Parallel()
	tests := []struct{ host, want string }{
		{"siteserver01", "siteserver01"},
		{"SiteServer01.corp.example.com", "siteserver01"},
		{"01-build_box", "agent-01-build-box"},
		{"", "agent"},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			t.Parallel()
			got := nameFromHost(tt.host)
			if got != tt.want || names.ValidateID(got) != nil {
				t.Errorf("nameFromHost(%q) = %q, want %q (valid)", tt.host, got, tt.want)
			}
		})
	}
}

// isMounted tells whether dir is a mount point, read straight from the kernel.
func isMounted(t *testing.T, dir string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
}

// endedRun makes the work folder of a run that ended age before now: its log only.
func endedRun(t *testing.T, drive, id string, now time.Time, age time.Duration) string {
	t.Helper()
	dir := filepath.Join(drive, pipeline.WorkFolder, id)
	writeFile(t, filepath.Join(dir, pipeline.LogFile), "ended\n")
	if err := os.Chtimes(dir, now.Add(-age), now.Add(-age)); err != nil {
		t.Fatal(err)
	}
	return dir
}

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Stat(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

func TestTheAgentCleansUpAfterACrashedRunBeforeItConnects(t *testing.T) {
	t.Parallel()
	sample, err := sampledata.Create(context.Background(), sampledata.Options{Dir: t.TempDir(), PayloadBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	before := fileSHA(t, sample.WIM)
	now := time.Now()
	drive := t.TempDir()
	work := filepath.Join(drive, pipeline.WorkFolder, "r-x")
	mount := filepath.Join(work, "mount")
	if err := os.MkdirAll(mount, 0o750); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(work, pipeline.LogFile), "the crashed run's story\n")
	for _, leftover := range []string{"source.wim", "export.wim", "stage-42/update.mum"} {
		writeFile(t, filepath.Join(work, leftover), "copy")
	}
	old := endedRun(t, drive, "r-old", now, 8*24*time.Hour)
	recent := endedRun(t, drive, "r-recent", now, 24*time.Hour)

	t.Cleanup(func() {
		if isMounted(t, mount) {
			_ = exec.Command("fusermount3", "-u", "-z", mount).Run()
		}
	})
	if out, err := exec.Command("wimlib-imagex", "mountrw", sample.WIM, "1", mount).CombinedOutput(); err != nil {
		t.Fatalf("wimlib-imagex mountrw: %v: %s", err, out)
	}
	// A change a commit would write into the WIM.
	writeFile(t, filepath.Join(mount, "Windows", "half-applied.txt"), "must not reach the image")

	h := startSetup(t, setup{drive: drive, before: func(a *Agent) { a.now = func() time.Time { return now } }})
	// Recovery runs before the agent connects: once it has, it is done.
	h.stream(t)
	if isMounted(t, mount) {
		t.Fatalf("%s is still a mount point", mount)
	}
	if got := fileSHA(t, sample.WIM); got != before {
		t.Errorf("the mounted WIM changed (sha256 %s, was %s): the mount was committed", got, before)
	}
	entries, err := os.ReadDir(work)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != pipeline.LogFile {
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
		}
		t.Errorf("the crashed run's folder holds %v, want its log only", got)
	}
	if exists(t, old) {
		t.Errorf("%s ended 8 days ago, past the 7-day retention, and was kept", old)
	}
	if !exists(t, filepath.Join(recent, pipeline.LogFile)) {
		t.Errorf("%s ended a day ago and its log was removed", recent)
	}
}

func TestTheAgentRemovesExpiredWorkFoldersOnEveryTick(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ticks := make(chan time.Time)
	h := startSetup(t, setup{before: func(a *Agent) {
		a.cfg.WorkRetention = 72 * time.Hour
		a.now = func() time.Time { return now }
		a.retentionTicks = func() (<-chan time.Time, func()) { return ticks, func() {} }
	}})
	h.stream(t)
	old := endedRun(t, h.drive, "r-old", now, 4*24*time.Hour)
	recent := endedRun(t, h.drive, "r-recent", now, 48*time.Hour)
	held := endedRun(t, h.drive, "r-held", now, 30*24*time.Hour)
	// A run the agent holds keeps its folder, whatever its age.
	h.agent.mu.Lock()
	h.agent.runs["runs/r-held"] = &heldRun{token: 1}
	h.agent.mu.Unlock()
	t.Cleanup(func() {
		h.agent.mu.Lock()
		delete(h.agent.runs, "runs/r-held")
		h.agent.mu.Unlock()
	})
	// The loop takes the second tick only once the first pass is done.
	ticks <- now
	ticks <- now
	if exists(t, old) {
		t.Errorf("%s ended 4 days ago, past the 3-day retention, and was kept", old)
	}
	if !exists(t, recent) {
		t.Errorf("%s ended 2 days ago, within the retention, and was removed", recent)
	}
	if !exists(t, held) {
		t.Errorf("%s belongs to a run the agent holds and was removed", held)
	}
}

func TestOneAgentAtATimeWorksOnADrive(t *testing.T) {
	t.Parallel()
	drive := t.TempDir()
	unlock, err := lockDrive(drive)
	if err != nil {
		t.Fatalf("lockDrive: %v", err)
	}
	if _, err := lockDrive(drive); err == nil || !strings.Contains(err.Error(), "in use by another osvc-agent") {
		t.Fatalf("a second lockDrive = %v, want the drive in use by another agent", err)
	}
	unlock()
	unlock, err = lockDrive(drive)
	if err != nil {
		t.Fatalf("lockDrive once the first agent is gone: %v", err)
	}
	unlock()
}

func TestTheUpdateCacheKeepsToTheAgentsCapFromTheStart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		maxBytes int64
		// wantOld tells whether the least recently used file is kept.
		wantOld bool
	}{
		{"with a cap below what is cached the least recently used file is evicted", 1000, false},
		{"with a negative cap nothing is evicted", -1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var old, recent string
			h := startSetup(t, setup{before: func(a *Agent) {
				a.cfg.CacheMaxBytes = tt.maxBytes
				// Two files an earlier agent cached, used a day apart.
				for i, when := range []time.Time{time.Now().Add(-48 * time.Hour), time.Now().Add(-24 * time.Hour)} {
					data := []byte(strings.Repeat(string(rune('a'+i)), 1000))
					sum := sha256.Sum256(data)
					path := filepath.Join(a.cache, hex.EncodeToString(sum[:]))
					if err := os.WriteFile(path, data, 0o640); err != nil {
						t.Fatal(err)
					}
					if err := os.Chtimes(path, when, when); err != nil {
						t.Fatal(err)
					}
					old, recent = recent, path
				}
			}})
			// The agent connects once its cache is ready.
			h.stream(t)
			if _, err := os.Stat(old); (err == nil) != tt.wantOld {
				t.Errorf("the least recently used file kept = %v, want %v", err == nil, tt.wantOld)
			}
			if _, err := os.Stat(recent); err != nil {
				t.Errorf("the recently used file: %v", err)
			}
		})
	}
}

// TestARunWorksOnItsSitesDriveUnlessTheAgentHasItsOwn sends a run with its
// site's drive and finds its work folder, and its log saying which drive
// and why, where the agent's --drive (which wins) or the site's setting
// puts it; a drive this server lacks, or one another agent here holds,
// means the Automatic drive, with a warning.
func TestARunWorksOnItsSitesDriveUnlessTheAgentHasItsOwn(t *testing.T) {
	t.Parallel()
	held := t.TempDir()
	unlock, err := lockDrive(held)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	site := t.TempDir()
	tests := []struct {
		name string
		// own is the agent's --drive, "" for none.
		own, siteDrive string
		// want is the drive the run works on, "" for the Automatic one.
		want, why, warning string
	}{
		{"without --drive a run works on its site's drive", "", site, site, "the site's offline servicing drive " + site, ""},
		{"a site without a setting is the Automatic drive", "", "", "", "the site's offline servicing drive Automatic", ""},
		{"the agent's --drive overrides its site's", "own", site, "own",
			"the agent's --drive own, which overrides the site's setting " + site + " on this server", ""},
		{"a site drive this server lacks is the Automatic drive", "", filepath.Join(site, "missing"), "",
			"the site's offline servicing drive " + filepath.Join(site, "missing"), "does not exist on this server"},
		{"a site drive another agent here holds is the Automatic drive", "", held, "",
			"the site's offline servicing drive " + held, "in use by another osvc-agent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			su := setup{followSite: tt.own == ""}
			own := t.TempDir()
			if tt.own != "" {
				su.drive = own
				tt.why = strings.ReplaceAll(tt.why, "own", own)
			}
			h := startSetup(t, su)
			want := map[string]string{"": h.agent.cfg.DataDir, "own": own}[tt.want]
			if want == "" {
				want = tt.want
			}
			fs := h.stream(t)
			asg := assign("runs/r1", 5)
			asg.GetAssign().OfflineServicingDrive = tt.siteDrive
			fs.out <- asg
			h.waitFor(t, "the COPY step", isStep(osvcv1.Step_STEP_COPY, osvcv1.StepState_STEP_STATE_RUNNING))
			h.stop()
			data, err := os.ReadFile(filepath.Join(want, pipeline.WorkFolder, "r1", pipeline.LogFile))
			if err != nil {
				t.Fatalf("the run's log is not in its work folder on %s: %v", want, err)
			}
			log := string(data)
			if !strings.Contains(log, "offline servicing drive: drive="+want) || !strings.Contains(log, `why="`+tt.why+`"`) {
				t.Errorf("the run's log does not say it works on %s because of %q:\n%s", want, tt.why, log)
			}
			if warned := strings.Contains(log, "this run works on the Automatic drive"); warned != (tt.warning != "") || !strings.Contains(log, tt.warning) {
				t.Errorf("the run's log warns %t, want a warning saying %q:\n%s", warned, tt.warning, log)
			}
		})
	}
}

// TestADriveFirstUsedForASiteIsCleanedOfWhatACrashedAgentLeft leaves a
// crashed run's copy on the site's drive: the agent cleans it up when a
// run first takes that drive, keeping its log, and reports the drive.
func TestADriveFirstUsedForASiteIsCleanedOfWhatACrashedAgentLeft(t *testing.T) {
	t.Parallel()
	site := t.TempDir()
	crashed := filepath.Join(site, pipeline.WorkFolder, "r-x")
	writeFile(t, filepath.Join(crashed, pipeline.LogFile), "the crashed run's story\n")
	writeFile(t, filepath.Join(crashed, "source.wim"), "copy")
	h := startSetup(t, setup{followSite: true})
	fs := h.stream(t)
	asg := assign("runs/r1", 5)
	asg.GetAssign().OfflineServicingDrive = site
	fs.out <- asg
	h.waitFor(t, "the COPY step", isStep(osvcv1.Step_STEP_COPY, osvcv1.StepState_STEP_STATE_RUNNING))
	if exists(t, filepath.Join(crashed, "source.wim")) || !exists(t, filepath.Join(crashed, pipeline.LogFile)) {
		t.Errorf("%s after the first run on the site's drive: want its copy removed and its log kept", crashed)
	}
	if got := h.agent.drives(); len(got) != 2 || got[0].GetPath() != h.agent.Drive() || got[1].GetPath() != site {
		t.Errorf("the agent reports drives %v, want its Automatic drive and the site's %s", got, site)
	}
}
