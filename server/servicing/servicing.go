// Package servicing schedules the servicing of images and keeps their runs:
// creating a run, following it, cancelling it, and taking the reports of the
// agent that holds its lease, each one fenced by the lease's token.
//
// The Run proto is the stored value: what etcd holds under store.RunKey is what
// GetRun returns.
package servicing

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/runlogs"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/store"
)

const (
	defaultMaxAttempts = 3
	defaultMaxLogLines = 100000
	// A run that lost its lease waits defaultRetryBackoff before its second
	// attempt, twice that before its third, and so on up to
	// defaultMaxRetryBackoff, so a run that keeps crashing its agents is not
	// leased again in a tight loop.
	defaultRetryBackoff    = 10 * time.Second
	defaultMaxRetryBackoff = 5 * time.Minute
	runsCollection         = "runs/"
	schedulesCollection    = "schedules/"
)

// Config configures a Service.
type Config struct {
	Store   *store.Store
	Catalog *catalog.Catalog
	Library *content.Library
	Logger  hclog.Logger
	// MaxAttempts bounds how often a run is leased: a run whose lease is lost
	// on its last attempt fails. Default 3.
	MaxAttempts int
	// MaxLogLines caps the log lines stored per run; further lines are counted
	// and dropped. Default 100000.
	MaxLogLines int64
	// RetryBackoff is how long a run that lost its lease waits before it may
	// be leased again; it doubles with each attempt. Default 10s.
	RetryBackoff time.Duration
	// MaxRetryBackoff caps RetryBackoff's doubling; default 5m, and never
	// below RetryBackoff.
	MaxRetryBackoff time.Duration
	// MaxArtifactBytes is the largest log file a run's result may name;
	// default runlogs.MaxBytes, the limit agents keep to. Tests lower it.
	MaxArtifactBytes int64
	// KeepVersions is how many versions an image keeps besides its current
	// one, for rollbacks: default DefaultKeepVersions, at most
	// MaxKeepVersions. Versions pushed out are left to the content
	// collector.
	KeepVersions int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// DefaultKeepVersions keeps the version a run replaced, so that a rollback
// is a pointer move.
const DefaultKeepVersions = 1

// MaxKeepVersions bounds Config.KeepVersions: every version kept is a line
// of the image's record and a WIM in the content library.
const MaxKeepVersions = 100

// Service holds schedules and runs.
type Service struct {
	store       *store.Store
	client      *clientv3.Client
	catalog     *catalog.Catalog
	library     *content.Library
	logger      hclog.Logger
	maxAttempts int
	maxLogLines int64
	// maxArtifactBytes bounds each log file a result names.
	maxArtifactBytes int64
	backoff          time.Duration
	maxBackoff       time.Duration
	keepVersions     int
	now              func() time.Time

	droppedLogLines atomic.Int64
}

// New validates cfg and returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("servicing: Config.Store is required")
	}
	if cfg.Catalog == nil {
		return nil, errors.New("servicing: Config.Catalog is required")
	}
	if cfg.Library == nil {
		return nil, errors.New("servicing: Config.Library is required")
	}
	if cfg.MaxAttempts < 0 {
		return nil, fmt.Errorf("servicing: Config.MaxAttempts is %d; use 1 or more (0 for the default %d)", cfg.MaxAttempts, defaultMaxAttempts)
	}
	if cfg.MaxLogLines < 0 {
		return nil, fmt.Errorf("servicing: Config.MaxLogLines is %d; use 1 or more (0 for the default %d)", cfg.MaxLogLines, defaultMaxLogLines)
	}
	if cfg.MaxArtifactBytes < 0 {
		return nil, fmt.Errorf("servicing: Config.MaxArtifactBytes is %d; use a positive size (0 for the default %d)", cfg.MaxArtifactBytes, runlogs.MaxBytes)
	}
	if cfg.KeepVersions < 0 || cfg.KeepVersions > MaxKeepVersions {
		return nil, fmt.Errorf("servicing: Config.KeepVersions is %d; keep 1 to %d versions besides the current one (0 for the default %d)",
			cfg.KeepVersions, MaxKeepVersions, DefaultKeepVersions)
	}
	if cfg.RetryBackoff < 0 {
		return nil, fmt.Errorf("servicing: Config.RetryBackoff is %s; use a positive duration (0 for the default %s)", cfg.RetryBackoff, defaultRetryBackoff)
	}
	if cfg.MaxRetryBackoff < 0 {
		return nil, fmt.Errorf("servicing: Config.MaxRetryBackoff is %s; use a positive duration (0 for the default %s)", cfg.MaxRetryBackoff, defaultMaxRetryBackoff)
	}
	s := &Service{
		store:            cfg.Store,
		client:           cfg.Store.Client(),
		catalog:          cfg.Catalog,
		library:          cfg.Library,
		logger:           cfg.Logger,
		maxAttempts:      cfg.MaxAttempts,
		maxLogLines:      cfg.MaxLogLines,
		maxArtifactBytes: cmp.Or(cfg.MaxArtifactBytes, runlogs.MaxBytes),
		backoff:          cmp.Or(cfg.RetryBackoff, defaultRetryBackoff),
		maxBackoff:       cmp.Or(cfg.MaxRetryBackoff, defaultMaxRetryBackoff),
		keepVersions:     cmp.Or(cfg.KeepVersions, DefaultKeepVersions),
		now:              cfg.Now,
	}
	s.maxBackoff = max(s.maxBackoff, s.backoff)
	if s.logger == nil {
		s.logger = hclog.NewNullLogger()
	}
	s.logger = s.logger.Named("servicing")
	if s.maxAttempts == 0 {
		s.maxAttempts = defaultMaxAttempts
	}
	if s.maxLogLines == 0 {
		s.maxLogLines = defaultMaxLogLines
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Store returns the store the service writes to.
func (s *Service) Store() *store.Store { return s.store }

// MaxAttempts is how often a run may be leased.
func (s *Service) MaxAttempts() int { return s.maxAttempts }

// RetryDelay is how long a run waits after losing its lease on attempt
// (1 for the first): RetryBackoff doubled for each attempt before it, at most
// MaxRetryBackoff.
func (s *Service) RetryDelay(attempt int32) time.Duration {
	d := s.backoff
	for i := int32(1); i < attempt && d < s.maxBackoff; i++ {
		d *= 2
	}
	return min(d, s.maxBackoff)
}

// LastProgress is when the run's agent last reported for it; the start of
// its lease for a run that has no last_progress_time.
func LastProgress(run *osvcv1.Run) time.Time {
	if t := run.GetLastProgressTime(); t != nil {
		return t.AsTime()
	}
	if t := run.GetStartTime(); t != nil {
		return t.AsTime()
	}
	return time.Time{}
}

// DroppedLogLines counts the log lines dropped since start because their run
// had reached MaxLogLines.
func (s *Service) DroppedLogLines() int64 { return s.droppedLogLines.Load() }

// RunName returns runs/{id}.
func RunName(id string) string { return runsCollection + id }

// RunID returns the id of runs/{id}; InvalidArgument(field) on a bad name.
func RunID(name string) (string, error) { return idFromName("name", name, runsCollection) }

func idFromName(field, name, collection string) (string, error) {
	id, ok := strings.CutPrefix(name, collection)
	if !ok {
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("want %s{id}, got %q", collection, truncate(name, 80)))
	}
	if err := catalog.ValidateID(id); err != nil {
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("in %q: %v", truncate(name, 80), err))
	}
	return id, nil
}

// truncate shortens s to at most n bytes plus "...", cutting before a
// character rather than inside one: the result goes into protobuf strings
// (Acks, stored runs and log lines), which must stay valid UTF-8.
func truncate(s string, n int) string {
	return truncateWith(s, n, "...")
}

func truncateWith(s string, n int, ellipsis string) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + ellipsis
}

// newID returns a short id that sorts by creation time: prefix, then base32
// (extended hex alphabet, which keeps byte order) of nanoseconds and 32 random bits.
func newID(prefix string, now time.Time) string {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixNano()))
	_, _ = rand.Read(b[8:])
	return prefix + strings.ToLower(base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// IsFinal tells whether a run in state has ended.
func IsFinal(state osvcv1.RunState) bool {
	switch state {
	case osvcv1.RunState_RUN_STATE_SUCCEEDED, osvcv1.RunState_RUN_STATE_FAILED, osvcv1.RunState_RUN_STATE_CANCELED:
		return true
	}
	return false
}

// IsLeased tells whether a run in state is held by an agent.
func IsLeased(state osvcv1.RunState) bool {
	return state == osvcv1.RunState_RUN_STATE_LEASED || state == osvcv1.RunState_RUN_STATE_IN_PROCESS
}

// CreateSchedule stores a schedule of the image parent (see schedules.go).
// One due now (no start time, or one past, and no recurrence) queues its
// run in the same transaction, returned, after selecting its updates: the
// listed ones, or with allApplicable (or a selection) what is applicable
// now. An image has one run at a time: such a schedule while a run of the
// image has not ended is ErrFailedPrecondition naming the run. A later or
// recurring schedule is stored with its first occurrence; its updates, when
// chosen by rule, are chosen when the occurrence comes.
func (s *Service) CreateSchedule(ctx context.Context, parent string, sched *osvcv1.Schedule, allApplicable bool) (*osvcv1.Schedule, *osvcv1.Run, error) {
	imageID, err := catalog.ImageID(parent)
	if err != nil {
		return nil, nil, errdefs.InvalidArgument("parent", fmt.Sprintf("want images/{id}, got %q", truncate(parent, 80)))
	}
	if sched == nil {
		sched = &osvcv1.Schedule{}
	}
	now := s.now()
	schedID := newID("s-", now)
	out := &osvcv1.Schedule{
		Name:                     parent + "/" + schedulesCollection + schedID,
		Updates:                  sched.GetUpdates(),
		Selection:                sched.GetSelection(),
		StartTime:                sched.GetStartTime(),
		Recurrence:               sched.GetRecurrence(),
		ContinueOnError:          sched.GetContinueOnError(),
		UpdateDistributionPoints: sched.GetUpdateDistributionPoints(),
		RemoveSuperseded:         sched.GetRemoveSuperseded(),
		CreateTime:               timestamppb.New(now),
		UpdateTime:               timestamppb.New(now),
	}
	if allApplicable {
		if len(out.GetUpdates()) > 0 || out.GetSelection() != nil {
			return nil, nil, errdefs.InvalidArgument("schedule.updates", "send either updates, a selection or all_applicable")
		}
		out.Selection = &osvcv1.UpdateSelection{}
	}
	rule, err := checkSchedule(out)
	if err != nil {
		return nil, nil, err
	}
	first := firstOccurrence(out, rule, now)
	atOnce := rule == nil && !first.After(now)
	imageKey, activeKey := s.store.ImageKey(imageID), s.store.ActiveRunKey(imageID)
	var run *osvcv1.Run
	_, err = s.store.Txn(ctx, "schedule "+parent, func(tx *store.Tx) error {
		run = nil
		img, err := store.Load[*osvcv1.Image](tx, imageKey)
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("image %s: %w", parent, errdefs.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("schedule %s: %w", parent, err)
		}
		if err := s.checkScheduleFor(img, out); err != nil {
			return err
		}
		active, err := s.activeRun(tx, imageID)
		if err != nil {
			return err
		}
		schedKey := s.store.ScheduleKey(imageID, schedID)
		if _, exists, err := tx.Raw(schedKey); err != nil {
			return err
		} else if exists {
			return fmt.Errorf("schedule %s: id %s is taken: %w", parent, schedID, errdefs.ErrContended)
		}
		if !atOnce {
			if out.GetSelection() == nil {
				updates, err := s.listedUpdates(ctx, out.GetUpdates())
				if err != nil {
					return err
				}
				SortForServicing(updates)
				out.Updates = updateNames(updates)
			}
			out.NextRunTime = timestamppb.New(first)
			if active == "" {
				img.ServicingStatus = osvcv1.ServicingStatus_SERVICING_STATUS_SCHEDULED
				img.UpdateTime = timestamppb.New(now)
				if err := tx.Put(imageKey, img); err != nil {
					return err
				}
			}
			return tx.Put(schedKey, out)
		}
		if active != "" {
			return fmt.Errorf("image %s already has run %s in progress; wait for it to end or cancel it, or schedule for later: %w",
				parent, active, errdefs.ErrFailedPrecondition)
		}
		// A version whose inspection is still to come is scheduled: the run
		// waits for it. One that failed its inspection is never serviced.
		if pending, err := ServiceableVersion(img, img.GetCurrentVersion()); err != nil && !pending {
			return err
		}
		updates, err := s.selectFor(ctx, img, out)
		if err != nil {
			return err
		}
		if len(updates) == 0 {
			return fmt.Errorf("no applicable update for %s matches the selection; import newer updates first: %w", parent, errdefs.ErrFailedPrecondition)
		}
		// What this one run applies, chosen now.
		out.Updates, out.Selection = updateNames(updates), nil
		if run, err = s.queueRun(tx, img, imageID, out, updates, now); err != nil {
			return err
		}
		out.LastRun = run.GetName()
		return tx.Put(schedKey, out)
	}, store.Prefetch(imageKey, activeKey))
	if err != nil {
		return nil, nil, err
	}
	if run != nil {
		s.logger.Info("run scheduled", "run", run.Name, "image", parent, "schedule", out.GetName(), "updates", len(run.Updates))
	} else {
		s.logger.Info("schedule created", "schedule", out.GetName(), "next_run_time", out.GetNextRunTime().AsTime(), "recurring", rule != nil)
	}
	return out, run, nil
}

// maxScheduleAhead is how far ahead a run may be scheduled: further is
// almost always a typo in the year, and the run would hold the image.
const maxScheduleAhead = 366 * 24 * time.Hour

// checkStartTime refuses a start time before the image existed (a typo, or
// a clock far off) or more than a year ahead.
func checkStartTime(start *timestamppb.Timestamp, img *osvcv1.Image, now time.Time) error {
	if start == nil {
		return nil
	}
	if !start.IsValid() {
		return errdefs.InvalidArgument("schedule.start_time", "not a valid time; send an RFC 3339 time such as 2026-11-24T22:00:00Z")
	}
	t := start.AsTime()
	if created := img.GetCreateTime(); created != nil && t.Before(created.AsTime()) {
		return errdefs.InvalidArgument("schedule.start_time", fmt.Sprintf("%s is before %s was imported (%s); leave it out to service as soon as possible",
			t.Format(time.RFC3339), img.GetName(), created.AsTime().Format(time.RFC3339)))
	}
	if t.After(now.Add(maxScheduleAhead)) {
		return errdefs.InvalidArgument("schedule.start_time", fmt.Sprintf("%s is more than a year ahead; check the year", t.Format(time.RFC3339)))
	}
	return nil
}

// SortForServicing orders updates the way servicing applies them: the
// servicing stack first, then the other updates by release date, cumulative
// updates after them (the latest last), .NET last.
func SortForServicing(updates []*osvcv1.Update) {
	group := func(u *osvcv1.Update) int {
		switch u.GetClassification() {
		case osvcv1.Classification_CLASSIFICATION_SERVICING_STACK:
			return 0
		case osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE:
			return 2
		case osvcv1.Classification_CLASSIFICATION_DOTNET:
			return 3
		}
		return 1
	}
	slices.SortStableFunc(updates, func(a, b *osvcv1.Update) int {
		if d := group(a) - group(b); d != 0 {
			return d
		}
		if c := a.GetReleaseTime().AsTime().Compare(b.GetReleaseTime().AsTime()); c != 0 {
			return c
		}
		return strings.Compare(a.GetName(), b.GetName())
	})
}

// pendingResults pre-fills one PENDING result per index and update, index by
// index as the pipeline goes.
func pendingResults(img *osvcv1.Image, updates []*osvcv1.Update) []*osvcv1.UpdateResult {
	var out []*osvcv1.UpdateResult
	for _, idx := range img.GetIndexes() {
		for _, u := range updates {
			out = append(out, &osvcv1.UpdateResult{
				Update: u.GetName(),
				Kb:     u.GetKb(),
				Index:  idx.GetIndex(),
				State:  osvcv1.UpdateState_UPDATE_STATE_PENDING,
			})
		}
	}
	return out
}

func currentVersion(img *osvcv1.Image) *osvcv1.ImageVersion {
	for _, v := range img.GetVersions() {
		if v.GetVersion() == img.GetCurrentVersion() {
			return v
		}
	}
	return nil
}

// GetRun returns the run named runs/{id}.
func (s *Service) GetRun(ctx context.Context, name string) (*osvcv1.Run, error) {
	id, err := RunID(name)
	if err != nil {
		return nil, err
	}
	// The lease does not write its token into the run (the agent's first
	// report does): the assignment, read in the same revision, says it.
	// Nor do log lines write their count into it: the run's log count does.
	resp, err := s.client.Txn(ctx).Then(clientv3.OpGet(s.store.RunKey(id)), clientv3.OpGet(s.store.AssignmentKey(id)),
		clientv3.OpGet(s.store.LogCountKey(id))).Commit()
	if err != nil {
		return nil, fmt.Errorf("get run %s: %w", name, err)
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil, fmt.Errorf("run %s: %w", name, errdefs.ErrNotFound)
	}
	run, err := store.Unmarshal[*osvcv1.Run](kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("get run %s: %w", name, err)
	}
	if as := resp.Responses[1].GetResponseRange().GetKvs(); len(as) == 1 && IsLeased(run.GetState()) && run.GetFencingToken() == 0 {
		run.FencingToken = as[0].ModRevision
	}
	if counts := resp.Responses[2].GetResponseRange().GetKvs(); len(counts) == 1 {
		return withLogCount(run, counts[0].Value)
	}
	return run, nil
}

// ListRuns lists runs in creation order; image, when set, lists that image's
// runs through its run index (an image that does not exist is NotFound).
// Runs that have not ended show their log count.
func (s *Service) ListRuns(ctx context.Context, image string, pageSize int, token string) ([]*osvcv1.Run, string, error) {
	runs, next, err := s.listRuns(ctx, image, pageSize, token)
	if err != nil {
		return nil, "", err
	}
	return runs, next, s.fillLogCounts(ctx, runs)
}

func (s *Service) listRuns(ctx context.Context, image string, pageSize int, token string) ([]*osvcv1.Run, string, error) {
	if image == "" {
		return store.List[*osvcv1.Run](ctx, s.store, s.store.RunsPrefix(), pageSize, token)
	}
	imageID, err := catalog.ImageID(image)
	if err != nil {
		return nil, "", errdefs.InvalidArgument("image", fmt.Sprintf("want images/{id}, got %q", truncate(image, 80)))
	}
	if _, err := s.catalog.GetImage(ctx, image); err != nil {
		return nil, "", err
	}
	keys, next, err := store.ListKeys(ctx, s.store, s.store.ImageRunsPrefix(imageID), pageSize, token)
	if err != nil {
		return nil, "", err
	}
	runKeys := make([]string, len(keys))
	for i, k := range keys {
		runKeys[i] = s.store.RunKey(store.IDFromKey(k))
	}
	runs, _, err := store.GetMany[*osvcv1.Run](ctx, s.store, runKeys)
	if err != nil {
		return nil, "", err
	}
	return slices.DeleteFunc(runs, func(r *osvcv1.Run) bool { return r == nil }), next, nil
}

// CancelRun cancels a run: a PENDING run ends CANCELED at once; a leased run
// is marked cancel_requested and its agent is told to stop, after which it
// reports CANCELED. An ended run is ErrFailedPrecondition. The image is never
// modified by a cancel.
func (s *Service) CancelRun(ctx context.Context, name, reason string) (*osvcv1.Run, error) {
	if _, err := RunID(name); err != nil {
		return nil, err
	}
	if reason == "" {
		reason = "canceled by an administrator"
	}
	reason = clipText(reason)
	var out *osvcv1.Run
	rev, err := s.store.Txn(ctx, "cancel "+name, func(tx *store.Tx) error {
		ch, err := s.loadRun(tx, name)
		if err != nil {
			return err
		}
		run := ch.run
		out = run
		switch {
		case IsFinal(run.GetState()):
			return fmt.Errorf("run %s already ended %s; there is nothing to cancel: %w",
				name, stateName(run.GetState()), errdefs.ErrFailedPrecondition)
		case run.GetState() == osvcv1.RunState_RUN_STATE_PENDING:
			if err := s.end(ctx, ch, osvcv1.RunState_RUN_STATE_CANCELED, reason); err != nil {
				return err
			}
		default:
			if run.GetCancelRequested() {
				return nil
			}
			run.CancelRequested = true
			run.Error = reason
		}
		return s.write(ch)
	})
	if err != nil {
		return nil, err
	}
	if rev != 0 {
		s.logger.Info("run cancel", "run", name, "state", stateName(out.GetState()), "reason", reason)
	}
	runs := []*osvcv1.Run{out}
	if err := s.fillLogCounts(ctx, runs); err != nil {
		return nil, err
	}
	return runs[0], nil
}

func stateName(st osvcv1.RunState) string {
	return strings.TrimPrefix(st.String(), "RUN_STATE_")
}
