package servicing

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/store"
)

// change is one write of a run under construction: the run (mutated in
// place), its image when the change touches it, and the extra comparisons and
// operations that go in the same transaction.
type change struct {
	run      *osvcv1.Run
	image    *osvcv1.Image
	imageRev int64
	cmps     []clientv3.Cmp
	ops      []clientv3.Op
	// after runs once the transaction committed (e.g. deleting dropped blobs).
	after []func(context.Context)
}

func (s *Service) newChange(run *osvcv1.Run) *change { return &change{run: run} }

// loadImage reads the run's image once; commit then compares its revision and writes it.
func (s *Service) loadImage(ctx context.Context, ch *change) (*osvcv1.Image, error) {
	if ch.image != nil {
		return ch.image, nil
	}
	imageID, err := catalog.ImageID(ch.run.GetImage())
	if err != nil {
		return nil, fmt.Errorf("run %s names a bad image: %w", ch.run.GetName(), err)
	}
	img, rev, err := store.Get[*osvcv1.Image](ctx, s.store, s.store.ImageKey(imageID))
	if err != nil {
		return nil, fmt.Errorf("image of run %s: %w", ch.run.GetName(), err)
	}
	ch.image, ch.imageRev = img, rev
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
	ch.ops = append(ch.ops,
		clientv3.OpDelete(s.store.AssignmentKey(runID)),
		clientv3.OpDelete(s.store.ActiveRunKey(imageID)),
		clientv3.OpDelete(s.store.LogBaseKey(runID)))
	if state != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		skipUnfinished(run, "not applied: the run ended "+stateName(state))
	}
	switch state {
	case osvcv1.RunState_RUN_STATE_SUCCEEDED:
		run.Percent = 100
		return s.setImageStatus(ctx, ch, osvcv1.ServicingStatus_SERVICING_STATUS_SUCCEEDED, true)
	case osvcv1.RunState_RUN_STATE_FAILED:
		return s.setImageStatus(ctx, ch, osvcv1.ServicingStatus_SERVICING_STATUS_FAILED, true)
	default:
		// A canceled run did not service the image: its status goes back to
		// what the last run that did left it.
		status, err := s.statusBeforeSchedule(ctx, ch)
		if err != nil {
			return err
		}
		return s.setImageStatus(ctx, ch, status, false)
	}
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

// statusBeforeSchedule is the image's servicing status as its last run left
// it (NONE when it was never serviced or that run is gone).
func (s *Service) statusBeforeSchedule(ctx context.Context, ch *change) (osvcv1.ServicingStatus, error) {
	img, err := s.loadImage(ctx, ch)
	if errors.Is(err, errdefs.ErrNotFound) {
		return osvcv1.ServicingStatus_SERVICING_STATUS_NONE, nil
	}
	if err != nil {
		return 0, err
	}
	last := img.GetLastRun()
	if last == "" || last == ch.run.GetName() {
		return osvcv1.ServicingStatus_SERVICING_STATUS_NONE, nil
	}
	id, err := RunID(last)
	if err != nil {
		return osvcv1.ServicingStatus_SERVICING_STATUS_NONE, nil
	}
	run, _, err := store.Get[*osvcv1.Run](ctx, s.store, s.store.RunKey(id))
	if errors.Is(err, errdefs.ErrNotFound) {
		return osvcv1.ServicingStatus_SERVICING_STATUS_NONE, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last run %s of %s: %w", last, img.GetName(), err)
	}
	switch run.GetState() {
	case osvcv1.RunState_RUN_STATE_SUCCEEDED:
		return osvcv1.ServicingStatus_SERVICING_STATUS_SUCCEEDED, nil
	case osvcv1.RunState_RUN_STATE_FAILED:
		return osvcv1.ServicingStatus_SERVICING_STATUS_FAILED, nil
	}
	return osvcv1.ServicingStatus_SERVICING_STATUS_NONE, nil
}

// commit writes the change in one transaction guarded by cmps and the image
// revision; false means a comparison failed and nothing was written.
func (s *Service) commit(ctx context.Context, ch *change, cmps ...clientv3.Cmp) (bool, error) {
	runID, err := RunID(ch.run.GetName())
	if err != nil {
		return false, err
	}
	data, err := s.store.Marshal(ch.run)
	if err != nil {
		return false, err
	}
	cmps = append(cmps, ch.cmps...)
	ops := append([]clientv3.Op{clientv3.OpPut(s.store.RunKey(runID), string(data))}, ch.ops...)
	if ch.image != nil {
		imageID, err := catalog.ImageID(ch.image.GetName())
		if err != nil {
			return false, err
		}
		imgData, err := s.store.Marshal(ch.image)
		if err != nil {
			return false, err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.store.ImageKey(imageID)), "=", ch.imageRev))
		ops = append(ops, clientv3.OpPut(s.store.ImageKey(imageID), string(imgData)))
	}
	resp, err := s.client.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, err
	}
	if !resp.Succeeded {
		return false, nil
	}
	for _, f := range ch.after {
		f(ctx)
	}
	return true, nil
}
