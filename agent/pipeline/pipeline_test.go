package pipeline

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/osvc/osvc/agent/cache"
	"github.com/osvc/osvc/agent/engine"
	"github.com/osvc/osvc/agent/engine/wimlib"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	os.Exit(code)
}

// fixture is a content server holding the sample image and its updates.
type fixture struct {
	lib     *content.Library
	client  osvcv1.ContentServiceClient
	sample  *sampledata.Sample
	source  *osvcv1.ImageVersion
	updates []*osvcv1.Update
	lis     *bufconn.Listener
}

// dial opens a connection of its own to the fixture's server.
func (f *fixture) dial(t *testing.T, extra ...grpc.DialOption) osvcv1.ContentServiceClient {
	t.Helper()
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return f.lis.DialContext(ctx) }),
	}, transfer.DialOptions()...)
	cc, err := grpc.NewClient("passthrough:///bufnet", append(opts, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return osvcv1.NewContentServiceClient(cc)
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureOf(t, 256<<10)
}

// newFixtureOf is newFixture with a sample image of payload bytes of file data.
func newFixtureOf(t *testing.T, payload int64) *fixture {
	t.Helper()
	ctx := context.Background()
	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir(), PayloadBytes: payload})
	if err != nil {
		t.Fatal(err)
	}
	lib, err := content.New(content.Config{Dir: t.TempDir(), Store: storetest.New(t), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(transfer.ServerOptions()...)
	osvcv1.RegisterContentServiceServer(srv, api.NewContentServer(lib, hclog.NewNullLogger()))
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(lis) })
	t.Cleanup(func() { srv.Stop(); wg.Wait() })
	f := &fixture{lib: lib, lis: lis, sample: sample}
	f.client = f.dial(t)
	wim := f.put(t, sample.WIM, MediaTypeWIM)
	f.source = &osvcv1.ImageVersion{Version: 1, Sha256: wim.GetSha256(), SizeBytes: wim.GetSizeBytes()}
	for _, u := range sample.Updates {
		c := f.put(t, u.File, "application/vnd.ms-cab-compressed")
		f.updates = append(f.updates, &osvcv1.Update{
			Name:           "updates/" + strings.ToLower(u.KB),
			Kb:             u.KB,
			Classification: u.Classification,
			Files:          []*osvcv1.UpdateFile{{FileName: filepath.Base(u.File), Sha256: c.GetSha256(), SizeBytes: c.GetSizeBytes()}},
		})
	}
	return f
}

func (f *fixture) put(t *testing.T, path, mediaType string) *osvcv1.Content {
	t.Helper()
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	c, _, err := f.lib.Write(context.Background(), content.WriteHeader{MediaType: mediaType}, file)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) assign(run *osvcv1.Run) *osvcv1.Assign {
	run.Name = "runs/r1"
	run.Image = "images/win11"
	run.FencingToken = 42
	return &osvcv1.Assign{Run: run, Image: &osvcv1.Image{Name: "images/win11"}, Source: f.source, Updates: f.updates}
}

func (f *fixture) want(kb string) osvcv1.UpdateState {
	for _, u := range f.sample.Updates {
		if u.KB == kb {
			return u.Want
		}
	}
	return 0
}

// recorder is a Reporter that records every report in order; fail, when set,
// answers a report with an error.
type recorder struct {
	mu       sync.Mutex
	events   []string
	steps    []*osvcv1.StepRecord
	progress []*osvcv1.Progress
	results  []*osvcv1.UpdateResult
	logs     []*osvcv1.LogLine
	result   *osvcv1.RunResult
	nResult  int
	fail     func(event string) error
}

func (r *recorder) record(event string) error {
	r.mu.Lock()
	r.events = append(r.events, event)
	fail := r.fail
	r.mu.Unlock()
	if fail != nil {
		return fail(event)
	}
	return nil
}

func (r *recorder) Step(_ context.Context, s *osvcv1.StepRecord) error {
	r.mu.Lock()
	r.steps = append(r.steps, s)
	r.mu.Unlock()
	return r.record(fmt.Sprintf("step %s %s", strings.TrimPrefix(s.GetStep().String(), "STEP_"), strings.TrimPrefix(s.GetState().String(), "STEP_STATE_")))
}

func (r *recorder) Progress(_ context.Context, p *osvcv1.Progress) error {
	if p.GetPercent() < 0 || p.GetPercent() > 100 {
		return fmt.Errorf("progress %d%% out of range", p.GetPercent())
	}
	r.mu.Lock()
	r.progress = append(r.progress, p)
	r.mu.Unlock()
	if p.GetStep() != osvcv1.Step_STEP_UNSPECIFIED {
		return r.record("bytes " + strings.TrimPrefix(p.GetStep().String(), "STEP_"))
	}
	return r.record("progress " + p.GetUpdate().GetKb())
}

func (r *recorder) UpdateResult(_ context.Context, u *osvcv1.UpdateResult) error {
	r.mu.Lock()
	r.results = append(r.results, u)
	r.mu.Unlock()
	return r.record(fmt.Sprintf("result %s %s", u.GetKb(), strings.TrimPrefix(u.GetState().String(), "UPDATE_STATE_")))
}

func (r *recorder) Logs(lines []*osvcv1.LogLine) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, lines...)
}

func (r *recorder) Result(_ context.Context, res *osvcv1.RunResult) error {
	r.mu.Lock()
	r.result = res
	r.nResult++
	r.mu.Unlock()
	return r.record("run " + strings.TrimPrefix(res.GetState().String(), "RUN_STATE_"))
}

// stepStates lists "STEP STATE" in report order.
func (r *recorder) stepStates() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, s := range r.steps {
		out = append(out, strings.TrimPrefix(s.GetStep().String(), "STEP_")+" "+strings.TrimPrefix(s.GetState().String(), "STEP_STATE_"))
	}
	return out
}

// newConfig makes a run's config the way the agent does: wimlib, the update
// cache and the images over the fixture's content server.
func newConfig(t *testing.T, f *fixture) Config {
	t.Helper()
	return configOver(t, f.client)
}

// configOver is newConfig with content served by c.
func configOver(t *testing.T, c osvcv1.ContentServiceClient) Config {
	t.Helper()
	images, err := transfer.NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	updates, err := cache.New(cache.Config{Dir: t.TempDir(), Source: images})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(updates.Close)
	return Config{
		NewEngine: func(l hclog.Logger, work string) (engine.Engine, error) {
			return wimlib.New(wimlib.Config{Logger: l, Work: work})
		},
		UpdateFiles: updates,
		Images:      images,
		Drive:       t.TempDir(),
		Logger:      hclog.NewNullLogger(),
	}
}

// recordCalls makes cfg's runs record their engine calls.
func recordCalls(cfg *Config) *recordingEngine {
	rec := &recordingEngine{}
	newEngine := cfg.NewEngine
	cfg.NewEngine = func(l hclog.Logger, work string) (engine.Engine, error) {
		eng, err := newEngine(l, work)
		if err != nil {
			return nil, err
		}
		rec.mu.Lock()
		rec.Engine = eng
		rec.mu.Unlock()
		return rec, nil
	}
	return rec
}

// file is the file name of the fixture's update kb.
func (f *fixture) file(t *testing.T, kb string) string {
	t.Helper()
	for _, u := range f.updates {
		if u.GetKb() == kb {
			return u.GetFiles()[0].GetFileName()
		}
	}
	t.Fatalf("the fixture has no %s", kb)
	return ""
}

// adds are the engine calls adding the fixture's updates kbs to index.
func (f *fixture) adds(t *testing.T, index int, kbs ...string) []string {
	t.Helper()
	var out []string
	for _, kb := range kbs {
		out = append(out, fmt.Sprintf("add %d %s", index, f.file(t, kb)))
	}
	return out
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

// wimDir lists the paths in one index of a WIM.
func wimDir(t *testing.T, wim string) string {
	t.Helper()
	out, err := exec.Command("wimlib-imagex", "dir", wim, "1").CombinedOutput()
	if err != nil {
		t.Fatalf("wimlib-imagex dir %s: %v: %s", wim, err, out)
	}
	return string(out)
}

// checkWorkFolder asserts that only the logs are left and nothing is mounted.
func checkWorkFolder(t *testing.T, drive string) {
	t.Helper()
	work := filepath.Join(drive, WorkFolder, "r1")
	entries, err := os.ReadDir(work)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !isLog(e.Name()) {
			t.Errorf("the work folder still holds %s", e.Name())
		}
	}
	log, err := os.ReadFile(filepath.Join(work, LogFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(log, []byte("step started")) {
		t.Errorf("%s does not tell the steps:\n%s", LogFile, log)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err == nil && bytes.Contains(mounts, []byte(work)) {
		t.Errorf("%s is still mounted", work)
	}
}

func TestARunAppliesTheUpdatesAndUploadsTheServicedImage(t *testing.T) {
	t.Parallel()
	const ssu, cuSep, cuOct, cuArmSameBuild, dotnet, msrt, cuArm = "KB5045935", "KB5065431", "KB5066793", "KB5067112", "KB5066131", "KB890830", "KB5066835"
	tests := []struct {
		name             string
		removeSuperseded bool
		// wantCalls are the engine calls that service the image, from the
		// fixture's updates (assigned in the order ssu, cuSep, cuOct,
		// cuArmSameBuild, dotnet, msrt, cuArm).
		wantCalls func(f *fixture, t *testing.T) []string
		// wantLast is the KB whose result comes last.
		wantLast string
	}{
		{
			name: "without remove superseded the updates go in the order assigned and the committed copy is the result",
			wantCalls: func(f *fixture, t *testing.T) []string {
				return slices.Concat([]string{"mount 1"}, f.adds(t, 1, ssu, cuSep, cuOct, cuArmSameBuild, dotnet, msrt, cuArm), []string{"unmount 1 commit"})
			},
			wantLast: cuArm,
		},
		{
			name:             "with remove superseded cleanup runs before the commit, .NET after cleanup, and the copy is exported",
			removeSuperseded: true,
			wantCalls: func(f *fixture, t *testing.T) []string {
				return slices.Concat([]string{"mount 1"}, f.adds(t, 1, ssu, cuSep, cuOct, cuArmSameBuild, msrt, cuArm),
					[]string{"cleanup 1"}, f.adds(t, 1, dotnet), []string{"unmount 1 commit", "export 1"})
			},
			wantLast: dotnet,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			cfg := newConfig(t, f)
			eng := recordCalls(&cfg)
			rec := &recorder{}
			if err := Run(context.Background(), cfg, f.assign(&osvcv1.Run{RemoveSuperseded: tt.removeSuperseded}), rec); err != nil {
				t.Fatalf("Run: %v", err)
			}
			t.Logf("reports: %s", strings.Join(rec.events, " | "))
			if got, want := eng.servicing(), tt.wantCalls(f, t); !slices.Equal(got, want) {
				t.Errorf("engine calls:\n got %q\nwant %q", got, want)
			}
			if len(rec.results) != len(f.updates) {
				t.Fatalf("%d update results, want %d", len(rec.results), len(f.updates))
			}
			for _, r := range rec.results {
				if want := f.want(r.GetKb()); r.GetState() != want || r.GetIndex() != 1 {
					t.Errorf("%s on index %d = %s, want %s on index 1", r.GetKb(), r.GetIndex(), r.GetState(), want)
				}
			}
			if last := rec.results[len(rec.results)-1].GetKb(); last != tt.wantLast {
				t.Errorf("last update applied = %s, want %s", last, tt.wantLast)
			}
			res := rec.result
			if res.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || rec.nResult != 1 {
				t.Fatalf("result = %v (%d results), want one SUCCEEDED", res, rec.nResult)
			}
			if res.GetResultSha256() == f.source.GetSha256() {
				t.Fatal("the result is the source image")
			}
			path := f.lib.Path(res.GetResultSha256())
			if got := fileSHA(t, path); got != res.GetResultSha256() {
				t.Fatalf("uploaded blob hashes to %s, want %s", got, res.GetResultSha256())
			}
			if got := fileSHA(t, f.lib.Path(f.source.GetSha256())); got != f.source.GetSha256() {
				t.Error("the source image in the library was modified")
			}
			if listing := wimDir(t, path); !strings.Contains(listing, "Package_for_ServicingStack_4311") {
				t.Errorf("the serviced image has no servicing stack package:\n%s", listing)
			}
			if len(res.GetIndexes()) != 1 {
				t.Fatalf("result indexes = %d, want 1", len(res.GetIndexes()))
			}
			kbs := map[string]bool{}
			for _, iu := range res.GetIndexes()[0].GetInstalledUpdates() {
				kbs[strings.ToUpper(iu.GetKb())] = true
			}
			for _, kb := range []string{"KB5045935", "KB5066793", "KB5066131"} {
				if !kbs[kb] {
					t.Errorf("installed updates %v lack %s", kbs, kb)
				}
			}
			for i, l := range rec.logs {
				if l.GetSequence() != int64(i+1) {
					t.Fatalf("log line %d has sequence %d", i+1, l.GetSequence())
				}
			}
			if !strings.Contains(fmt.Sprint(rec.logs), "wimlib-imagex") {
				t.Error("the run log lacks the engine's lines")
			}
			checkWorkFolder(t, cfg.Drive)
		})
	}
}

func TestACanceledRunDiscardsItsWorkAndReportsCanceled(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	content := &countingContent{ContentServiceClient: f.client}
	cfg := configOver(t, content)
	eng := recordCalls(&cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := &recorder{fail: func(event string) error {
		// Cancel once the first update is applied: the index is mounted.
		if strings.HasPrefix(event, "result ") {
			cancel()
		}
		return nil
	}}
	if err := Run(ctx, cfg, f.assign(&osvcv1.Run{}), rec); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rec.result.GetState() != osvcv1.RunState_RUN_STATE_CANCELED || rec.nResult != 1 {
		t.Fatalf("result = %v, want one CANCELED", rec.result)
	}
	calls := eng.servicing()
	if slices.Contains(calls, "unmount 1 commit") || calls[len(calls)-1] != "unmount 1 discard" {
		t.Errorf("engine calls %q, want the mounted index discarded, never committed", calls)
	}
	if n := content.writes.Load(); n != 0 {
		t.Errorf("%d uploads, want none", n)
	}
	if got := fileSHA(t, f.lib.Path(f.source.GetSha256())); got != f.source.GetSha256() {
		t.Error("the source image in the library was modified")
	}
	checkWorkFolder(t, cfg.Drive)
}

func TestACancelArrivingAfterTheLastStepStillDecidesTheResult(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cause   error
		want    osvcv1.RunState // 0: no result at all
		wantErr error
	}{
		{"a cancel by the server is reported canceled", errors.New("canceled by an administrator"), osvcv1.RunState_RUN_STATE_CANCELED, nil},
		{"a discard by the agent reports nothing", fmt.Errorf("%w: shutting down", ErrDiscard), 0, ErrDiscard},
	}
	f := newFixture(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := newConfig(t, f)
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			rec := &recorder{fail: func(event string) error {
				// The work is done and uploaded; the result is not out yet.
				if event == "step REPORT DONE" {
					cancel(tt.cause)
				}
				return nil
			}}
			err := Run(ctx, cfg, f.assign(&osvcv1.Run{}), rec)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Run = %v, want %v", err, tt.wantErr)
			}
			switch {
			case tt.want == 0 && rec.nResult != 0:
				t.Errorf("a discarded run reported %v", rec.result)
			case tt.want != 0 && (rec.nResult != 1 || rec.result.GetState() != tt.want):
				t.Errorf("result = %v (%d sent), want one %s", rec.result, rec.nResult, tt.want)
			}
			checkWorkFolder(t, cfg.Drive)
		})
	}
}

func TestARunDiscardedByTheAgentReportsNothingMore(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cfg := newConfig(t, f)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	rec := &recorder{fail: func(event string) error {
		if event == "step APPLY RUNNING" {
			cancel(fmt.Errorf("%w: shutting down", ErrDiscard))
		}
		return nil
	}}
	err := Run(ctx, cfg, f.assign(&osvcv1.Run{}), rec)
	if !errors.Is(err, ErrDiscard) {
		t.Fatalf("Run = %v, want ErrDiscard", err)
	}
	if rec.nResult != 0 {
		t.Errorf("a discarded run reported %v", rec.result)
	}
	checkWorkFolder(t, cfg.Drive)
}

func TestAStaleTokenStopsTheRunWithoutFurtherReports(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cfg := newConfig(t, f)
	var after []string
	var mu sync.Mutex
	refused := false
	rec := &recorder{}
	rec.fail = func(event string) error {
		mu.Lock()
		defer mu.Unlock()
		if refused {
			after = append(after, event)
		}
		if strings.HasPrefix(event, "result ") {
			refused = true
			return fmt.Errorf("report refused: %w", errdefs.ErrStaleLease)
		}
		return nil
	}
	err := Run(context.Background(), cfg, f.assign(&osvcv1.Run{}), rec)
	if !errors.Is(err, ErrLost) {
		t.Fatalf("Run = %v, want ErrLost", err)
	}
	if len(after) != 0 {
		t.Errorf("reports after the refusal: %v", after)
	}
	checkWorkFolder(t, cfg.Drive)
}

func TestAFailedUpdateStopsTheRunUnlessContinueOnError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name            string
		continueOnError bool
		wantRun         osvcv1.RunState
		wantAfter       osvcv1.UpdateState
		// wantUnmount is the last engine call; wantUploads how many uploads.
		wantUnmount string
		wantUploads int32
	}{
		{"without continue on error the rest is skipped, the index discarded and the run fails", false,
			osvcv1.RunState_RUN_STATE_FAILED, osvcv1.UpdateState_UPDATE_STATE_SKIPPED, "unmount 1 discard", 0},
		{"with continue on error the rest is applied and committed and the run succeeds", true,
			osvcv1.RunState_RUN_STATE_SUCCEEDED, osvcv1.UpdateState_UPDATE_STATE_APPLIED, "unmount 1 commit", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			// A cabinet with a damaged update.mum, in second place.
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "update.mum"), []byte("<assembly>damaged"), 0o644); err != nil {
				t.Fatal(err)
			}
			bad := filepath.Join(dir, "windows11.0-kb9999999-x64.cab")
			gcab := exec.Command("gcab", "-c", "-z", bad, "update.mum")
			gcab.Dir = dir
			if out, err := gcab.CombinedOutput(); err != nil {
				t.Fatalf("gcab: %v: %s", err, out)
			}
			c := f.put(t, bad, "application/vnd.ms-cab-compressed")
			broken := &osvcv1.Update{Name: "updates/kb9999999", Kb: "KB9999999",
				Files: []*osvcv1.UpdateFile{{FileName: filepath.Base(bad), Sha256: c.GetSha256(), SizeBytes: c.GetSizeBytes()}}}
			f.updates = append([]*osvcv1.Update{f.updates[0], broken}, f.updates[1:]...)
			content := &countingContent{ContentServiceClient: f.client}
			cfg := configOver(t, content)
			eng := recordCalls(&cfg)
			rec := &recorder{}
			if err := Run(context.Background(), cfg, f.assign(&osvcv1.Run{ContinueOnError: tt.continueOnError}), rec); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if rec.result.GetState() != tt.wantRun {
				t.Fatalf("run = %s (%s), want %s", rec.result.GetState(), rec.result.GetError(), tt.wantRun)
			}
			if len(rec.results) != len(f.updates) {
				t.Fatalf("%d update results, want %d", len(rec.results), len(f.updates))
			}
			if got := rec.results[1]; got.GetKb() != "KB9999999" || got.GetState() != osvcv1.UpdateState_UPDATE_STATE_FAILED || got.GetMessage() == "" {
				t.Errorf("the damaged update = %v, want FAILED with a message", got)
			}
			if got := rec.results[2]; got.GetState() != tt.wantAfter {
				t.Errorf("%s after the failure = %s, want %s", got.GetKb(), got.GetState(), tt.wantAfter)
			}
			if calls := eng.servicing(); calls[len(calls)-1] != tt.wantUnmount || slices.Contains(calls[:len(calls)-1], tt.wantUnmount) {
				t.Errorf("engine calls %q, want one %q, last", calls, tt.wantUnmount)
			}
			if n := content.writes.Load(); n != tt.wantUploads {
				t.Errorf("%d uploads, want %d", n, tt.wantUploads)
			}
			if got := fileSHA(t, f.lib.Path(f.source.GetSha256())); got != f.source.GetSha256() {
				t.Error("the source image in the library was modified")
			}
			checkWorkFolder(t, cfg.Drive)
		})
	}
}

func TestTooLittleFreeSpaceFailsAtTheDriveStep(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cfg := newConfig(t, f)
	a := f.assign(&osvcv1.Run{})
	a.Source = &osvcv1.ImageVersion{Version: 1, Sha256: f.source.GetSha256(), SizeBytes: 1 << 60}
	rec := &recorder{}
	if err := Run(context.Background(), cfg, a, rec); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := strings.Join(rec.stepStates(), ", "); got != "DRIVE RUNNING, DRIVE FAILED" {
		t.Errorf("steps = %s, want DRIVE RUNNING, DRIVE FAILED", got)
	}
	res := rec.result
	if res.GetState() != osvcv1.RunState_RUN_STATE_FAILED || !strings.Contains(res.GetError(), "free space or set --drive") ||
		!strings.Contains(res.GetError(), "images/win11") {
		t.Errorf("result = %v, want FAILED telling to free space or set --drive", res)
	}
}

func TestAMultiIndexImageIsServicedIndexByIndex(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	// Two indexes: the sample's index 1 exported twice under two names.
	two := filepath.Join(t.TempDir(), "two.wim")
	for _, name := range []string{"First", "Second"} {
		if out, err := exec.Command("wimlib-imagex", "export", f.sample.WIM, "1", two, name).CombinedOutput(); err != nil {
			t.Fatalf("wimlib-imagex export: %v: %s", err, out)
		}
	}
	c := f.put(t, two, MediaTypeWIM)
	f.source = &osvcv1.ImageVersion{Version: 1, Sha256: c.GetSha256(), SizeBytes: c.GetSizeBytes()}
	cfg := newConfig(t, f)
	eng := recordCalls(&cfg)

	// Remove superseded on two indexes fails before anything is mounted
	// (the server refuses such a schedule; this is the agent's own guard).
	refused := &recorder{}
	if err := Run(context.Background(), cfg, f.assign(&osvcv1.Run{RemoveSuperseded: true}), refused); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res := refused.result; res.GetState() != osvcv1.RunState_RUN_STATE_FAILED || !strings.Contains(res.GetError(), "has 2 indexes") ||
		!strings.Contains(res.GetError(), "without remove superseded") {
		t.Errorf("remove superseded on 2 indexes: result = %v, want FAILED saying to schedule without it", res)
	}
	if got := eng.servicing(); len(got) != 0 {
		t.Errorf("engine calls %q for a run that must not mount", got)
	}

	rec := &recorder{}
	if err := Run(context.Background(), cfg, f.assign(&osvcv1.Run{}), rec); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rec.result.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("result = %v", rec.result)
	}
	var kbs []string
	for _, u := range f.updates {
		kbs = append(kbs, u.GetKb())
	}
	// Index by index, in the order assigned; the committed copy is the
	// result.
	want := slices.Concat([]string{"mount 1"}, f.adds(t, 1, kbs...), []string{"unmount 1 commit", "mount 2"},
		f.adds(t, 2, kbs...), []string{"unmount 2 commit"})
	if got := eng.servicing(); !slices.Equal(got, want) {
		t.Errorf("engine calls:\n got %q\nwant %q", got, want)
	}
	perIndex := map[int32]int{}
	for _, r := range rec.results {
		perIndex[r.GetIndex()]++
		if want := f.want(r.GetKb()); r.GetState() != want {
			t.Errorf("%s on index %d = %s, want %s", r.GetKb(), r.GetIndex(), r.GetState(), want)
		}
	}
	if perIndex[1] != len(f.updates) || perIndex[2] != len(f.updates) {
		t.Errorf("results per index = %v, want %d on each of 1 and 2", perIndex, len(f.updates))
	}
	if n := len(rec.result.GetIndexes()); n != 2 {
		t.Errorf("result indexes = %d, want 2", n)
	}
}
