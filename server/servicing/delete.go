package servicing

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/store"
)

// Deleting takes a resource out of the catalog only: the blobs it named are
// left to the content collector, which removes them once nothing names
// them for its grace period. A resource something still uses is refused,
// naming the user.

// DeleteImage removes the image named name, its schedules and its run
// index, in one transaction that reads its active-run and
// active-inspection keys: while either names a run (PENDING, LEASED or
// IN_PROCESS) the delete is ErrFailedPrecondition naming it. The runs stay,
// as history; an image imported again under the same id starts without
// them. The distribution points withdraw the image at the reconciler's
// next pass.
func (s *Service) DeleteImage(ctx context.Context, name string) error {
	imageID, err := catalog.ImageID(name)
	if err != nil {
		return err
	}
	imageKey := s.store.ImageKey(imageID)
	var deleted *osvcv1.Image
	_, err = s.store.Txn(ctx, "delete "+name, func(tx *store.Tx) error {
		img, err := store.Load[*osvcv1.Image](tx, imageKey)
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("image %s: %w", name, errdefs.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if err := s.imageInUse(tx, name, imageID); err != nil {
			return err
		}
		deleted = img
		tx.Delete(imageKey)
		tx.DeletePrefix(s.store.SchedulesPrefix(imageID))
		tx.DeletePrefix(s.store.ImageRunsPrefix(imageID))
		return nil
	}, store.Prefetch(imageKey, s.store.ActiveRunKey(imageID), s.store.ActiveInspectionKey(imageID)))
	if err != nil {
		return err
	}
	s.logger.Info("image deleted: its files are left to the content collector", "image", name, "site", deleted.GetSite(),
		"versions", len(deleted.GetVersions()))
	return nil
}

// imageInUse refuses, within tx, to delete an image that has a run that
// has not ended: its active-run or active-inspection key names it.
func (s *Service) imageInUse(tx *store.Tx, name, imageID string) error {
	for _, key := range []string{s.store.ActiveRunKey(imageID), s.store.ActiveInspectionKey(imageID)} {
		data, exists, err := tx.Raw(key)
		if err != nil {
			return err
		}
		if !exists {
			continue
		}
		run, _ := store.Unmarshal[*wrapperspb.StringValue](data)
		return fmt.Errorf("image %s has run %s that has not ended; wait for it to end or cancel it (osvcctl run cancel %s): %w",
			name, run.GetValue(), run.GetValue(), errdefs.ErrFailedPrecondition)
	}
	return nil
}

// DeleteUpdate removes the update named name from the catalog unless
// something uses it (updateInUse).
func (s *Service) DeleteUpdate(ctx context.Context, name string) error {
	if _, err := catalog.UpdateID(name); err != nil {
		return err
	}
	if err := s.updateInUse(ctx, name); err != nil {
		return err
	}
	return s.catalog.DeleteUpdate(ctx, name)
}

// updateInUse refuses to delete an update something still uses: a
// servicing run that has not ended and applies it, or a schedule that
// lists it and has an occurrence to come. It reads before the delete's
// transaction, and CreateSchedule reads updates outside its own: a
// schedule made in between is not seen, and its run, once leased, cannot
// be assigned for the update it lacks until it is canceled.
func (s *Service) updateInUse(ctx context.Context, name string) error {
	runs, err := s.ActiveRuns(ctx)
	if err != nil {
		return err
	}
	for _, r := range runs {
		run := r.Run
		if IsInspection(run) || IsFinal(run.GetState()) || !slices.Contains(run.GetUpdates(), name) {
			continue
		}
		return fmt.Errorf("update %s is applied by run %s (%s) of %s; delete it once the run ended, or cancel the run (osvcctl run cancel %s): %w",
			name, run.GetName(), stateName(run.GetState()), run.GetImage(), run.GetName(), errdefs.ErrFailedPrecondition)
	}
	// A schedule that lists it would start runs of an update that is gone.
	return s.eachSchedule(ctx, "", func(sched *osvcv1.Schedule) error {
		if sched.GetNextRunTime() != nil && slices.Contains(sched.GetUpdates(), name) {
			return fmt.Errorf("update %s is listed by schedule %s, which runs again at %s; change the schedule (osvcctl schedule update) or delete it first: %w",
				name, sched.GetName(), sched.GetNextRunTime().AsTime().UTC().Format(time.RFC3339), errdefs.ErrFailedPrecondition)
		}
		return nil
	})
}
