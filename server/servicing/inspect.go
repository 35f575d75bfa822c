package servicing

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/store"
)

// Every version of an image is inspected by an agent of its site: it
// verifies the file (every resource against its recorded hash, which the
// server cannot do without reading gigabytes) and records its indexes and
// the packages installed in each. An inspection is a run of kind
// RUN_KIND_INSPECTION, leased and fenced like any run; a servicing run waits
// until its source version is inspected, and fails if its inspection did.

// IsInspection tells whether run inspects its image rather than services it.
func IsInspection(run *osvcv1.Run) bool {
	return run.GetKind() == osvcv1.RunKind_RUN_KIND_INSPECTION
}

// ImportImage records a new image from a WIM in the content library, as
// catalog.ImportImage does, and queues the inspection run of its version 1
// in the same transaction. It returns the image and the inspection run.
func (s *Service) ImportImage(ctx context.Context, req catalog.ImportImage) (*osvcv1.Image, *osvcv1.Run, error) {
	var run *osvcv1.Run
	req.Within = func(tx *store.Tx, img *osvcv1.Image) error {
		var err error
		run, err = s.queueInspection(tx, img, 1)
		return err
	}
	img, err := s.catalog.ImportImage(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	s.logger.Info("image imported: inspection queued", "image", img.GetName(), "run", run.GetName())
	return img, run, nil
}

// Inspect queues an inspection of the image's current version again: after
// one failed for a reason other than a damaged file (its agent was lost,
// say), or to check a version again. An image with a run in progress is
// ErrFailedPrecondition.
func (s *Service) Inspect(ctx context.Context, imageName string) (*osvcv1.Image, *osvcv1.Run, error) {
	imageID, err := catalog.ImageID(imageName)
	if err != nil {
		return nil, nil, err
	}
	imageKey := s.store.ImageKey(imageID)
	var img *osvcv1.Image
	var run *osvcv1.Run
	_, err = s.store.Txn(ctx, "inspect "+imageName, func(tx *store.Tx) error {
		img, err = store.Load[*osvcv1.Image](tx, imageKey)
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("image %s: %w", imageName, errdefs.ErrNotFound)
		}
		if err != nil {
			return err
		}
		for _, key := range []string{s.store.ActiveRunKey(imageID), s.store.ActiveInspectionKey(imageID)} {
			if active, exists, err := tx.Raw(key); err != nil {
				return err
			} else if exists {
				name, _ := store.Unmarshal[*wrapperspb.StringValue](active)
				return fmt.Errorf("image %s has run %s in progress; wait for it to end or cancel it: %w", imageName, name.GetValue(), errdefs.ErrFailedPrecondition)
			}
		}
		if run, err = s.queueInspection(tx, img, img.GetCurrentVersion()); err != nil {
			return err
		}
		img.UpdateTime = timestamppb.New(s.now())
		return tx.Put(imageKey, img)
	}, store.Prefetch(imageKey, s.store.ActiveRunKey(imageID), s.store.ActiveInspectionKey(imageID)))
	if err != nil {
		return nil, nil, err
	}
	s.logger.Info("inspection queued", "image", imageName, "version", img.GetCurrentVersion(), "run", run.GetName())
	return img, run, nil
}

// queueInspection writes, within tx, a PENDING inspection run of version of
// img and marks the version PENDING inspection by it; img is changed, the
// caller writes it.
func (s *Service) queueInspection(tx *store.Tx, img *osvcv1.Image, version int32) (*osvcv1.Run, error) {
	imageID, err := catalog.ImageID(img.GetName())
	if err != nil {
		return nil, err
	}
	v := findVersion(img, version)
	if v == nil {
		return nil, fmt.Errorf("image %s has no version %d to inspect: %w", img.GetName(), version, errdefs.ErrFailedPrecondition)
	}
	now := s.now()
	runID := newID("r-", now)
	run := &osvcv1.Run{
		Name:            RunName(runID),
		Image:           img.GetName(),
		Kind:            osvcv1.RunKind_RUN_KIND_INSPECTION,
		State:           osvcv1.RunState_RUN_STATE_PENDING,
		SourceVersion:   v.GetVersion(),
		SourceSizeBytes: v.GetSizeBytes(),
		CreateTime:      timestamppb.New(now),
	}
	runKey := s.store.RunKey(runID)
	if _, taken, err := tx.Raw(runKey); err != nil {
		return nil, err
	} else if taken {
		return nil, fmt.Errorf("run id %s is taken: %w", runID, errdefs.ErrContended)
	}
	if err := tx.Put(runKey, run); err != nil {
		return nil, err
	}
	if err := tx.Put(s.store.ActiveInspectionKey(imageID), wrapperspb.String(run.GetName())); err != nil {
		return nil, err
	}
	tx.PutRaw(s.store.ImageRunKey(imageID, runID), nil)
	v.Inspection = osvcv1.InspectionState_INSPECTION_STATE_PENDING
	v.InspectionRun = run.GetName()
	v.InspectionError = ""
	return run, nil
}

// inspected records the result of a successful inspection: the version is
// INSPECTED, and when it is the current one the image's indexes become what
// the agent read from the file (with the packages installed in each).
func (s *Service) inspected(ctx context.Context, ch *change, m *osvcv1.RunResult) error {
	img, err := s.loadImage(ctx, ch)
	if err != nil {
		return err
	}
	v := findVersion(img, ch.run.GetSourceVersion())
	if v == nil {
		return fmt.Errorf("image %s no longer has version %d: %w", img.GetName(), ch.run.GetSourceVersion(), errdefs.ErrFailedPrecondition)
	}
	if m.GetResultSha256() != v.GetSha256() {
		return errdefs.InvalidArgument("run_result.result_sha256", fmt.Sprintf(
			"an inspection reports the sha256 of the version it inspected, %s; got %s", v.GetSha256(), truncate(m.GetResultSha256(), 80)))
	}
	if len(m.GetIndexes()) == 0 {
		return errdefs.InvalidArgument("run_result.indexes", "an inspection reports the indexes it read")
	}
	if v.GetInspectionRun() == ch.run.GetName() {
		v.Inspection = osvcv1.InspectionState_INSPECTION_STATE_INSPECTED
		v.InspectionError = ""
	}
	if v.GetVersion() == img.GetCurrentVersion() {
		img.Indexes = m.GetIndexes()
	}
	img.UpdateTime = timestamppb.New(s.now())
	run := ch.run
	run.ResultVersion = v.GetVersion()
	run.ResultSha256 = v.GetSha256()
	run.ResultSizeBytes = v.GetSizeBytes()
	run.ResultIndexes = m.GetIndexes()
	return s.end(ctx, ch, osvcv1.RunState_RUN_STATE_SUCCEEDED, "")
}

// endInspection records on the inspected version how an inspection run that
// did not succeed ended: the version is FAILED with why, and is not serviced
// until an inspection succeeds.
func (s *Service) endInspection(ctx context.Context, ch *change, state osvcv1.RunState) error {
	if state == osvcv1.RunState_RUN_STATE_SUCCEEDED {
		return nil
	}
	img, err := s.loadImage(ctx, ch)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	v := findVersion(img, ch.run.GetSourceVersion())
	if v == nil || v.GetInspectionRun() != ch.run.GetName() {
		return nil
	}
	v.Inspection = osvcv1.InspectionState_INSPECTION_STATE_FAILED
	v.InspectionError = clipText(fmt.Sprintf("inspection %s ended %s: %s", ch.run.GetName(), stateName(state), ch.run.GetError()))
	img.UpdateTime = timestamppb.New(s.now())
	return nil
}

// ServiceableVersion tells whether version of img may be serviced now: nil
// when it is inspected (or predates inspections), ErrFailedPrecondition
// saying why not otherwise; pending tells an inspection still to come.
func ServiceableVersion(img *osvcv1.Image, version int32) (pending bool, err error) {
	v := findVersion(img, version)
	if v == nil {
		return false, fmt.Errorf("image %s has no version %d: %w", img.GetName(), version, errdefs.ErrFailedPrecondition)
	}
	switch v.GetInspection() {
	case osvcv1.InspectionState_INSPECTION_STATE_PENDING:
		return true, fmt.Errorf("version %d of %s is not inspected yet (%s): %w", version, img.GetName(), v.GetInspectionRun(), errdefs.ErrFailedPrecondition)
	case osvcv1.InspectionState_INSPECTION_STATE_FAILED:
		return false, fmt.Errorf("version %d of %s failed its inspection (%s); import the image again, or inspect it again with 'osvcctl image inspect': %w",
			version, img.GetName(), v.GetInspectionError(), errdefs.ErrFailedPrecondition)
	}
	return false, nil
}

func findVersion(img *osvcv1.Image, version int32) *osvcv1.ImageVersion {
	for _, v := range img.GetVersions() {
		if v.GetVersion() == version {
			return v
		}
	}
	return nil
}
