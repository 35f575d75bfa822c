package servicing

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/packagetree"
	"github.com/osvc/osvc/pkg/runlogs"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/store"
)

const (
	// maxReportTextBytes cuts the free text an agent reports into the run
	// (an update's message, a step's detail, the run's error): a run holds
	// one per update and index, and a run past the store's value limit could
	// no longer be written at all, not even to end or cancel it. The whole
	// text belongs in the run's log.
	maxReportTextBytes = 4 << 10
)

// Reports are accepted only from the agent holding the run's current
// assignment: each is written in a transaction comparing the assignment key's
// ModRevision with the report's fencing token. A stale token is
// errdefs.ErrStaleLease, an unknown run errdefs.ErrNotFound.

// ReportStep records that a pipeline step started or ended.
func (s *Service) ReportStep(ctx context.Context, agent string, m *osvcv1.StepChanged) error {
	step := m.GetStep()
	if step.GetStep() == osvcv1.Step_STEP_UNSPECIFIED {
		return errdefs.InvalidArgument("step_changed.step.step", "name the pipeline step, e.g. STEP_DRIVE")
	}
	_, err := s.fenced(ctx, agent, m.GetRun(), m.GetFencingToken(), func(ch *change) error {
		run := ch.run
		rec := proto.Clone(step).(*osvcv1.StepRecord)
		rec.Detail = clipText(rec.GetDetail())
		now := timestamppb.New(s.now())
		if i := stepRecordOf(run.Steps, rec); i >= 0 {
			old := run.Steps[i]
			if rec.StartTime == nil {
				rec.StartTime = old.GetStartTime()
			}
			// The step's end says nothing of its bytes: keep what its
			// progress reports recorded.
			if rec.GetBytesTotal() == 0 && rec.GetBytesDone() == 0 {
				rec.BytesDone, rec.BytesTotal = old.GetBytesDone(), old.GetBytesTotal()
			}
			run.Steps[i] = rec
		} else {
			run.Steps = append(run.Steps, rec)
		}
		if rec.StartTime == nil {
			rec.StartTime = now
		}
		if rec.GetState() != osvcv1.StepState_STEP_STATE_RUNNING && rec.EndTime == nil {
			rec.EndTime = now
		}
		run.Step = rec.GetStep()
		return nil
	})
	return err
}

// stepRecordOf finds the record a step report is about: the record of that
// step with the report's start time (its RUNNING report, or one sent again),
// else, for a report with no start time, the step's last record while it is
// RUNNING. -1 means the report starts a new pass of the step: APPLY after
// cleanup, a step of the next index.
func stepRecordOf(steps []*osvcv1.StepRecord, rec *osvcv1.StepRecord) int {
	for i := len(steps) - 1; i >= 0; i-- {
		r := steps[i]
		if r.GetStep() != rec.GetStep() {
			continue
		}
		if rec.GetStartTime() == nil {
			if r.GetState() == osvcv1.StepState_STEP_STATE_RUNNING {
				return i
			}
			return -1
		}
		if proto.Equal(r.GetStartTime(), rec.GetStartTime()) {
			return i
		}
	}
	return -1
}

// ReportProgress records how far the run is, overall and for one update,
// and how many bytes the running step has moved.
func (s *Service) ReportProgress(ctx context.Context, agent string, m *osvcv1.Progress) error {
	_, err := s.fenced(ctx, agent, m.GetRun(), m.GetFencingToken(), func(ch *change) error {
		ch.run.Percent = clampPercent(m.GetPercent())
		if st := m.GetStep(); st != osvcv1.Step_STEP_UNSPECIFIED {
			// The step's running record; bytes of a step that ended (a
			// report overtaken by the step's end) are dropped.
			for i := len(ch.run.Steps) - 1; i >= 0; i-- {
				if r := ch.run.Steps[i]; r.GetStep() == st {
					if r.GetState() == osvcv1.StepState_STEP_STATE_RUNNING {
						r.BytesTotal = max(m.GetBytesTotal(), 0)
						r.BytesDone = max(m.GetBytesDone(), 0)
						if r.BytesTotal > 0 {
							r.BytesDone = min(r.BytesDone, r.BytesTotal)
						}
					}
					break
				}
			}
		}
		if u := m.GetUpdate(); u != nil && u.GetUpdate() != "" {
			r := findResult(ch.run, u.GetUpdate(), u.GetIndex())
			if r == nil {
				return errdefs.InvalidArgument("progress.update", fmt.Sprintf("run %s has no update %s on index %d", ch.run.GetName(), u.GetUpdate(), u.GetIndex()))
			}
			if !finalUpdateState(r.GetState()) {
				r.State = osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS
				r.Percent = clampPercent(u.GetPercent())
				if r.StartTime == nil {
					r.StartTime = cmp.Or(u.GetStartTime(), timestamppb.New(s.now()))
				}
				if u.GetMessage() != "" {
					r.Message = clipText(u.GetMessage())
				}
			}
		}
		return nil
	})
	return err
}

// ReportUpdateResult records the final state of one update on one index.
func (s *Service) ReportUpdateResult(ctx context.Context, agent string, m *osvcv1.UpdateResultReport) error {
	res := m.GetResult()
	if !finalUpdateState(res.GetState()) {
		return errdefs.InvalidArgument("update_result.result.state", "report a final state: APPLIED, ALREADY_INSTALLED, NOT_APPLICABLE, UNSUPPORTED, FAILED or SKIPPED")
	}
	_, err := s.fenced(ctx, agent, m.GetRun(), m.GetFencingToken(), func(ch *change) error {
		r := findResult(ch.run, res.GetUpdate(), res.GetIndex())
		if r == nil {
			return errdefs.InvalidArgument("update_result.result.update", fmt.Sprintf("run %s has no update %s on index %d", ch.run.GetName(), res.GetUpdate(), res.GetIndex()))
		}
		r.State = res.GetState()
		r.Message = clipText(res.GetMessage())
		// Only an update that was started has a duration; one SKIPPED
		// before its turn has neither time.
		if r.StartTime == nil {
			r.StartTime = res.GetStartTime()
		}
		if r.StartTime != nil {
			r.EndTime = cmp.Or(res.GetEndTime(), timestamppb.New(s.now()))
		}
		if res.GetState() == osvcv1.UpdateState_UPDATE_STATE_APPLIED {
			r.Percent = 100
		} else {
			r.Percent = clampPercent(res.GetPercent())
		}
		if r.Kb == "" {
			r.Kb = res.GetKb()
		}
		return nil
	})
	return err
}

// ReportRunResult ends a run. SUCCEEDED swaps the image: the uploaded result
// becomes the image's current version, the previous one is kept, older ones
// are dropped (the content collector removes their blobs), all in the transaction
// that compares the fencing token. A SUCCEEDED result that is the run's
// source version itself (nothing changed the image) adds no version. FAILED
// and CANCELED leave the image's content untouched.
func (s *Service) ReportRunResult(ctx context.Context, agent string, m *osvcv1.RunResult) error {
	var content *osvcv1.Content
	switch m.GetState() {
	case osvcv1.RunState_RUN_STATE_FAILED, osvcv1.RunState_RUN_STATE_CANCELED:
	case osvcv1.RunState_RUN_STATE_SUCCEEDED:
		if m.GetResultSha256() == "" {
			return errdefs.InvalidArgument("run_result.result_sha256", "upload the serviced WIM with ContentService.Write and send its sha256")
		}
		// Claimed, so the content collector keeps it until the swap references it.
		c, err := s.library.Claim(ctx, m.GetResultSha256())
		if errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, errdefs.ErrInvalidArgument) {
			return fmt.Errorf("result %s is not in the content library; upload it with ContentService.Write before reporting: %w",
				truncate(m.GetResultSha256(), 80), errdefs.ErrFailedPrecondition)
		}
		if err != nil {
			return fmt.Errorf("look up result %s: %w", m.GetResultSha256(), err)
		}
		content = c
	default:
		return errdefs.InvalidArgument("run_result.state", "end a run with RUN_STATE_SUCCEEDED, RUN_STATE_FAILED or RUN_STATE_CANCELED")
	}
	artifacts, err := s.claimArtifacts(ctx, m.GetArtifacts())
	if err != nil {
		return err
	}
	var tree *servicedTree
	if content != nil {
		if tree, err = s.serviceTree(ctx, agent, m.GetRun(), content); err != nil {
			return err
		}
	}
	if len(m.GetIndexes()) > 0 {
		m = proto.Clone(m).(*osvcv1.RunResult)
		if err := s.catalog.LinkInstalled(ctx, m.GetIndexes()); err != nil {
			return err
		}
	}
	runID, err := idFromName("run", m.GetRun(), runsCollection)
	if err != nil {
		return err
	}
	run, err := s.fenced(ctx, agent, m.GetRun(), m.GetFencingToken(), func(ch *change) error {
		// Recorded in the transaction that compares the fencing token: an
		// agent that lost the run attaches no files to it.
		ch.run.Artifacts = artifacts
		if m.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
			msg := clipText(m.GetError())
			if msg == "" && m.GetState() == osvcv1.RunState_RUN_STATE_CANCELED {
				msg = ch.run.GetError()
			}
			return s.end(ctx, ch, m.GetState(), msg)
		}
		if IsInspection(ch.run) {
			return s.inspected(ctx, ch, m)
		}
		return s.swap(ctx, ch, m, content, tree)
	}, s.store.LogCountKey(runID)) // the run's end moves its log count into it
	if err != nil {
		return err
	}
	s.logger.Info("run ended", "run", run.GetName(), "state", stateName(run.GetState()), "agent", agent,
		"result_version", run.GetResultVersion(), "log_files", len(run.GetArtifacts()), "error", run.GetError())
	if run.GetState() == osvcv1.RunState_RUN_STATE_SUCCEEDED && run.GetResultVersion() == run.GetSourceVersion() && !IsInspection(run) {
		s.logger.Info("nothing changed the image: no version added", "run", run.GetName(), "image", run.GetImage(), "version", run.GetResultVersion())
	}
	return nil
}

// claimArtifacts checks the log files an agent reports with a run's result
// and claims their blobs, so the content collector keeps them until the run
// names them. What an agent reports is outside input: only the known file
// names, each once, each a blob the library holds of at most the artifact
// limit. The size and media type recorded are the library's, not the agent's.
func (s *Service) claimArtifacts(ctx context.Context, in []*osvcv1.RunArtifact) ([]*osvcv1.RunArtifact, error) {
	if len(in) > len(runlogs.Names) {
		return nil, errdefs.InvalidArgument("run_result.artifacts", fmt.Sprintf("%d files: a run has at most %d, one of each of %s",
			len(in), len(runlogs.Names), strings.Join(runlogs.Names, ", ")))
	}
	seen := map[string]bool{}
	for i, a := range in {
		field := fmt.Sprintf("run_result.artifacts[%d]", i)
		if err := runlogs.CheckName(a.GetName()); err != nil {
			return nil, errdefs.InvalidArgument(field+".name", err.Error())
		}
		if seen[a.GetName()] {
			return nil, errdefs.InvalidArgument(field+".name", a.GetName()+" is reported twice: send each log file once")
		}
		seen[a.GetName()] = true
		if !content.ValidSHA256(a.GetSha256()) {
			return nil, errdefs.InvalidArgument(field+".sha256", fmt.Sprintf("%q is not a sha256: want 64 lower-case hex digits", truncate(a.GetSha256(), 80)))
		}
		if a.GetTruncatedBytes() < 0 {
			return nil, errdefs.InvalidArgument(field+".truncated_bytes", fmt.Sprintf("%d is negative: send how many bytes of the file's start were left out, or 0", a.GetTruncatedBytes()))
		}
	}
	out := make([]*osvcv1.RunArtifact, 0, len(in))
	for i, a := range in {
		field := fmt.Sprintf("run_result.artifacts[%d]", i)
		c, err := s.library.Claim(ctx, a.GetSha256())
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil, fmt.Errorf("log file %s (%s) is not in the content library; upload it with ContentService.Write before reporting: %w",
				a.GetName(), a.GetSha256(), errdefs.ErrFailedPrecondition)
		}
		if err != nil {
			return nil, fmt.Errorf("look up log file %s (%s): %w", a.GetName(), a.GetSha256(), err)
		}
		// The blob's real size counts, whatever the report says.
		if c.GetSizeBytes() > s.maxArtifactBytes {
			return nil, errdefs.InvalidArgument(field+".sha256", fmt.Sprintf("%s names a blob of %d bytes: a run log file has at most %d; upload the end of a longer file",
				a.GetSha256(), c.GetSizeBytes(), s.maxArtifactBytes))
		}
		if a.GetSizeBytes() != 0 && a.GetSizeBytes() != c.GetSizeBytes() {
			return nil, errdefs.InvalidArgument(field+".size_bytes", fmt.Sprintf("%d bytes, but the content library holds %s with %d: send the uploaded size",
				a.GetSizeBytes(), a.GetSha256(), c.GetSizeBytes()))
		}
		out = append(out, &osvcv1.RunArtifact{
			Name:           a.GetName(),
			Sha256:         c.GetSha256(),
			SizeBytes:      c.GetSizeBytes(),
			MediaType:      runlogs.MediaType,
			TruncatedBytes: a.GetTruncatedBytes(),
		})
	}
	return out, nil
}

// swap makes the uploaded result the image's current version.
func (s *Service) swap(ctx context.Context, ch *change, m *osvcv1.RunResult, content *osvcv1.Content, tree *servicedTree) error {
	img, err := s.loadImage(ctx, ch)
	if err != nil {
		return err
	}
	src := sourceVersion(img, ch.run)
	if src != nil && src.GetSha256() == content.GetSha256() {
		return s.keepVersion(ctx, ch, img, src, m, content)
	}
	var treeRef *osvcv1.PackageTreeRef
	if src.GetTree() != nil {
		// Versions do not change, so this holds unless the image was
		// removed and imported again while the result was reported.
		if tree == nil || tree.source != src.GetTree().GetSha256() {
			return fmt.Errorf("version %d of %s is now another package tree than the run serviced; report the result again: %w",
				src.GetVersion(), img.GetName(), errdefs.ErrConflict)
		}
		treeRef = tree.ref
	}
	now := timestamppb.New(s.now())
	next := int32(0)
	for _, v := range img.GetVersions() {
		next = max(next, v.GetVersion())
	}
	next++
	newVersion := &osvcv1.ImageVersion{
		Version:      next,
		Sha256:       content.GetSha256(),
		SizeBytes:    content.GetSizeBytes(),
		CreatedByRun: ch.run.GetName(),
		CreateTime:   now,
		Tree:         treeRef,
	}
	img.Versions = retain(img.GetVersions(), img.GetCurrentVersion(), newVersion, s.keepVersions)
	img.CurrentVersion = next
	if ch.run.GetUpdateDistributionPoints() {
		// The distribution points get the new version once it is inspected.
		img.DistributionVersion = next
	}
	if len(m.GetIndexes()) > 0 {
		img.Indexes = m.GetIndexes()
	}
	// The new version is serviced once an agent inspected the file as the
	// library holds it.
	if _, err := s.queueInspection(ch.tx, img, next); err != nil {
		return err
	}
	if err := s.end(ctx, ch, osvcv1.RunState_RUN_STATE_SUCCEEDED, ""); err != nil {
		return err
	}
	run := ch.run
	run.Error = ""
	run.ResultVersion = next
	run.ResultSha256 = content.GetSha256()
	run.ResultSizeBytes = content.GetSizeBytes()
	run.ResultIndexes = m.GetIndexes()
	return nil
}

// retain returns the versions an image keeps once newVersion replaces
// current: newVersion, then up to keep others, current first (what a
// rollback returns to), then the newest of the rest; in version order. The
// versions dropped are left to the content collector.
func retain(versions []*osvcv1.ImageVersion, current int32, newVersion *osvcv1.ImageVersion, keep int) []*osvcv1.ImageVersion {
	others := slices.Clone(versions)
	slices.SortFunc(others, func(a, b *osvcv1.ImageVersion) int {
		switch {
		case a.GetVersion() == current:
			return -1
		case b.GetVersion() == current:
			return 1
		}
		return cmp.Compare(b.GetVersion(), a.GetVersion())
	})
	kept := append(others[:min(keep, len(others))], newVersion)
	slices.SortFunc(kept, func(a, b *osvcv1.ImageVersion) int { return cmp.Compare(a.GetVersion(), b.GetVersion()) })
	return kept
}

// servicedTree is the package tree of the version a run makes of a version
// kept as a tree: its tree with sources/install.wim replaced by the result.
type servicedTree struct {
	// source is the manifest of the serviced version.
	source string
	ref    *osvcv1.PackageTreeRef
}

// serviceTree returns the tree of the version the successful result of
// runName makes, when the version it serviced is a package tree, else nil:
// the serviced version's manifest with its sources/install.wim replaced by
// result, every other file as it was, stored in the content library
// (claimed, so the collector keeps it until the swap names it). It is made
// before the fenced transaction, which cannot write the library; swap checks
// it is still the tree of the serviced version. Only for the agent the run
// is leased to: anyone else's report is refused by the fence anyway.
func (s *Service) serviceTree(ctx context.Context, agent, runName string, result *osvcv1.Content) (*servicedTree, error) {
	runID, err := idFromName("run_result.run", runName, runsCollection)
	if err != nil {
		return nil, err
	}
	run, _, err := store.Get[*osvcv1.Run](ctx, s.store, s.store.RunKey(runID))
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, nil // the fence says so
	}
	if err != nil {
		return nil, fmt.Errorf("read run %s: %w", runName, err)
	}
	if IsInspection(run) || run.GetAgent() != agent {
		return nil, nil
	}
	img, err := s.catalog.GetImage(ctx, run.GetImage())
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	src := sourceVersion(img, run)
	if src.GetTree() == nil || src.GetSha256() == result.GetSha256() {
		return nil, nil
	}
	old, err := s.library.ReadTree(ctx, src.GetTree().GetSha256())
	if err != nil {
		return nil, fmt.Errorf("read the package tree of %s version %d: %w", img.GetName(), src.GetVersion(), err)
	}
	tree, err := packagetree.WithInstallImage(old, result.GetSha256(), result.GetSizeBytes())
	if err != nil {
		return nil, fmt.Errorf("package tree of %s version %d with the serviced %s: %w", img.GetName(), src.GetVersion(), packagetree.InstallImage, err)
	}
	ref, err := s.library.PutTree(ctx, tree)
	if err != nil {
		return nil, err
	}
	return &servicedTree{source: src.GetTree().GetSha256(), ref: ref}, nil
}

// sourceVersion is the version of img that run services, nil when the image
// no longer has it.
func sourceVersion(img *osvcv1.Image, run *osvcv1.Run) *osvcv1.ImageVersion {
	for _, v := range img.GetVersions() {
		if v.GetVersion() == run.GetSourceVersion() {
			return v
		}
	}
	return nil
}

// keepVersion ends a run whose result is its source version: nothing changed
// the image, so no version is added and none dropped, and an administrator
// who runs a schedule again keeps the rollback point and has nothing new to
// distribute. The run's result names the source version.
func (s *Service) keepVersion(ctx context.Context, ch *change, img *osvcv1.Image, src *osvcv1.ImageVersion, m *osvcv1.RunResult, content *osvcv1.Content) error {
	if img.GetCurrentVersion() != src.GetVersion() {
		// One run per image keeps the current version where the run found
		// it; should it have moved anyway, the versions stay as they are
		// rather than going back to older content.
		s.logger.Warn("run reports its source version unchanged but the image's current version moved; versions left as they are",
			"run", ch.run.GetName(), "image", img.GetName(), "source_version", src.GetVersion(), "current_version", img.GetCurrentVersion())
	}
	// The image's indexes already describe this very file: they stay. Asked
	// to, the distribution points get the version (those holding it already
	// have nothing to fetch).
	if ch.run.GetUpdateDistributionPoints() && img.GetDistributionVersion() != img.GetCurrentVersion() {
		img.DistributionVersion = img.GetCurrentVersion()
	}
	if err := s.end(ctx, ch, osvcv1.RunState_RUN_STATE_SUCCEEDED, ""); err != nil {
		return err
	}
	run := ch.run
	run.Error = ""
	run.ResultVersion = src.GetVersion()
	run.ResultSha256 = content.GetSha256()
	run.ResultSizeBytes = content.GetSizeBytes()
	run.ResultIndexes = m.GetIndexes()
	return nil
}

// errNoChange tells fenced that the report is accepted but leaves the run
// as it is; what else it asked the transaction to write is still written.
var errNoChange = errors.New("no change")

// fenced applies mutate to the run named runName when token is the current
// fencing token of an assignment to agent, in a store transaction: the
// assignment key and the run are read through it, so the commit compares
// the assignment's ModRevision with the token and the run's with what was
// read. A lease that ends (or a new one given) between the read and the
// commit fails the commit, and the next attempt sees the token stale. The
// first report of a LEASED run moves it IN_PROCESS. alsoRead are further
// keys mutate reads, fetched in the same round trip as the run and its
// assignment. Returns the run as written (or as read, when nothing changed).
func (s *Service) fenced(ctx context.Context, agent, runName string, token int64, mutate func(*change) error, alsoRead ...string) (*osvcv1.Run, error) {
	runID, err := idFromName("run", runName, runsCollection)
	if err != nil {
		return nil, err
	}
	runKey, assignKey := s.store.RunKey(runID), s.store.AssignmentKey(runID)
	var out *osvcv1.Run
	_, err = s.store.Txn(ctx, "report for "+runName, func(tx *store.Tx) error {
		ch, err := s.loadRun(tx, runName)
		if err != nil {
			return err
		}
		if err := s.checkFence(tx, runName, assignKey, agent, token); err != nil {
			return err
		}
		run := ch.run
		if !IsLeased(run.GetState()) {
			return fmt.Errorf("run %s is %s: %w", runName, stateName(run.GetState()), errdefs.ErrStaleLease)
		}
		out = run
		dirty := false
		if run.GetState() == osvcv1.RunState_RUN_STATE_LEASED {
			dirty = true
			run.State = osvcv1.RunState_RUN_STATE_IN_PROCESS
			if !IsInspection(run) {
				if err := s.setImageStatus(ctx, ch, osvcv1.ServicingStatus_SERVICING_STATUS_IN_PROCESS, false); err != nil {
					return err
				}
			}
		}
		if run.GetFencingToken() == 0 {
			// The lease leaves the token to the first report: it is the
			// lease's commit revision, unknown before it.
			run.FencingToken = token
			dirty = true
		}
		if err := mutate(ch); err != nil {
			if !errors.Is(err, errNoChange) {
				return err
			}
			if !dirty {
				return nil
			}
		}
		// A report that changes the run is progress: it also clears a stall.
		run.LastProgressTime = timestamppb.New(s.now())
		run.Stalled = false
		return s.write(ch)
	}, store.Prefetch(append([]string{runKey, assignKey}, alsoRead...)...))
	if err != nil {
		return nil, err
	}
	return out, nil
}

// checkFence reads the run's assignment within tx and refuses a token that
// is not its ModRevision, or an agent that is not the one it names:
// errdefs.ErrStaleLease, which tells the agent to drop the run's work.
func (s *Service) checkFence(tx *store.Tx, runName, assignKey, agent string, token int64) error {
	rev, err := tx.Revision(assignKey)
	if err != nil {
		return err
	}
	if rev == 0 || rev != token || token == 0 {
		return fmt.Errorf("run %s is no longer leased with fencing token %d; drop its work: %w", runName, token, errdefs.ErrStaleLease)
	}
	assignment, err := store.Load[*storev1.Assignment](tx, assignKey)
	if err != nil {
		return err
	}
	if agent != "" && assignment.GetAgent() != agent {
		return fmt.Errorf("run %s is leased to %s, not %s: %w", runName, assignment.GetAgent(), agent, errdefs.ErrStaleLease)
	}
	return nil
}

// clipText bounds a free text an agent or administrator sends into a run.
func clipText(s string) string { return truncateWith(s, maxReportTextBytes, "…") }

func clampPercent(p int32) int32 { return min(max(p, 0), 100) }

func findResult(run *osvcv1.Run, update string, index int32) *osvcv1.UpdateResult {
	for _, r := range run.GetUpdateResults() {
		if r.GetUpdate() == update && r.GetIndex() == index {
			return r
		}
	}
	return nil
}

func finalUpdateState(st osvcv1.UpdateState) bool {
	switch st {
	case osvcv1.UpdateState_UPDATE_STATE_APPLIED, osvcv1.UpdateState_UPDATE_STATE_ALREADY_INSTALLED,
		osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE, osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED,
		osvcv1.UpdateState_UPDATE_STATE_FAILED, osvcv1.UpdateState_UPDATE_STATE_SKIPPED:
		return true
	}
	return false
}
