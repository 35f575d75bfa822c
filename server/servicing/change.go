package servicing

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/store"
)

// change is one write of a run under construction, inside a store
// transaction: the run (mutated in place) and its image when the change
// touches it. Every key read through tx joins the transaction's read set, so
// the commit is refused when any of them changed since it was read.
type change struct {
	tx    *store.Tx
	ctx   context.Context
	run   *osvcv1.Run
	image *osvcv1.Image
}

func (s *Service) newChange(tx *store.Tx, run *osvcv1.Run) *change {
	return &change{tx: tx, ctx: tx.Context(), run: run}
}

// loadRun reads the run named runName within tx; ErrNotFound when it is gone.
func (s *Service) loadRun(tx *store.Tx, runName string) (*change, error) {
	id, err := RunID(runName)
	if err != nil {
		return nil, err
	}
	run, err := store.Load[*osvcv1.Run](tx, s.store.RunKey(id))
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, fmt.Errorf("run %s: %w", runName, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return s.newChange(tx, run), nil
}

// loadImage reads the run's image once; write then stores it too.
func (s *Service) loadImage(ctx context.Context, ch *change) (*osvcv1.Image, error) {
	if ch.image != nil {
		return ch.image, nil
	}
	imageID, err := catalog.ImageID(ch.run.GetImage())
	if err != nil {
		return nil, fmt.Errorf("run %s names a bad image: %w", ch.run.GetName(), err)
	}
	img, err := store.Load[*osvcv1.Image](ch.tx, s.store.ImageKey(imageID))
	if err != nil {
		return nil, fmt.Errorf("image of run %s: %w", ch.run.GetName(), err)
	}
	ch.image = img
	return img, nil
}

// setImageStatus records where the image's servicing stands; an image that
// is gone is left alone (the run still ends).
func (s *Service) setImageStatus(ctx context.Context, ch *change, status osvcv1.ServicingStatus, lastRun bool) error {
	img, err := s.loadImage(ctx, ch)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	img.ServicingStatus = status
	if lastRun {
		img.LastRun = ch.run.GetName()
	}
	img.UpdateTime = timestamppb.New(s.now())
	return nil
}

// end moves the run to a final state, frees the image (active-run key) and
// drops the assignment, all in the change's transaction.
func (s *Service) end(ctx context.Context, ch *change, state osvcv1.RunState, message string) error {
	run := ch.run
	runID, err := RunID(run.GetName())
	if err != nil {
		return err
	}
	imageID, err := catalog.ImageID(run.GetImage())
	if err != nil {
		return err
	}
	run.State = state
	run.EndTime = timestamppb.New(s.now())
	// Stalled flags runs in progress only.
	run.Stalled = false
	if message != "" {
		run.Error = message
	}
	ch.tx.Delete(s.store.AssignmentKey(runID))
	// Written by the leases of older servers.
	ch.tx.Delete(s.store.LogBaseKey(runID))
	if err := s.moveLogCount(ch, runID); err != nil {
		return err
	}
	ch.tx.PutRaw(s.store.EndedRunKey(run.EndTime.AsTime(), runID), nil)
	activeKey := s.store.ActiveRunKey(imageID)
	if IsInspection(run) {
		activeKey = s.store.ActiveInspectionKey(imageID)
	}
	// The image is freed only of this run: the key may name a newer one.
	if active, ok, err := ch.tx.Raw(activeKey); err != nil {
		return err
	} else if ok {
		if name, err := store.Unmarshal[*wrapperspb.StringValue](active); err == nil && name.GetValue() == run.GetName() {
			ch.tx.Delete(activeKey)
		}
	}
	if IsInspection(run) {
		if state == osvcv1.RunState_RUN_STATE_SUCCEEDED {
			run.Percent = 100
		}
		return s.endInspection(ctx, ch, state)
	}
	if state != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		skipUnfinished(run, "not applied: the run ended "+stateName(state))
	}
	if err := s.noteUnsupported(ctx, ch); err != nil {
		return err
	}
	switch state {
	case osvcv1.RunState_RUN_STATE_SUCCEEDED:
		run.Percent = 100
		return s.setImageStatus(ctx, ch, osvcv1.ServicingStatus_SERVICING_STATUS_SUCCEEDED, true)
	case osvcv1.RunState_RUN_STATE_FAILED:
		return s.setImageStatus(ctx, ch, osvcv1.ServicingStatus_SERVICING_STATUS_FAILED, true)
	default:
		// The console's Canceled: the image is as it was, and says why.
		return s.setImageStatus(ctx, ch, osvcv1.ServicingStatus_SERVICING_STATUS_CANCELED, true)
	}
}

// noteUnsupported records on the image the updates the run's engine
// reported UNSUPPORTED for it, so they are no longer offered as applicable.
func (s *Service) noteUnsupported(ctx context.Context, ch *change) error {
	var names []string
	for _, r := range ch.run.GetUpdateResults() {
		if r.GetState() == osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED {
			names = append(names, r.GetUpdate())
		}
	}
	if len(names) == 0 {
		return nil
	}
	img, err := s.loadImage(ctx, ch)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, n := range names {
		if !slices.Contains(img.UnsupportedUpdates, n) {
			img.UnsupportedUpdates = append(img.UnsupportedUpdates, n)
		}
	}
	return nil
}

// skipUnfinished records the updates a run ended before as SKIPPED, so no
// result of an ended run still reads PENDING or IN_PROGRESS.
func skipUnfinished(run *osvcv1.Run, message string) {
	for _, r := range run.GetUpdateResults() {
		switch r.GetState() {
		case osvcv1.UpdateState_UPDATE_STATE_PENDING, osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS, osvcv1.UpdateState_UPDATE_STATE_UNSPECIFIED:
			r.State = osvcv1.UpdateState_UPDATE_STATE_SKIPPED
			r.Message = message
		}
	}
}

// write asks the transaction to store the run, and its image when the
// change loaded it.
func (s *Service) write(ch *change) error {
	runID, err := RunID(ch.run.GetName())
	if err != nil {
		return err
	}
	if err := ch.tx.Put(s.store.RunKey(runID), ch.run); err != nil {
		return err
	}
	if ch.image == nil {
		return nil
	}
	imageID, err := catalog.ImageID(ch.image.GetName())
	if err != nil {
		return err
	}
	return ch.tx.Put(s.store.ImageKey(imageID), ch.image)
}
