package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	"github.com/osvc/osvc/agent"
	"github.com/osvc/osvc/agent/engine"
	"github.com/osvc/osvc/agent/engine/wimlib"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server"
)

// rigSite is the site of the servicing benchmarks' images and agents.
const rigSite = "PS1"

// rigRunTimeout bounds one run of the servicing benchmarks, inspection or
// servicing, so a run that never ends fails the benchmark instead of hanging it.
const rigRunTimeout = 30 * time.Minute

// rig is a real osvc-server (embedded etcd, content library) holding a
// generated sample image and its updates, on which the servicing benchmarks
// start real agents (wimlib engine) and schedule real runs. Everything lives
// under one temporary folder, so the library and the agents share a volume,
// as they do in `make demo`.
type rig struct {
	cfg    benchConfig
	dir    string
	sample *sampledata.Sample
	// wim is the sample image's record in the content library.
	wim *osvcv1.Content
	// updates are the imported updates, by name.
	updates map[string]*osvcv1.Update
	// files are the sample's update files, by file name.
	files map[string]string

	srv        target
	stopServer func()
	conn       *grpc.ClientConn
	images     osvcv1.ImageServiceClient
	servicing  osvcv1.ServicingServiceClient
}

// startRig generates the sample image with payloadBytes of file data and
// its updates with updateFileBytes in each file they carry (0: the
// sample's default, see sampledata.Options), starts the server and imports
// the image's blob and the updates.
func startRig(ctx context.Context, cfg benchConfig, payloadBytes, updateFileBytes int64) (_ *rig, err error) {
	dir, err := os.MkdirTemp("", "osvc-bench-servicing-*")
	if err != nil {
		return nil, fmt.Errorf("benchmark folder: %w", err)
	}
	r := &rig{cfg: cfg, dir: dir, stopServer: func() {}}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if r.sample, err = sampledata.Create(ctx, sampledata.Options{
		Dir: filepath.Join(dir, "sample"), PayloadBytes: payloadBytes, UpdateFileBytes: updateFileBytes,
	}); err != nil {
		return nil, err
	}
	if r.srv, r.stopServer, err = startServer(ctx, cfg, nil, server.EtcdAuth{}); err != nil {
		return nil, err
	}
	if r.conn, err = r.srv.dial(transfer.DialOptions()...); err != nil {
		return nil, err
	}
	r.images = osvcv1.NewImageServiceClient(r.conn)
	r.servicing = osvcv1.NewServicingServiceClient(r.conn)
	contents := osvcv1.NewContentServiceClient(r.conn)
	if err = createSite(ctx, r.conn, rigSite); err != nil {
		return nil, err
	}

	if r.wim, err = transfer.Upload(ctx, contents, r.sample.WIM, "application/x-ms-wim", nil); err != nil {
		return nil, fmt.Errorf("upload %s: %w", r.sample.WIM, err)
	}
	r.files = make(map[string]string)
	var files []*osvcv1.UpdateFile
	for _, u := range r.sample.Updates {
		c, err := transfer.Upload(ctx, contents, u.File, "application/vnd.ms-cab-compressed", nil)
		if err != nil {
			return nil, fmt.Errorf("upload %s: %w", u.File, err)
		}
		name := filepath.Base(u.File)
		r.files[name] = u.File
		files = append(files, &osvcv1.UpdateFile{FileName: name, Sha256: c.GetSha256(), SizeBytes: c.GetSizeBytes()})
	}
	imported, err := osvcv1.NewUpdateServiceClient(r.conn).ImportUpdates(ctx, &osvcv1.ImportUpdatesRequest{Files: files})
	if err != nil {
		return nil, fmt.Errorf("import the sample's updates: %w", err)
	}
	r.updates = make(map[string]*osvcv1.Update)
	for _, u := range imported.GetUpdates() {
		r.updates[u.GetName()] = u
	}
	return r, nil
}

// close stops the server and removes the benchmark's folder.
func (r *rig) close() {
	if r.conn != nil {
		r.conn.Close()
	}
	r.stopServer()
	if err := os.RemoveAll(r.dir); err != nil {
		r.cfg.Logger.Warn("removing the benchmark folder failed", "dir", r.dir, "error", err)
	}
}

// serviced is one servicing run the rig watched to its end.
type serviced struct {
	run *osvcv1.Run
	// steps are every step the run went through, in order, as its step
	// events told them: the run keeps one record per step, so a second
	// APPLY (.NET after cleanup) replaces the first there.
	steps []*osvcv1.StepRecord
	// start is when the schedule was created; elapsed runs from there
	// until the run's end was seen.
	start   time.Time
	elapsed time.Duration
}

// service imports the sample as a new image (so every round services the
// same version afresh), lets a fresh agent of its own inspect it, then
// schedules every applicable update and watches the run to its end. Only
// the servicing run is timed; the agent's update cache starts empty.
func (r *rig) service(ctx context.Context, round int, removeSuperseded bool) (*serviced, error) {
	stopAgent, err := r.startAgent(ctx, round)
	if err != nil {
		return nil, err
	}
	defer stopAgent()
	ctx, cancel := context.WithTimeout(ctx, rigRunTimeout)
	defer cancel()
	imp, err := r.images.ImportImage(ctx, &osvcv1.ImportImageRequest{
		ImageId: fmt.Sprintf("bench-%d", round), DisplayName: "Windows 11 Enterprise", Site: rigSite,
		Kind: osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE, ContentSha256: r.wim.GetSha256(),
	})
	if err != nil {
		return nil, fmt.Errorf("import the sample image: %w", err)
	}
	if _, _, err := r.watch(ctx, imp.GetInspectionRun()); err != nil {
		return nil, err
	}
	// Both sides start without dirty pages left by the set-up or each other.
	syncDisks()
	start := time.Now()
	created, err := r.servicing.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{
		Parent:        imp.GetImage().GetName(),
		Schedule:      &osvcv1.Schedule{RemoveSuperseded: removeSuperseded, ContinueOnError: true},
		AllApplicable: true,
	})
	if err != nil {
		return nil, fmt.Errorf("schedule %s: %w", imp.GetImage().GetName(), err)
	}
	run, steps, err := r.watch(ctx, created.GetRun().GetName())
	if err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	for _, res := range run.GetUpdateResults() {
		if want := r.want(res.GetKb()); res.GetState() != want {
			return nil, fmt.Errorf("%s: %s is %s (%s), the sample expects %s: the benchmark measures a run that did not do its work",
				run.GetName(), res.GetKb(), res.GetState(), res.GetMessage(), want)
		}
	}
	return &serviced{run: run, steps: steps, start: start, elapsed: elapsed}, nil
}

// want is the result the sample expects for the update kb.
func (r *rig) want(kb string) osvcv1.UpdateState {
	for _, u := range r.sample.Updates {
		if u.KB == kb {
			return u.Want
		}
	}
	return osvcv1.UpdateState_UPDATE_STATE_UNSPECIFIED
}

// startAgent runs a fresh agent of the rig's site with the wimlib engine, its
// data folder (update cache and work folders) beside the library, until
// the returned stop is called.
func (r *rig) startAgent(ctx context.Context, round int) (stop func(), err error) {
	eng, err := wimlib.New(wimlib.Config{Logger: r.cfg.Logger})
	if err != nil {
		return nil, err
	}
	joinToken, err := r.srv.joinToken(ctx, rigSite)
	if err != nil {
		return nil, err
	}
	a, err := agent.New(agent.Config{
		JoinToken: joinToken,
		Server:    r.srv.addr,
		TLS:       pki.ClientOptions{CAFile: r.srv.caFile},
		Site:      rigSite,
		Name:      fmt.Sprintf("bench-agent-%d", round),
		DataDir:   filepath.Join(r.dir, fmt.Sprintf("agent-%d", round)),
		Engine:    eng,
		NewEngine: func(l hclog.Logger, _ string) (engine.Engine, error) {
			return wimlib.New(wimlib.Config{Logger: l})
		},
		Logger:         r.cfg.Logger,
		InitialBackoff: 10 * time.Millisecond,
		MaxBackoff:     time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("configure osvc-agent: %w", err)
	}
	actx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- a.Run(actx) }()
	return func() {
		cancel()
		if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
			r.cfg.Logger.Warn("osvc-agent did not stop cleanly", "error", err)
		}
	}, nil
}

// watch follows a run until it ends and returns it with every step it went
// through (each step event is a change of the run the watch sees); a run
// that did not succeed is an error.
func (r *rig) watch(ctx context.Context, name string) (*osvcv1.Run, []*osvcv1.StepRecord, error) {
	stream, err := r.servicing.WatchRun(ctx, &osvcv1.WatchRunRequest{Name: name})
	if err != nil {
		return nil, nil, fmt.Errorf("watch %s: %w", name, err)
	}
	var last *osvcv1.Run
	var steps []*osvcv1.StepRecord
	seen := make(map[string]bool)
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("watch %s: %w", name, err)
		}
		last = resp.GetRun()
		for _, s := range last.GetSteps() {
			// A step ran once per start time; only its end is kept.
			key := s.GetStep().String() + s.GetStartTime().AsTime().String()
			if s.GetEndTime() != nil && !seen[key] {
				seen[key] = true
				steps = append(steps, s)
			}
		}
	}
	if last.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		return nil, nil, fmt.Errorf("%s ended %s: %s", name, last.GetState(), last.GetError())
	}
	return last, steps, nil
}
