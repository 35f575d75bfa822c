// Package pipeline services one run on the agent: drive → stage → copy →
// mount → apply → cleanup → commit → export → swap → report.
package pipeline

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/osvc/osvc/agent/drive"
	"github.com/osvc/osvc/agent/engine"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/names"
	"github.com/osvc/osvc/pkg/runlogs"
	"github.com/osvc/osvc/pkg/transfer"
)

// Reporter carries a run's reports to the server. The run name and fencing
// token are the reporter's business. An error matching errdefs.ErrStaleLease
// or errdefs.ErrNotFound means the run is no longer ours: the pipeline stops,
// discards its work and reports nothing more.
type Reporter interface {
	Step(ctx context.Context, s *osvcv1.StepRecord) error
	// Progress reports how far the run is: its percent, the update being
	// applied, the bytes the running step moved. The reporter fills in the
	// run and its fencing token.
	Progress(ctx context.Context, p *osvcv1.Progress) error
	UpdateResult(ctx context.Context, r *osvcv1.UpdateResult) error
	// Logs queues log lines (numbered per run from 1); it must not block.
	Logs(lines []*osvcv1.LogLine)
	Result(ctx context.Context, r *osvcv1.RunResult) error
}

// UpdateFiles serves the update files a run applies; the agent's update
// cache (agent/cache) is one.
type UpdateFiles interface {
	// Acquire returns the path of the verified file with that sha256,
	// fetching it when needed; progress tells how a download goes. The file
	// stays as it is at path until release is called.
	Acquire(ctx context.Context, sha256 string, progress transfer.ProgressFunc) (path string, release func(), err error)
}

// ImageTransfer moves images between the content library and the work
// folder: the source version in, the serviced result out. transfer.Client is
// one, over the server's ContentService.
type ImageTransfer interface {
	// Fetch makes dst a verified copy of the blob sha256 for use: with
	// transfer.ReadOnly it may be the library's own file (a hard link),
	// which the run must then never write.
	Fetch(ctx context.Context, sha256, dst string, use transfer.Use, progress transfer.ProgressFunc) (transfer.Source, error)
	// Store stores the file at path in the content library and takes it:
	// once stored, path is gone (see transfer.Client.Store).
	Store(ctx context.Context, path, mediaType string, progress transfer.ProgressFunc) (*osvcv1.Content, error)
}

// Config is what a run needs from the agent.
type Config struct {
	// Engine services the image when NewEngine is nil.
	Engine engine.Engine
	// NewEngine, when set, makes an engine logging to the run's logger, so
	// that the engine's output (wimlib-imagex's lines) lands in the run log.
	NewEngine engine.RunEngine
	// UpdateFiles serves the updates' files.
	UpdateFiles UpdateFiles
	// Images downloads the source version and uploads the result.
	Images ImageTransfer
	// Sources, when set, is the cache the source version is fetched
	// through (the agent's cache, which holds images as well as update
	// files): there it is fetched as the chunks the versions it holds lack
	// (last month's version), then copied into the work folder, so that
	// nothing a run does writes the cached file. nil fetches the source
	// with Images.Fetch.
	Sources UpdateFiles
	// Drive is the resolved folder runs work under: <Drive>/OfflineImageServicing/<run id>.
	Drive string
	// DriveReason says whose setting Drive is, for the run's log: the
	// site's, or the agent's --drive overriding it.
	DriveReason string
	// DriveFallback, when not nil, is why the drive setting (a drive or a
	// folder this server lacks) gave way to the Automatic drive: each run
	// says so in its log, which the administrator reads.
	DriveFallback error
	Logger        hclog.Logger
	// ReportTimeout bounds the final report sent after a cancel; default 30s.
	ReportTimeout time.Duration
	// LogUploadTimeout bounds the upload of each of the run's log files
	// when the run ends; default DefaultLogUploadTimeout.
	LogUploadTimeout time.Duration
	// MaxLogFileBytes bounds each uploaded log file; default
	// runlogs.MaxBytes, the limit the server enforces. Tests lower it.
	MaxLogFileBytes int64
}

// DefaultLogUploadTimeout is long enough for a log file at the limit over a
// slow site link, short enough that a server that does not answer delays
// the run's result by minutes, not for ever.
const DefaultLogUploadTimeout = 2 * time.Minute

// minLogFileBytes is the least MaxLogFileBytes may be.
const minLogFileBytes = 1 << 10

// Folder and file names inside the work folder.
const (
	// WorkFolder is the folder under the drive that holds one folder per run.
	WorkFolder = "OfflineImageServicing"
	// LogFile is the run's own log, kept in the work folder after the run
	// and uploaded as one of its artifacts.
	LogFile = runlogs.ServicingLog
	// EngineLogFile is the engine's log (DISM's /LogPath, the wimlib
	// engine's own), kept and uploaded like LogFile when the engine wrote it.
	EngineLogFile = runlogs.EngineLog
	// MediaTypeWIM is the media type of uploaded images.
	MediaTypeWIM = "application/x-ms-wim"
)

// ErrDiscard is the cause (context.WithCancelCause) with which the agent
// cancels a run that is no longer its own, or that it drops on shutdown: the
// pipeline discards its work and reports nothing. Any other cancel is a cancel
// asked by the server and ends in a CANCELED report.
var ErrDiscard = errors.New("run discarded")

// ErrLost is returned when the server refused a report as stale (Aborted) or
// of an unknown run (NotFound): the work was discarded without reports.
var ErrLost = errors.New("run is no longer this agent's")

// Phases of the overall percent: staging and copying are downloads, applying
// is the bulk, the rest is commit, export and upload.
const (
	pctStageEnd = 10
	pctCopyEnd  = 20
	pctApplyEnd = 80
	pctSwapEnd  = 99
)

// progressEvery throttles Progress reports: every one is a server write.
const progressEvery = time.Second

// Run services the assigned run and reports through rep. It returns nil when
// the run ended with a reported result (succeeded, failed or canceled), an
// error wrapping ErrLost or ErrDiscard when its work was discarded without a
// result, or the error that kept the result from being reported.
func Run(ctx context.Context, cfg Config, a *osvcv1.Assign, rep Reporter) error {
	if cfg.Engine == nil && cfg.NewEngine == nil {
		return errors.New("pipeline: Engine is required")
	}
	if cfg.UpdateFiles == nil || cfg.Images == nil {
		return errors.New("pipeline: UpdateFiles and Images are required")
	}
	if cfg.Drive == "" {
		return errors.New("pipeline: Drive is required")
	}
	if rep == nil {
		return errors.New("pipeline: a Reporter is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.ReportTimeout <= 0 {
		cfg.ReportTimeout = 30 * time.Second
	}
	if cfg.LogUploadTimeout <= 0 {
		cfg.LogUploadTimeout = DefaultLogUploadTimeout
	}
	if cfg.MaxLogFileBytes <= 0 {
		cfg.MaxLogFileBytes = runlogs.MaxBytes
	}
	if cfg.MaxLogFileBytes < minLogFileBytes {
		return fmt.Errorf("pipeline: MaxLogFileBytes %d: want at least %d, room for the note a cut log file starts with", cfg.MaxLogFileBytes, minLogFileBytes)
	}
	runName := a.GetRun().GetName()
	runID, ok := strings.CutPrefix(runName, "runs/")
	if !ok || names.ValidateID(runID) != nil {
		// Nothing can be reported for a run without a valid name.
		return fmt.Errorf("pipeline: assignment names run %q: want runs/{id}", runName)
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	r := &run{
		cfg:    cfg,
		a:      a,
		rep:    rep,
		id:     runID,
		work:   filepath.Join(cfg.Drive, WorkFolder, runID),
		cancel: cancel,
	}
	r.logOut = &lazyFile{}
	r.log = r.newLogger()
	defer r.logOut.Close()
	return r.run(ctx)
}

// run is one run under way.
type run struct {
	cfg    Config
	a      *osvcv1.Assign
	rep    Reporter
	id     string
	work   string
	cancel context.CancelCauseFunc
	log    hclog.Logger
	logOut *lazyFile
	eng    engine.Engine

	// mount is the mounted index, nil when none is mounted.
	mount *engine.Mount
	// releases let go of the staged update files, once the work folder no
	// longer links them.
	releases []func()
	// lostErr is set once a report was refused as stale.
	mu      sync.Mutex
	lostErr error
}

// stepError is a failure of a step, reported as the run's error.
type stepError struct {
	step osvcv1.Step
	err  error
}

func (e *stepError) Error() string { return e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

func (r *run) run(ctx context.Context) error {
	r.log.Info("run assigned", "run", r.a.GetRun().GetName(), "kind", r.a.GetRun().GetKind().String(), "image", r.a.GetImage().GetName(),
		"source_version", r.a.GetSource().GetVersion(), "source_sha256", r.a.GetSource().GetSha256(),
		"updates", len(r.a.GetUpdates()), "fencing_token", r.a.GetRun().GetFencingToken())

	var res *osvcv1.RunResult
	var runErr error
	if r.a.GetRun().GetKind() == osvcv1.RunKind_RUN_KIND_INSPECTION {
		res, runErr = r.inspect(ctx)
	} else {
		res, runErr = r.service(ctx)
	}

	// Whatever happened, never leave the copy mounted.
	r.discardMount(ctx)
	// Deferred in this order, the update files are released after tidy
	// removed the work folder's links to them.
	defer r.releaseUpdateFiles()
	defer r.tidy(ctx)

	if lost := r.lost(); lost != nil {
		return r.dropped(lost)
	}
	if runErr == nil && ctx.Err() != nil {
		// A cancel that came after the work was done but before its result
		// went out still wins: the result is never sent under an ended ctx.
		runErr = context.Cause(ctx)
	}
	res, err := r.outcome(ctx, res, runErr)
	if err != nil {
		return err
	}
	// The run's log files go with its result, whatever it is: uploaded
	// once the outcome is in the run log, named in the result, and recorded
	// by the server in the transaction that checks the fencing token.
	res.Artifacts = r.uploadLogs(ctx)
	if lost := r.lost(); lost != nil {
		return r.dropped(lost)
	}
	if cause := context.Cause(ctx); ctx.Err() != nil {
		if errors.Is(cause, ErrDiscard) {
			r.log.Warn("run discarded", "reason", cause)
			return cause
		}
		if res.GetState() == osvcv1.RunState_RUN_STATE_SUCCEEDED {
			r.log.Warn("run canceled while its log files were uploaded: changes discarded", "reason", cause)
			res = &osvcv1.RunResult{State: osvcv1.RunState_RUN_STATE_CANCELED, Error: causeText(cause), Artifacts: res.Artifacts}
		}
		// Canceled: the result still goes, within its own time.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.ReportTimeout)
		defer cancel()
		ctx = rctx
	}
	if err := r.rep.Result(ctx, res); err != nil {
		return r.reportFailed(err)
	}
	return nil
}

// dropped ends a run the server gave to another lease: nothing more is
// reported.
func (r *run) dropped(lost error) error {
	r.log.Warn("the server no longer gives this run to this agent: work discarded, no more reports", "error", lost)
	return fmt.Errorf("%w: %w", ErrLost, lost)
}

// outcome writes how the run ended to the run log and returns the result to
// report, or the cause when the agent discards the run without a result.
// Logged before the result: once it is in, the server takes no more lines.
func (r *run) outcome(ctx context.Context, res *osvcv1.RunResult, runErr error) (*osvcv1.RunResult, error) {
	if runErr == nil {
		r.log.Info("run succeeded", "result_sha256", res.GetResultSha256(), "result_size", res.GetResultSizeBytes())
		return res, nil
	}
	if cause := context.Cause(ctx); ctx.Err() != nil {
		if errors.Is(cause, ErrDiscard) {
			r.log.Warn("run discarded", "reason", cause)
			return nil, cause
		}
		r.log.Warn("run canceled: changes discarded", "reason", cause)
		return &osvcv1.RunResult{State: osvcv1.RunState_RUN_STATE_CANCELED, Error: causeText(cause)}, nil
	}
	r.log.Error("run failed: changes discarded", "error", runErr)
	return &osvcv1.RunResult{State: osvcv1.RunState_RUN_STATE_FAILED, Error: runErr.Error()}, nil
}

func causeText(cause error) string {
	if cause == nil || errors.Is(cause, context.Canceled) {
		return "canceled"
	}
	return cause.Error()
}

func (r *run) reportFailed(err error) error {
	if isLost(err) {
		return fmt.Errorf("%w: %w", ErrLost, err)
	}
	return fmt.Errorf("report the result of %s: %w", r.a.GetRun().GetName(), err)
}

// isLost tells a refusal meaning "not your run any more": a stale fencing
// token, or a run the server no longer has.
func isLost(err error) bool {
	return errors.Is(err, errdefs.ErrStaleLease) || errors.Is(err, errdefs.ErrNotFound)
}

func (r *run) lost() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lostErr
}

// report checks a report's error: a stale-token refusal stops the run at once.
func (r *run) report(err error) error {
	if err == nil {
		return nil
	}
	if isLost(err) {
		r.mu.Lock()
		if r.lostErr == nil {
			r.lostErr = err
		}
		r.mu.Unlock()
		r.cancel(fmt.Errorf("%w: %w", ErrDiscard, err))
	}
	return fmt.Errorf("report to the server: %w", err)
}

// step reports a step running, runs fn and reports how it ended.
func (r *run) step(ctx context.Context, step osvcv1.Step, detail string, fn func() (string, error)) error {
	start := timestamppb.Now()
	name := strings.TrimPrefix(step.String(), "STEP_")
	r.log.Info("step started", "step", name, "detail", detail)
	if err := r.report(r.rep.Step(ctx, &osvcv1.StepRecord{Step: step, State: osvcv1.StepState_STEP_STATE_RUNNING, StartTime: start, Detail: detail})); err != nil {
		return err
	}
	done, err := fn()
	rec := &osvcv1.StepRecord{Step: step, State: osvcv1.StepState_STEP_STATE_DONE, StartTime: start, EndTime: timestamppb.Now(), Detail: done}
	if err != nil {
		if ctx.Err() != nil || r.lost() != nil {
			// A cancel ends in the run's result; a lost run reports nothing.
			return err
		}
		rec.State = osvcv1.StepState_STEP_STATE_FAILED
		rec.Detail = err.Error()
		r.log.Error("step failed", "step", name, "error", err)
		if rerr := r.report(r.rep.Step(ctx, rec)); rerr != nil {
			return rerr
		}
		return &stepError{step: step, err: err}
	}
	r.log.Info("step done", "step", name, "detail", done)
	return r.report(r.rep.Step(ctx, rec))
}

// skip reports a step that does not apply to this run.
func (r *run) skip(ctx context.Context, step osvcv1.Step, why string) error {
	now := timestamppb.Now()
	r.log.Info("step skipped", "step", strings.TrimPrefix(step.String(), "STEP_"), "reason", why)
	return r.report(r.rep.Step(ctx, &osvcv1.StepRecord{Step: step, State: osvcv1.StepState_STEP_STATE_SKIPPED, StartTime: now, EndTime: now, Detail: why}))
}

// service runs the steps; it returns the result to report on success.
func (r *run) service(ctx context.Context) (*osvcv1.RunResult, error) {
	removeSuperseded := r.a.GetRun().GetRemoveSuperseded()
	if err := r.driveStep(ctx, servicingSpace); err != nil {
		return nil, err
	}
	if err := r.step(ctx, osvcv1.Step_STEP_STAGE, "", func() (string, error) {
		staged, err := r.stage(ctx)
		if err != nil {
			return "", err
		}
		if err := r.linkUpdateFiles(staged); err != nil {
			return "", err
		}
		return fmt.Sprintf("%d files staged", len(staged)), nil
	}); err != nil {
		return nil, err
	}
	source, indexes, err := r.copyStep(ctx)
	if err != nil {
		return nil, err
	}
	if err := r.verifyStep(ctx, osvcv1.Step_STEP_VERIFY, source, r.sourceName()); err != nil {
		return nil, err
	}
	if removeSuperseded && len(indexes) > 1 {
		// The server refuses such a schedule; a run queued before it did, or
		// a catalog that counted the indexes wrong, fails here before
		// anything is mounted rather than silently skip the cleanup.
		return nil, fmt.Errorf("%s has %d indexes, and superseded updates are removed only from an image of one index: schedule it again without remove superseded", r.sourceName(), len(indexes))
	}
	cleanup := removeSuperseded

	// Updates in the order assigned; with cleanup, .NET updates go after it.
	var first, afterCleanup []*osvcv1.Update
	for _, u := range r.a.GetUpdates() {
		if cleanup && u.GetClassification() == osvcv1.Classification_CLASSIFICATION_DOTNET {
			afterCleanup = append(afterCleanup, u)
		} else {
			first = append(first, u)
		}
	}
	ap := &applyPlan{total: len(indexes) * max(1, len(r.a.GetUpdates()))}

	var failed error
	committed := 0
	for _, ix := range indexes {
		index := ix.Index
		if failed != nil {
			r.skipUpdates(ctx, index, r.a.GetUpdates())
			continue
		}
		changed, err := r.serviceIndex(ctx, source, index, ap, first, afterCleanup, cleanup)
		if changed {
			committed++
		}
		if err != nil {
			var se *stepError
			if !errors.As(err, &se) || ctx.Err() != nil || r.lost() != nil {
				return nil, err
			}
			// Later indexes are not serviced: their updates are SKIPPED.
			failed = err
		}
	}
	if failed != nil {
		if err := r.lost(); err != nil {
			return nil, err
		}
		return nil, failed
	}
	if committed == 0 {
		// Every index was discarded: the copy is still the source version,
		// byte for byte. Uploading it (or an export of it) would make a new
		// version equal to the current one and push the real rollback point
		// out of the image.
		return r.unchanged(ctx, source)
	}

	result := source
	if removeSuperseded {
		result = filepath.Join(r.work, "export.wim")
		if err := r.step(ctx, osvcv1.Step_STEP_EXPORT, result, func() (string, error) { return r.export(ctx, source, indexes, result) }); err != nil {
			return nil, err
		}
	} else if err := r.skip(ctx, osvcv1.Step_STEP_EXPORT, "remove superseded updates is off: the committed copy is the result"); err != nil {
		return nil, err
	}

	// A damaged result never leaves the agent: it would become a version.
	if err := r.verifyStep(ctx, osvcv1.Step_STEP_VERIFY_RESULT, result,
		fmt.Sprintf("the serviced image (%s), nothing uploaded,", r.sourceName())); err != nil {
		return nil, err
	}
	var uploaded *osvcv1.Content
	var resultIndexes []*osvcv1.ImageIndex
	if err := r.step(ctx, osvcv1.Step_STEP_SWAP, "", func() (string, error) {
		// Read before the upload, which takes the file (see ImageTransfer.Store).
		var err error
		if resultIndexes, err = r.describe(ctx, result); err != nil {
			return "", err
		}
		uploaded, err = r.upload(ctx, result)
		if err != nil {
			return "", err
		}
		return "uploaded " + uploaded.GetSha256(), nil
	}); err != nil {
		return nil, err
	}
	if err := r.step(ctx, osvcv1.Step_STEP_REPORT, "", func() (string, error) {
		return fmt.Sprintf("%d indexes, %s", len(resultIndexes), humanize.IBytes(uint64(uploaded.GetSizeBytes()))), nil
	}); err != nil {
		return nil, err
	}
	return &osvcv1.RunResult{
		State:           osvcv1.RunState_RUN_STATE_SUCCEEDED,
		ResultSha256:    uploaded.GetSha256(),
		ResultSizeBytes: uploaded.GetSizeBytes(),
		Indexes:         resultIndexes,
	}, nil
}

// unchanged ends a run that changed nothing: no export, no upload, and a
// result naming the source version, which the server takes as "the image
// stays at its current version".
func (r *run) unchanged(ctx context.Context, source string) (*osvcv1.RunResult, error) {
	src := r.a.GetSource()
	if err := r.skip(ctx, osvcv1.Step_STEP_EXPORT, "nothing changed the image"); err != nil {
		return nil, err
	}
	if err := r.skip(ctx, osvcv1.Step_STEP_SWAP, fmt.Sprintf("nothing changed the image: nothing uploaded, version %d stays current", src.GetVersion())); err != nil {
		return nil, err
	}
	size := src.GetSizeBytes()
	var indexes []*osvcv1.ImageIndex
	if err := r.step(ctx, osvcv1.Step_STEP_REPORT, "", func() (string, error) {
		// The copy was never committed: describing it describes the source version.
		var err error
		if indexes, err = r.describe(ctx, source); err != nil {
			return "", err
		}
		if size <= 0 {
			st, err := os.Stat(source)
			if err != nil {
				return "", fmt.Errorf("size of the source copy: %w", err)
			}
			size = st.Size()
		}
		return fmt.Sprintf("%d indexes, unchanged version %d (%s)", len(indexes), src.GetVersion(), humanize.IBytes(uint64(size))), nil
	}); err != nil {
		return nil, err
	}
	r.log.Info("nothing changed the image: reporting the source version as the result", "version", src.GetVersion(), "sha256", src.GetSha256())
	return &osvcv1.RunResult{
		State:           osvcv1.RunState_RUN_STATE_SUCCEEDED,
		ResultSha256:    src.GetSha256(),
		ResultSizeBytes: size,
		Indexes:         indexes,
	}, nil
}

// How many times the image's size a run needs on its drive: servicing a
// copy, its mount and its export; inspecting a copy.
const (
	servicingSpace  = 3
	inspectionSpace = 1
)

// driveStep checks the drive, opens the run log and starts the engine; an
// earlier attempt's leftovers in the work folder are discarded.
func (r *run) driveStep(ctx context.Context, space int64) error {
	return r.step(ctx, osvcv1.Step_STEP_DRIVE, r.work, func() (string, error) {
		detail, err := r.drive(space)
		if err != nil {
			return "", err
		}
		// The engine logs into the run log from here on.
		if err := r.startEngine(); err != nil {
			return "", err
		}
		// An earlier attempt of this run on this agent may have crashed
		// and left its mount and copies: discard them before starting over.
		if err := discardMounts(ctx, r.eng, r.work, r.log); err != nil {
			return "", fmt.Errorf("clean up an earlier attempt: %w", err)
		}
		if _, err := tidyWork(ctx, r.eng, r.work, r.log); err != nil {
			return "", fmt.Errorf("clean up an earlier attempt: %w", err)
		}
		return detail, nil
	})
}

// copyStep downloads the source version and reads its indexes.
func (r *run) copyStep(ctx context.Context) (string, []engine.Index, error) {
	var source string
	var indexes []engine.Index
	err := r.step(ctx, osvcv1.Step_STEP_COPY, r.a.GetSource().GetSha256(), func() (string, error) {
		var err error
		if source, err = r.copySource(ctx); err != nil {
			return "", err
		}
		if indexes, err = r.eng.Inspect(ctx, source); err != nil {
			return "", fmt.Errorf("read the indexes of %s: %w", r.sourceName(), err)
		}
		if len(indexes) == 0 {
			return "", fmt.Errorf("%s has no index: import a WIM with at least one image", r.sourceName())
		}
		return fmt.Sprintf("%s: %d indexes", source, len(indexes)), nil
	})
	return source, indexes, err
}

// sourceName names the source version in messages: image images/x version 2.
func (r *run) sourceName() string {
	return fmt.Sprintf("image %s version %d", r.a.GetImage().GetName(), r.a.GetSource().GetVersion())
}

// verifyStep checks the integrity of the WIM at path (what names it) as
// step: every resource read and compared with the hash the file records.
func (r *run) verifyStep(ctx context.Context, step osvcv1.Step, path, what string) error {
	return r.step(ctx, step, path, func() (string, error) {
		start := time.Now()
		if err := r.eng.Verify(ctx, path); err != nil {
			if errors.Is(err, engine.ErrDamaged) {
				return "", fmt.Errorf("%s is damaged: %w", what, err)
			}
			return "", fmt.Errorf("verify %s: %w", what, err)
		}
		return fmt.Sprintf("verified in %s", time.Since(start).Round(time.Millisecond)), nil
	})
}

// inspect verifies the source version and reads its indexes and the
// packages installed in each: DRIVE, COPY, VERIFY, REPORT. Its result names
// the source version itself: an inspection changes no file.
func (r *run) inspect(ctx context.Context) (*osvcv1.RunResult, error) {
	if err := r.driveStep(ctx, inspectionSpace); err != nil {
		return nil, err
	}
	source, _, err := r.copyStep(ctx)
	if err != nil {
		return nil, err
	}
	if err := r.verifyStep(ctx, osvcv1.Step_STEP_VERIFY, source, r.sourceName()); err != nil {
		return nil, err
	}
	var indexes []*osvcv1.ImageIndex
	if err := r.step(ctx, osvcv1.Step_STEP_REPORT, "", func() (string, error) {
		var err error
		if indexes, err = r.describe(ctx, source); err != nil {
			return "", err
		}
		installed := 0
		for _, ix := range indexes {
			installed += len(ix.GetInstalledUpdates())
		}
		return fmt.Sprintf("%d indexes, %d installed packages", len(indexes), installed), nil
	}); err != nil {
		return nil, err
	}
	src := r.a.GetSource()
	return &osvcv1.RunResult{
		State:           osvcv1.RunState_RUN_STATE_SUCCEEDED,
		ResultSha256:    src.GetSha256(),
		ResultSizeBytes: src.GetSizeBytes(),
		Indexes:         indexes,
	}, nil
}

// drive checks the drive's free space (times the image's size) and
// creates the work folder.
func (r *run) drive(times int64) (string, error) {
	if r.cfg.DriveReason != "" {
		r.log.Info("offline servicing drive", "drive", r.cfg.Drive, "why", r.cfg.DriveReason)
	}
	if r.cfg.DriveFallback != nil {
		r.log.Warn("the offline servicing drive is not on this server: this run works on the Automatic drive",
			"drive", r.cfg.Drive, "reason", r.cfg.DriveFallback)
	}
	need := times * max(r.a.GetSource().GetSizeBytes(), r.a.GetRun().GetSourceSizeBytes())
	space, err := drive.SpaceOf(r.cfg.Drive)
	if err != nil {
		return "", fmt.Errorf("drive %s: %w: set --drive to a folder on a volume with free space", r.cfg.Drive, err)
	}
	free := space.Free
	if free < need {
		return "", fmt.Errorf("drive %s has %s free, %s needs %s (%d times the image's %s): free space or set --drive",
			r.cfg.Drive, humanize.IBytes(uint64(free)), r.sourceName(), humanize.IBytes(uint64(need)), times, humanize.IBytes(uint64(need/times)))
	}
	if err := os.MkdirAll(r.work, 0o750); err != nil {
		return "", fmt.Errorf("create the work folder: %w: set --drive to a writable folder", err)
	}
	r.touchWork()
	if err := r.logOut.Open(filepath.Join(r.work, LogFile)); err != nil {
		return "", fmt.Errorf("open the run log: %w", err)
	}
	return fmt.Sprintf("%s: %s free, %s needed", r.work, humanize.IBytes(uint64(free)), humanize.IBytes(uint64(need))), nil
}

func (r *run) startEngine() error {
	if r.cfg.NewEngine == nil {
		r.eng = r.cfg.Engine
		return nil
	}
	eng, err := r.cfg.NewEngine(r.log, r.work)
	if err != nil {
		return fmt.Errorf("start the engine: %w", err)
	}
	r.eng = eng
	return nil
}

// stage gets every update file from the cache, which downloads the files
// it lacks, and holds them until the run ends. It returns the path of each
// file by sha256.
func (r *run) stage(ctx context.Context) (map[string]string, error) {
	type item struct {
		sha  string
		size int64
		name string
	}
	var todo []item
	staged := make(map[string]string)
	var total int64
	for _, u := range r.a.GetUpdates() {
		for _, f := range u.GetFiles() {
			sha := f.GetSha256()
			if !transfer.ValidSHA256(sha) {
				return nil, fmt.Errorf("update %s: file %q has sha256 %q: want 64 lower-case hex digits", u.GetName(), f.GetFileName(), sha)
			}
			if _, ok := staged[sha]; ok {
				continue
			}
			staged[sha] = ""
			todo = append(todo, item{sha, f.GetSizeBytes(), f.GetFileName()})
			total += f.GetSizeBytes()
		}
	}
	pp := r.startProgress(ctx)
	defer pp.stop()
	var done int64
	for _, it := range todo {
		base := done
		// Told from the cache's download goroutine.
		var downloaded atomic.Bool
		path, release, err := r.cfg.UpdateFiles.Acquire(ctx, it.sha, func(n, _ int64) {
			downloaded.Store(true)
			if total > 0 {
				pp.set(int32(int64(pctStageEnd)*min(base+n, total)/total), nil)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("stage %s: %w", it.name, err)
		}
		r.releases = append(r.releases, release)
		staged[it.sha] = path
		r.log.Info("update file staged", "file", it.name, "sha256", it.sha, "downloaded", downloaded.Load())
		done += it.size
	}
	pp.set(pctStageEnd, nil)
	return staged, nil
}

// releaseUpdateFiles lets the cache evict the run's update files again.
func (r *run) releaseUpdateFiles() {
	for _, release := range r.releases {
		release()
	}
	r.releases = nil
}

// copySource fetches the source version into the work folder. A servicing
// run mounts its copy read-write and commits into it, so the copy must be
// its own: on the library's volume a hard link would let the commit rewrite
// the library's blob, the image's current version. An inspection only reads
// its copy, which may be the library's file itself.
func (r *run) copySource(ctx context.Context) (string, error) {
	sha := r.a.GetSource().GetSha256()
	if !transfer.ValidSHA256(sha) {
		return "", fmt.Errorf("the assignment's source version has sha256 %q: want 64 lower-case hex digits", sha)
	}
	use := transfer.Writable
	if r.a.GetRun().GetKind() == osvcv1.RunKind_RUN_KIND_INSPECTION {
		use = transfer.ReadOnly
	}
	dst := filepath.Join(r.work, "source.wim")
	size := r.a.GetSource().GetSizeBytes()
	pp := r.startProgress(ctx)
	defer pp.stop()
	cb := &copyBytes{size: size, viaCache: r.cfg.Sources != nil, report: func(done, total int64) {
		pct := int32(pctStageEnd)
		if total > 0 {
			pct += int32(int64(pctCopyEnd-pctStageEnd) * min(done, total) / total)
		}
		pp.setBytes(pct, osvcv1.Step_STEP_COPY, done, total)
	}}
	var how string
	var err error
	if r.cfg.Sources != nil {
		how, err = r.copyCached(ctx, sha, dst, use, cb)
	} else {
		var src transfer.Source
		src, err = r.cfg.Images.Fetch(ctx, sha, dst, use, cb.fetched)
		how = src.String()
	}
	if err != nil {
		return "", fmt.Errorf("copy %s version %d (%s): %w", r.a.GetImage().GetName(), r.a.GetSource().GetVersion(), sha, err)
	}
	r.log.Info("source version copied", "sha256", sha, "how", how)
	cb.finish()
	return dst, nil
}

// copyBytes counts the bytes of the COPY step: the download of the source
// version, then, through the agent's cache (viaCache), its copy into the
// work folder. Whether the cache lacks the version shows with the first
// progress of a download, before anything is reported: the step then moves
// the version twice, and says so in its total.
type copyBytes struct {
	size     int64
	viaCache bool
	report   func(done, total int64)

	mu         sync.Mutex
	fetchTotal int64 // 0 until a download reports
}

// fetched is the download's progress.
func (c *copyBytes) fetched(n, total int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fetchTotal = cmp.Or(max(total, 0), c.size)
	c.report(n, c.fetchTotal+c.copyTotal())
}

// copied is the progress of the copy out of the cache.
func (c *copyBytes) copied(n, total int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.report(c.fetchTotal+n, c.fetchTotal+cmp.Or(max(total, 0), c.size))
}

// finish reports the step's bytes all done.
func (c *copyBytes) finish() {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := c.fetchTotal + c.copyTotal()
	c.report(total, total)
}

func (c *copyBytes) copyTotal() int64 {
	if c.viaCache {
		return c.size
	}
	return 0
}

// copyCached fetches the source version sha into the cache (verified there,
// hashed once) and copies it to dst: a copy of its own for a servicing run,
// which commits into it; for an inspection, which only reads, a hard link
// where the volume allows. The cached file itself is never handed to the
// engine, so a failed or canceled run leaves it as it was.
func (r *run) copyCached(ctx context.Context, sha, dst string, use transfer.Use, cb *copyBytes) (string, error) {
	path, release, err := r.cfg.Sources.Acquire(ctx, sha, cb.fetched)
	if err != nil {
		return "", err
	}
	defer release()
	how, err := transfer.CopyLocalProgress(ctx, path, dst, use, cb.copied)
	if err != nil {
		return "", err
	}
	if how == transfer.Linked {
		return "fetched through the agent's cache, linked from there", nil
	}
	return "fetched through the agent's cache, copied from there", nil
}

// linkUpdateFiles gives each update file its own name again (engines decide
// what they can apply by the file's type) with a link into the cache, in
// <work>/updates/<update>-<file>/<name>.
func (r *run) linkUpdateFiles(staged map[string]string) error {
	for i, u := range r.a.GetUpdates() {
		for j, f := range u.GetFiles() {
			name := filepath.Base(f.GetFileName())
			if name == "." || name == ".." || name == string(filepath.Separator) || name != f.GetFileName() {
				return fmt.Errorf("update %s: file name %q: want a plain file name", u.GetName(), f.GetFileName())
			}
			dst := r.linked(i, j)
			if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
				return fmt.Errorf("link update files: %w", err)
			}
			src, err := filepath.Abs(staged[f.GetSha256()])
			if err != nil {
				return fmt.Errorf("link update files: %w", err)
			}
			// A hard link when the cache is on the same volume, else a symlink.
			if err := os.Link(src, dst); err != nil {
				if err := os.Symlink(src, dst); err != nil {
					return fmt.Errorf("link update file %s: %w", name, err)
				}
			}
		}
	}
	return nil
}

// applyPlan tracks progress over every update of every index.
type applyPlan struct {
	total int
	done  int
}

func (p *applyPlan) percent(within int) int32 {
	span := pctApplyEnd - pctCopyEnd
	return int32(pctCopyEnd + (span*p.done+span*within/100)/max(1, p.total))
}

// serviceIndex mounts one index, applies the updates, cleans up when asked
// and commits. An index that no update changed (none APPLIED) and that was
// not cleaned up is discarded instead of committed: a commit would rewrite
// the WIM without changing what it holds. changed tells whether the index was
// committed.
//
// Indexes are serviced one after the other through one mount (a WIM is
// mounted read-write once at a time), so the choice is made per index, before
// its commit: when every index was discarded the copy is still the source
// version and the run uploads nothing (see unchanged); when some were
// committed the result is a new version in which the discarded indexes are
// as they were.
func (r *run) serviceIndex(ctx context.Context, source string, index int, ap *applyPlan, first, afterCleanup []*osvcv1.Update, cleanup bool) (changed bool, err error) {
	detail := fmt.Sprintf("index %d", index)
	mountDir := filepath.Join(r.work, "mount")
	if err := r.step(ctx, osvcv1.Step_STEP_MOUNT, detail, func() (string, error) {
		if err := os.MkdirAll(mountDir, 0o750); err != nil {
			return "", fmt.Errorf("create the mount folder: %w", err)
		}
		// A mount left in the folder (an attempt that crashed) would make
		// the mount fail: it holds nothing to keep, so discard it.
		if err := discardMounts(ctx, r.eng, mountDir, r.log); err != nil {
			return "", err
		}
		m, err := r.eng.Mount(ctx, source, index, mountDir)
		if err != nil {
			return "", err
		}
		r.mount = m
		return fmt.Sprintf("index %d (%s) mounted", index, m.Info.Name), nil
	}); err != nil {
		r.skipUpdates(ctx, index, r.a.GetUpdates())
		return false, err
	}

	applied, err := r.applyAll(ctx, index, ap, first, detail)
	if err != nil {
		r.skipUpdates(ctx, index, afterCleanup)
		return false, err
	}
	switch {
	case cleanup && applied > 0:
		if err := r.step(ctx, osvcv1.Step_STEP_CLEANUP, detail, func() (string, error) {
			if err := r.eng.Cleanup(ctx, r.mount); err != nil {
				return "", err
			}
			return "superseded components removed", nil
		}); err != nil {
			r.skipUpdates(ctx, index, afterCleanup)
			return false, err
		}
	case cleanup:
		// What nothing superseded has nothing to remove, and a run whose
		// updates all were installed or not applicable adds no version.
		if err := r.skip(ctx, osvcv1.Step_STEP_CLEANUP, detail+": no update applied, nothing superseded to remove"); err != nil {
			return false, err
		}
	default:
		if err := r.skip(ctx, osvcv1.Step_STEP_CLEANUP, "remove superseded updates is off"); err != nil {
			return false, err
		}
	}
	if len(afterCleanup) > 0 {
		more, err := r.applyAll(ctx, index, ap, afterCleanup, detail+": .NET updates after cleanup")
		if err != nil {
			return false, err
		}
		applied += more
	}
	commit := applied > 0
	err = r.step(ctx, osvcv1.Step_STEP_COMMIT, detail, func() (string, error) {
		m := r.mount
		r.mount = nil // committed or discarded by Unmount, whatever it returns
		if err := r.eng.Unmount(ctx, m, commit); err != nil {
			return "", err
		}
		if !commit {
			return fmt.Sprintf("index %d discarded, not committed: nothing changed it (no update applied)", index), nil
		}
		return fmt.Sprintf("index %d committed", index), nil
	})
	return err == nil && commit, err
}

// applyAll applies updates in order as one APPLY step and returns how many
// ended APPLIED. A failed update stops the rest (SKIPPED) unless the run
// continues on error.
func (r *run) applyAll(ctx context.Context, index int, ap *applyPlan, updates []*osvcv1.Update, detail string) (applied int, err error) {
	if len(updates) == 0 {
		return 0, r.skip(ctx, osvcv1.Step_STEP_APPLY, detail+": no updates")
	}
	continueOnError := r.a.GetRun().GetContinueOnError()
	err = r.step(ctx, osvcv1.Step_STEP_APPLY, detail, func() (string, error) {
		counts := map[osvcv1.UpdateState]int{}
		var failures []string
		for k, u := range updates {
			state, msg, err := r.applyOne(ctx, index, ap, u)
			ap.done++
			if err != nil {
				return "", err
			}
			counts[state]++
			if state == osvcv1.UpdateState_UPDATE_STATE_APPLIED {
				applied++
			}
			if state == osvcv1.UpdateState_UPDATE_STATE_FAILED {
				failures = append(failures, fmt.Sprintf("%s: %s", updateLabel(u), msg))
				if !continueOnError {
					r.skipUpdates(ctx, index, updates[k+1:])
					ap.done += len(updates) - k - 1
					if err := r.lost(); err != nil {
						return "", err
					}
					return "", fmt.Errorf("index %d: %s failed: %s (continue on error is off)", index, updateLabel(u), msg)
				}
			}
		}
		if len(failures) > 0 {
			// Continue on error: the other updates are committed; the
			// failures stay on record in the update results and the log.
			r.log.Warn("updates failed, continuing (continue on error)", "index", index, "failed", strings.Join(failures, "; "))
			return fmt.Sprintf("%s, %d failed", summary(counts), len(failures)), nil
		}
		return summary(counts), nil
	})
	return applied, err
}

func summary(counts map[osvcv1.UpdateState]int) string {
	var parts []string
	for _, s := range []osvcv1.UpdateState{
		osvcv1.UpdateState_UPDATE_STATE_APPLIED, osvcv1.UpdateState_UPDATE_STATE_ALREADY_INSTALLED,
		osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE, osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED,
	} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], strings.ToLower(strings.TrimPrefix(s.String(), "UPDATE_STATE_"))))
		}
	}
	if len(parts) == 0 {
		return "nothing applied"
	}
	return strings.Join(parts, ", ")
}

func updateLabel(u *osvcv1.Update) string {
	if u.GetKb() != "" {
		return u.GetKb()
	}
	return u.GetName()
}

// applyOne applies one update's files to the mounted index and reports its
// result. err is set only when the run must stop (cancel, lost run).
func (r *run) applyOne(ctx context.Context, index int, ap *applyPlan, u *osvcv1.Update) (osvcv1.UpdateState, string, error) {
	ui := updateIndex(r.a.GetUpdates(), u)
	start := timestamppb.Now()
	res := &osvcv1.UpdateResult{Update: u.GetName(), Kb: u.GetKb(), Index: int32(index), State: osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS, StartTime: start}
	if err := r.report(r.rep.Progress(ctx, &osvcv1.Progress{Percent: ap.percent(0), Update: res})); err != nil {
		return 0, "", err
	}
	r.log.Info("applying update", "update", u.GetName(), "kb", u.GetKb(), "index", index, "files", len(u.GetFiles()))
	pp := r.startProgress(ctx)
	outcome, msg, err := r.applyFiles(ctx, ui, u, func(pct int) {
		p := &osvcv1.UpdateResult{Update: u.GetName(), Kb: u.GetKb(), Index: int32(index), State: osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS, Percent: int32(pct), StartTime: start}
		pp.set(ap.percent(pct), p)
	})
	pp.stop()
	if ctx.Err() != nil || r.lost() != nil {
		return 0, "", errors.Join(err, context.Cause(ctx))
	}
	final := &osvcv1.UpdateResult{Update: u.GetName(), Kb: u.GetKb(), Index: int32(index), Percent: 100, StartTime: start, EndTime: timestamppb.Now()}
	if err != nil {
		final.State = osvcv1.UpdateState_UPDATE_STATE_FAILED
		final.Message = err.Error()
		r.log.Error("update failed", "update", u.GetName(), "kb", u.GetKb(), "index", index, "error", err)
	} else {
		final.State = outcome
		final.Message = msg
		r.log.Info("update result", "update", u.GetName(), "kb", u.GetKb(), "index", index, "result", strings.TrimPrefix(outcome.String(), "UPDATE_STATE_"))
	}
	if rerr := r.report(r.rep.UpdateResult(ctx, final)); rerr != nil {
		return 0, "", rerr
	}
	return final.GetState(), final.GetMessage(), nil
}

func updateIndex(all []*osvcv1.Update, u *osvcv1.Update) int {
	for i, x := range all {
		if x == u {
			return i
		}
	}
	return -1
}

// applyFiles applies every file of an update; the update's outcome is the
// most telling of its files' (an update with an applied CAB beside an
// unsupported .exe is APPLIED).
func (r *run) applyFiles(ctx context.Context, ui int, u *osvcv1.Update, progress func(int)) (osvcv1.UpdateState, string, error) {
	if len(u.GetFiles()) == 0 {
		return 0, "", fmt.Errorf("update %s has no files", u.GetName())
	}
	rank := map[engine.Outcome]int{engine.Unsupported: 1, engine.NotApplicable: 2, engine.AlreadyInstalled: 3, engine.Applied: 4}
	var best engine.PackageResult
	n := len(u.GetFiles())
	for j, f := range u.GetFiles() {
		path := r.linked(ui, j)
		res, err := r.eng.AddPackage(ctx, r.mount, path, func(pct int) { progress((100*j + pct) / n) })
		if err != nil {
			return 0, "", fmt.Errorf("%s: %w", f.GetFileName(), err)
		}
		if rank[res.Outcome] > rank[best.Outcome] {
			best = res
		}
	}
	switch best.Outcome {
	case engine.Applied:
		return osvcv1.UpdateState_UPDATE_STATE_APPLIED, "", nil
	case engine.AlreadyInstalled:
		return osvcv1.UpdateState_UPDATE_STATE_ALREADY_INSTALLED, best.Detail, nil
	case engine.NotApplicable:
		return osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE, best.Detail, nil
	default:
		return osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED, cmp.Or(best.Detail, engine.UnsupportedMessage), nil
	}
}

func (r *run) linked(ui, j int) string {
	return filepath.Join(r.work, "updates", fmt.Sprintf("%d-%d", ui, j), filepath.Base(r.a.GetUpdates()[ui].GetFiles()[j].GetFileName()))
}

// skipUpdates reports updates that will not be applied to an index.
func (r *run) skipUpdates(ctx context.Context, index int, updates []*osvcv1.Update) {
	if ctx.Err() != nil || r.lost() != nil {
		return
	}
	for _, u := range updates {
		res := &osvcv1.UpdateResult{Update: u.GetName(), Kb: u.GetKb(), Index: int32(index), State: osvcv1.UpdateState_UPDATE_STATE_SKIPPED, Message: "not applied: an earlier step failed"}
		if err := r.report(r.rep.UpdateResult(ctx, res)); err != nil {
			r.log.Warn("reporting a skipped update failed", "update", u.GetName(), "error", err)
			return
		}
	}
}

// discardMount unmounts without committing whatever is still mounted, even
// after a cancel.
func (r *run) discardMount(ctx context.Context) {
	if r.mount == nil {
		return
	}
	m := r.mount
	r.mount = nil
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	if err := r.eng.Unmount(dctx, m, false); err != nil {
		r.log.Error("discarding the mounted index failed", "dir", m.Dir, "error", err)
		return
	}
	r.log.Info("changes discarded", "index", m.Index)
}

// export writes every index of the committed copy into a new file.
func (r *run) export(ctx context.Context, source string, indexes []engine.Index, dst string) (string, error) {
	before, err := os.Stat(source)
	if err != nil {
		return "", fmt.Errorf("export: %w", err)
	}
	// Each index is its own export: the bytes of those done so far count
	// before the one under way, whose total the engine tells as it goes.
	pp := r.startProgress(ctx)
	defer pp.stop()
	var exported int64
	for _, ix := range indexes {
		var last int64
		err := r.eng.Export(ctx, source, ix.Index, dst, func(done, total int64) {
			last = total
			pp.setBytes(pctApplyEnd, osvcv1.Step_STEP_EXPORT, exported+done, exported+total)
		})
		if err != nil {
			return "", err
		}
		exported += last
	}
	after, err := os.Stat(dst)
	if err != nil {
		return "", fmt.Errorf("export: %w", err)
	}
	return fmt.Sprintf("%s → %s", humanize.IBytes(uint64(before.Size())), humanize.IBytes(uint64(after.Size()))), nil
}

func (r *run) upload(ctx context.Context, path string) (*osvcv1.Content, error) {
	pp := r.startProgress(ctx)
	defer pp.stop()
	c, err := r.cfg.Images.Store(ctx, path, MediaTypeWIM, func(n, total int64) {
		pct := int32(pctApplyEnd)
		if total > 0 {
			pct += int32(int64(pctSwapEnd-pctApplyEnd) * n / total)
		}
		pp.setBytes(pct, osvcv1.Step_STEP_SWAP, n, total)
	})
	if err != nil {
		return nil, fmt.Errorf("upload the serviced image: %w", err)
	}
	return c, nil
}

// describe reads the result's indexes and what each has installed.
func (r *run) describe(ctx context.Context, wim string) ([]*osvcv1.ImageIndex, error) {
	indexes, err := r.eng.Inspect(ctx, wim)
	if err != nil {
		return nil, err
	}
	byIdentity := make(map[string]string)
	for _, u := range r.a.GetUpdates() {
		if u.GetPackageIdentity() != "" {
			byIdentity[strings.ToLower(u.GetPackageIdentity())] = u.GetName()
		}
	}
	out := make([]*osvcv1.ImageIndex, 0, len(indexes))
	for _, info := range indexes {
		installed, err := r.eng.ReadInstalled(ctx, wim, info.Index)
		if err != nil {
			return nil, err
		}
		ix := info.Proto()
		out = append(out, ix)
		for _, p := range installed {
			iu := &osvcv1.InstalledUpdate{
				PackageIdentity: p.Identity,
				Kb:              p.KB,
				Update:          byIdentity[strings.ToLower(p.Identity)],
				State:           p.State,
			}
			if !p.InstallTime.IsZero() {
				iu.InstallTime = timestamppb.New(p.InstallTime)
			}
			ix.InstalledUpdates = append(ix.InstalledUpdates, iu)
		}
	}
	return out, nil
}

// tidy removes the copies and the mount folder from the work folder, keeping
// the logs, and marks when the run ended for the agent's retention. A work
// folder that still holds a mount point is left alone.
func (r *run) tidy(ctx context.Context) {
	defer r.touchWork()
	eng := r.eng
	if eng == nil {
		eng = r.cfg.Engine
	}
	if eng == nil {
		return // the engine never started: the run made no copies
	}
	// A canceled run tidies too.
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if _, err := tidyWork(tctx, eng, r.work, r.log); err != nil {
		r.log.Warn("the work folder keeps leftovers: the agent removes them when it next starts", "dir", r.work, "error", err)
	}
}

// touchWork sets the work folder's modification time to now: the retention
// of a run's logs counts from its last attempt.
func (r *run) touchWork() {
	now := time.Now()
	if err := os.Chtimes(r.work, now, now); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.log.Warn("marking the work folder's time failed", "dir", r.work, "error", err)
	}
}
