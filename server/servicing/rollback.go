package servicing

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/store"
)

const (
	// maxRollbackReasonBytes bounds the reason a rollback keeps.
	maxRollbackReasonBytes = 1024
	// maxRollbacks is how many rollback records an image keeps, the last.
	maxRollbacks = 10
)

// Rollback makes version to of the image named name its current version
// again (0: the newest version it keeps older than the current one), as
// by asked for reason. It is one transaction on the image record: no
// version is added or dropped, so the version left stays kept and may be
// made current again. The image's indexes become those the last run that
// read the version recorded (its inspection, else the run that made it).
// The distribution points follow when they were to hold the version left.
// A PENDING servicing run of the image services the version rolled back to;
// a servicing run LEASED or IN_PROCESS refuses the rollback
// (ErrFailedPrecondition naming it), as does a version whose inspection
// failed. An inspection of another version goes on. A version the
// image does not keep is ErrNotFound, naming those it keeps.
func (s *Service) Rollback(ctx context.Context, name string, to int32, by, reason string) (*osvcv1.Image, error) {
	imageID, err := catalog.ImageID(name)
	if err != nil {
		return nil, err
	}
	reason = strings.TrimSpace(reason)
	switch {
	case reason == "":
		return nil, errdefs.InvalidArgument("reason", "say why the image is rolled back, for its record and the audit trail")
	case len(reason) > maxRollbackReasonBytes:
		return nil, errdefs.InvalidArgument("reason", fmt.Sprintf("%d bytes: at most %d", len(reason), maxRollbackReasonBytes))
	case to < 0:
		return nil, errdefs.InvalidArgument("to_version", fmt.Sprintf("%d: send a version the image keeps, or 0 for the one before the current", to))
	}
	imageKey, activeKey, inspectionKey := s.store.ImageKey(imageID), s.store.ActiveRunKey(imageID), s.store.ActiveInspectionKey(imageID)
	var out *osvcv1.Image
	var rebased, inspection *osvcv1.Run
	_, err = s.store.Txn(ctx, "roll back "+name, func(tx *store.Tx) error {
		rebased, inspection = nil, nil
		img, err := store.Load[*osvcv1.Image](tx, imageKey)
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("image %s: %w", name, errdefs.ErrNotFound)
		}
		if err != nil {
			return err
		}
		target, err := rollbackTarget(img, to)
		if err != nil {
			return err
		}
		from := img.GetCurrentVersion()
		pending, err := s.refuseLeasedRuns(tx, name, activeKey, inspectionKey)
		if err != nil {
			return err
		}
		indexes, err := s.versionIndexes(tx, target)
		if err != nil {
			return err
		}
		now := timestamppb.New(s.now())
		if indexes != nil {
			img.Indexes = indexes
		} else {
			// No run recorded what the version holds (it predates
			// inspections): an inspection reads it again.
			if pending.inspection {
				return fmt.Errorf("no run recorded the indexes of version %d of %s, and inspection %s has not ended; roll back once it ended: %w",
					target.GetVersion(), name, pending.inspectionRun, errdefs.ErrFailedPrecondition)
			}
			if inspection, err = s.queueInspection(tx, img, target.GetVersion()); err != nil {
				return err
			}
		}
		if run := pending.run; run != nil && !IsInspection(run) && run.GetSourceVersion() == from {
			// Scheduled on the version left: it services the current one.
			run.SourceVersion, run.SourceSizeBytes = target.GetVersion(), target.GetSizeBytes()
			runID, err := RunID(run.GetName())
			if err != nil {
				return err
			}
			if err := tx.Put(s.store.RunKey(runID), run); err != nil {
				return err
			}
			rebased = run
		}
		distributed := img.GetDistributionVersion() != 0 && img.GetDistributionVersion() == from
		if distributed {
			img.DistributionVersion = target.GetVersion()
		}
		img.CurrentVersion = target.GetVersion()
		img.Rollbacks = append(img.Rollbacks, &osvcv1.ImageRollback{
			FromVersion: from, ToVersion: target.GetVersion(), Principal: by, Reason: reason, Time: now, Distributed: distributed,
		})
		if n := len(img.Rollbacks); n > maxRollbacks {
			img.Rollbacks = img.Rollbacks[n-maxRollbacks:]
		}
		img.UpdateTime = now
		out = img
		return tx.Put(imageKey, img)
	}, store.Prefetch(imageKey, activeKey, inspectionKey))
	if err != nil {
		return nil, err
	}
	last := out.GetRollbacks()[len(out.GetRollbacks())-1]
	s.logger.Info("image rolled back", "image", name, "from_version", last.GetFromVersion(), "to_version", last.GetToVersion(),
		"by", by, "reason", reason, "distribution_version", out.GetDistributionVersion())
	if rebased != nil {
		s.logger.Info("pending run now services the version rolled back to", "run", rebased.GetName(), "version", rebased.GetSourceVersion())
	}
	if inspection != nil {
		s.logger.Info("inspection queued: no run recorded the version's indexes", "image", name, "version", last.GetToVersion(), "run", inspection.GetName())
	}
	return out, nil
}

// rollbackTarget is the version of img a rollback to version to makes
// current (0: the newest kept version older than the current one).
func rollbackTarget(img *osvcv1.Image, to int32) (*osvcv1.ImageVersion, error) {
	current := img.GetCurrentVersion()
	var kept []string
	for _, v := range img.GetVersions() {
		kept = append(kept, fmt.Sprint(v.GetVersion()))
	}
	if to == 0 {
		for _, v := range img.GetVersions() {
			if v.GetVersion() < current && v.GetVersion() > to {
				to = v.GetVersion()
			}
		}
		if to == 0 {
			return nil, fmt.Errorf("%s keeps no version older than its current version %d (it keeps %s); name the version to make current: %w",
				img.GetName(), current, strings.Join(kept, ", "), errdefs.ErrFailedPrecondition)
		}
	}
	if to == current {
		return nil, errdefs.InvalidArgument("to_version", fmt.Sprintf("version %d is %s's current version already; it keeps %s", to, img.GetName(), strings.Join(kept, ", ")))
	}
	v := findVersion(img, to)
	if v == nil {
		return nil, fmt.Errorf("%s does not keep version %d; it keeps %s (osvc-server --keep-versions sets how many): %w",
			img.GetName(), to, strings.Join(kept, ", "), errdefs.ErrNotFound)
	}
	if v.GetInspection() == osvcv1.InspectionState_INSPECTION_STATE_FAILED {
		return nil, fmt.Errorf("version %d of %s failed its inspection (%s) and is not made current; inspect it again once current with another version, or choose another: %w",
			to, img.GetName(), v.GetInspectionError(), errdefs.ErrFailedPrecondition)
	}
	return v, nil
}

// activeRuns is what an image's active-run keys name, as a rollback reads them.
type activeRuns struct {
	// run is the image's PENDING servicing run, if any.
	run *osvcv1.Run
	// inspection tells an inspection run that has not ended, inspectionRun
	// names it.
	inspection    bool
	inspectionRun string
}

// refuseLeasedRuns reads, within tx, the runs the image's active-run and
// active-inspection keys name: a LEASED or IN_PROCESS servicing run is
// ErrFailedPrecondition naming it, since its result would become current
// over the rollback; a PENDING one, and an inspection, are returned.
func (s *Service) refuseLeasedRuns(tx *store.Tx, name string, keys ...string) (activeRuns, error) {
	var out activeRuns
	for _, key := range keys {
		data, exists, err := tx.Raw(key)
		if err != nil {
			return out, err
		}
		if !exists {
			continue
		}
		runName, err := store.Unmarshal[*wrapperspb.StringValue](data)
		if err != nil {
			return out, fmt.Errorf("active run of %s: %w", name, err)
		}
		ch, err := s.loadRun(tx, runName.GetValue())
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return out, err
		}
		run := ch.run
		switch {
		case IsFinal(run.GetState()):
		case IsInspection(run):
			// An inspection only reads its version, and sets the image's
			// indexes only while that version is current: it may go on.
			out.inspection, out.inspectionRun = true, run.GetName()
		case IsLeased(run.GetState()):
			return out, fmt.Errorf("image %s has run %s %s; roll back once it ended, or cancel it first (osvcctl run cancel %s): %w",
				name, run.GetName(), stateName(run.GetState()), run.GetName(), errdefs.ErrFailedPrecondition)
		default:
			out.run = run
		}
	}
	return out, nil
}

// versionIndexes returns, read within tx, the indexes of version v as the
// last run that read the file recorded them: its inspection when it
// succeeded, else the run that made it; nil when neither did.
func (s *Service) versionIndexes(tx *store.Tx, v *osvcv1.ImageVersion) ([]*osvcv1.ImageIndex, error) {
	var sources []string
	if v.GetInspection() == osvcv1.InspectionState_INSPECTION_STATE_INSPECTED && v.GetInspectionRun() != "" {
		sources = append(sources, v.GetInspectionRun())
	}
	if v.GetCreatedByRun() != "" {
		sources = append(sources, v.GetCreatedByRun())
	}
	for _, runName := range sources {
		ch, err := s.loadRun(tx, runName)
		if errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, errdefs.ErrInvalidArgument) {
			continue
		}
		if err != nil {
			return nil, err
		}
		run := ch.run
		if run.GetState() == osvcv1.RunState_RUN_STATE_SUCCEEDED && run.GetResultVersion() == v.GetVersion() && len(run.GetResultIndexes()) > 0 {
			indexes := make([]*osvcv1.ImageIndex, len(run.GetResultIndexes()))
			for i, ix := range run.GetResultIndexes() {
				indexes[i] = proto.Clone(ix).(*osvcv1.ImageIndex)
			}
			return indexes, nil
		}
	}
	return nil, nil
}
