package servicing

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/recurrence"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/store"
)

// A schedule is a resource of its own, images/{id}/schedules/{id}: what to
// apply (listed updates, or a selection made at each occurrence) and when
// (as soon as possible, at a time, or recurring). A schedule due now
// queues its run when it is created; the others are started by the
// scheduler (StartDueSchedules) when their occurrence comes. A future
// occurrence never holds the image: only a run that has not ended does,
// and a due occurrence waits for it (Schedule.waiting says so).

// maxSelectionText bounds a selection's title filter.
const maxSelectionText = 200

// ScheduleID splits images/{id}/schedules/{id}.
func ScheduleID(name string) (imageID, scheduleID string, err error) {
	image, sched, ok := strings.Cut(name, "/"+schedulesCollection)
	if ok {
		if imageID, err = catalog.ImageID(image); err == nil && validID(sched) {
			return imageID, sched, nil
		}
	}
	return "", "", errdefs.InvalidArgument("name", fmt.Sprintf("want images/{id}/schedules/{id}, got %q", truncate(name, 120)))
}

// validID accepts the ids newID makes: letters, digits and '-'.
func validID(id string) bool {
	return id != "" && len(id) <= 64 && strings.Trim(id, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
}

// checkSchedule checks what a request may set on a schedule, and parses
// its recurrence.
func checkSchedule(sched *osvcv1.Schedule) (*recurrence.Rule, error) {
	if sched.GetSelection() != nil && len(sched.GetUpdates()) > 0 {
		return nil, errdefs.InvalidArgument("schedule.updates", "send either updates or a selection (or all_applicable), not both")
	}
	if sel := sched.GetSelection(); sel != nil {
		if len(sel.GetTitleContains()) > maxSelectionText {
			return nil, errdefs.InvalidArgument("schedule.selection.title_contains", fmt.Sprintf("%d bytes; at most %d", len(sel.GetTitleContains()), maxSelectionText))
		}
		for i, c := range sel.GetClassifications() {
			if _, ok := osvcv1.Classification_name[int32(c)]; !ok || c == osvcv1.Classification_CLASSIFICATION_UNSPECIFIED {
				return nil, errdefs.InvalidArgument(fmt.Sprintf("schedule.selection.classifications[%d]", i), fmt.Sprintf("%d is not a classification", c))
			}
		}
	}
	if sched.GetRecurrence() == nil {
		return nil, nil
	}
	rule, err := recurrence.Parse(sched.GetRecurrence(), "schedule.recurrence")
	if err != nil {
		return nil, err
	}
	return &rule, nil
}

// firstOccurrence is when a schedule first runs: its start time (now when
// unset) for one that runs once, else its rule's first occurrence from
// then on.
func firstOccurrence(sched *osvcv1.Schedule, rule *recurrence.Rule, now time.Time) time.Time {
	from := now
	if st := sched.GetStartTime(); st != nil && st.AsTime().After(now) {
		from = st.AsTime()
	}
	if rule == nil {
		return from
	}
	// An occurrence at the start time itself counts.
	return rule.Next(from.Add(-time.Nanosecond))
}

// nextAfter is the occurrence after the one that started at t; zero for a
// schedule that runs once.
func nextAfter(sched *osvcv1.Schedule, t time.Time) (time.Time, error) {
	if sched.GetRecurrence() == nil {
		return time.Time{}, nil
	}
	rule, err := recurrence.Parse(sched.GetRecurrence(), "schedule.recurrence")
	if err != nil {
		return time.Time{}, err
	}
	return rule.Next(t), nil
}

// selectFor picks the updates of one occurrence of sched for img: the
// listed ones, or what is applicable now and passes the selection's
// filters, in apply order.
func (s *Service) selectFor(ctx context.Context, img *osvcv1.Image, sched *osvcv1.Schedule) ([]*osvcv1.Update, error) {
	var updates []*osvcv1.Update
	if sel := sched.GetSelection(); sel != nil {
		applicable, err := s.catalog.ApplicableUpdates(ctx, img, nil)
		if err != nil {
			return nil, fmt.Errorf("applicable updates of %s: %w", img.GetName(), err)
		}
		title := strings.ToLower(sel.GetTitleContains())
		for _, u := range applicable {
			if len(sel.GetClassifications()) > 0 && !slices.Contains(sel.GetClassifications(), u.GetClassification()) {
				continue
			}
			if title != "" && !strings.Contains(strings.ToLower(u.GetTitle()), title) {
				continue
			}
			updates = append(updates, u)
		}
	} else {
		listed, err := s.listedUpdates(ctx, sched.GetUpdates())
		if err != nil {
			return nil, err
		}
		updates = listed
	}
	SortForServicing(updates)
	return updates, nil
}

// listedUpdates reads the updates a schedule lists, refusing a bad name,
// a duplicate and one the catalog lacks.
func (s *Service) listedUpdates(ctx context.Context, names []string) ([]*osvcv1.Update, error) {
	if len(names) == 0 {
		return nil, errdefs.InvalidArgument("schedule.updates", "select at least one update (updates/{id}), or set all_applicable or a selection")
	}
	seen := make(map[string]bool, len(names))
	updates := make([]*osvcv1.Update, 0, len(names))
	for i, name := range names {
		field := fmt.Sprintf("schedule.updates[%d]", i)
		if _, err := catalog.UpdateID(name); err != nil {
			return nil, errdefs.InvalidArgument(field, fmt.Sprintf("want updates/{id}, got %q", truncate(name, 80)))
		}
		if seen[name] {
			return nil, errdefs.InvalidArgument(field, fmt.Sprintf("%s is selected twice; list each update once", name))
		}
		seen[name] = true
		u, err := s.catalog.GetUpdate(ctx, name)
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil, errdefs.InvalidArgument(field, fmt.Sprintf("%s is not in the catalog; import it first or pick one from ListUpdates", name))
		}
		if err != nil {
			return nil, err
		}
		updates = append(updates, u)
	}
	return updates, nil
}

// queueRun writes, in tx, a PENDING run of sched for img with updates, the
// image's active-run key and run index, and the image's status; the
// caller checked the image is free.
func (s *Service) queueRun(tx *store.Tx, img *osvcv1.Image, imageID string, sched *osvcv1.Schedule, updates []*osvcv1.Update, now time.Time) (*osvcv1.Run, error) {
	source := currentVersion(img)
	if source == nil {
		return nil, fmt.Errorf("image %s has no current version to service; import it again: %w", img.GetName(), errdefs.ErrFailedPrecondition)
	}
	runID := newID("r-", now)
	run := &osvcv1.Run{
		Name:                     RunName(runID),
		Image:                    img.GetName(),
		Kind:                     osvcv1.RunKind_RUN_KIND_SERVICING,
		Schedule:                 sched.GetName(),
		State:                    osvcv1.RunState_RUN_STATE_PENDING,
		ContinueOnError:          sched.GetContinueOnError(),
		RemoveSuperseded:         sched.GetRemoveSuperseded(),
		UpdateDistributionPoints: sched.GetUpdateDistributionPoints(),
		SourceVersion:            source.GetVersion(),
		SourceSizeBytes:          source.GetSizeBytes(),
		CreateTime:               timestamppb.New(now),
	}
	for _, u := range updates {
		run.Updates = append(run.Updates, u.GetName())
	}
	run.UpdateResults = pendingResults(img, updates)
	img.ServicingStatus = osvcv1.ServicingStatus_SERVICING_STATUS_SCHEDULED
	img.UpdateTime = timestamppb.New(now)

	runKey := s.store.RunKey(runID)
	// The new id is read absent, so the commit refuses to overwrite.
	if _, exists, err := tx.Raw(runKey); err != nil {
		return nil, err
	} else if exists {
		return nil, fmt.Errorf("run id %s is taken: %w", runID, errdefs.ErrContended)
	}
	for key, m := range map[string]proto.Message{runKey: run, s.store.ActiveRunKey(imageID): wrapperspb.String(run.Name), s.store.ImageKey(imageID): img} {
		if err := tx.Put(key, m); err != nil {
			return nil, err
		}
	}
	tx.PutRaw(s.store.ImageRunKey(imageID, runID), nil)
	return run, nil
}

// activeRun is the run that holds the image, "" when it is free.
func (s *Service) activeRun(tx *store.Tx, imageID string) (string, error) {
	raw, exists, err := tx.Raw(s.store.ActiveRunKey(imageID))
	if err != nil || !exists {
		return "", err
	}
	name, err := store.Unmarshal[*wrapperspb.StringValue](raw)
	return name.GetValue(), err
}

// GetSchedule returns the schedule named images/{id}/schedules/{id}.
func (s *Service) GetSchedule(ctx context.Context, name string) (*osvcv1.Schedule, error) {
	imageID, schedID, err := ScheduleID(name)
	if err != nil {
		return nil, err
	}
	sched, _, err := store.Get[*osvcv1.Schedule](ctx, s.store, s.store.ScheduleKey(imageID, schedID))
	if err != nil {
		return nil, fmt.Errorf("schedule %s: %w", name, err)
	}
	return sched, nil
}

// ListSchedules lists the schedules of the image parent, or of every image
// when parent is "", in key order.
func (s *Service) ListSchedules(ctx context.Context, parent string, pageSize int, token string) ([]*osvcv1.Schedule, string, error) {
	imageID := ""
	if parent != "" {
		id, err := catalog.ImageID(parent)
		if err != nil {
			return nil, "", errdefs.InvalidArgument("parent", fmt.Sprintf("want images/{id}, got %q", truncate(parent, 80)))
		}
		imageID = id
	}
	return store.List[*osvcv1.Schedule](ctx, s.store, s.store.SchedulesPrefix(imageID), pageSize, token)
}

// NextOccurrences returns, by image name, the earliest next occurrence of
// the image's schedules (the console's Scheduled Updates Date); imageID ""
// reads every image's.
func (s *Service) NextOccurrences(ctx context.Context, imageID string) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	err := s.eachSchedule(ctx, imageID, func(sched *osvcv1.Schedule) error {
		if next := sched.GetNextRunTime(); next != nil {
			image, _, _ := strings.Cut(sched.GetName(), "/"+schedulesCollection)
			if cur, ok := out[image]; !ok || next.AsTime().Before(cur) {
				out[image] = next.AsTime()
			}
		}
		return nil
	})
	return out, err
}

// eachSchedule calls fn with every schedule of imageID ("" for all).
func (s *Service) eachSchedule(ctx context.Context, imageID string, fn func(*osvcv1.Schedule) error) error {
	for token := ""; ; {
		page, next, err := store.List[*osvcv1.Schedule](ctx, s.store, s.store.SchedulesPrefix(imageID), 1000, token)
		if err != nil {
			return err
		}
		for _, sched := range page {
			if err := fn(sched); err != nil {
				return err
			}
		}
		if next == "" {
			return nil
		}
		token = next
	}
}

// scheduleMaskFields are what UpdateSchedule may change.
var scheduleMaskFields = []string{"updates", "selection", "start_time", "recurrence", "continue_on_error", "update_distribution_points", "remove_superseded"}

// UpdateSchedule changes the fields of the schedule in (by name) that mask
// names, and computes its next occurrence again.
func (s *Service) UpdateSchedule(ctx context.Context, in *osvcv1.Schedule, mask *fieldmaskpb.FieldMask) (*osvcv1.Schedule, error) {
	imageID, schedID, err := ScheduleID(in.GetName())
	if err != nil {
		return nil, errdefs.InvalidArgument("schedule.name", err.Error())
	}
	if len(mask.GetPaths()) == 0 {
		return nil, errdefs.InvalidArgument("update_mask", "name the fields to change, e.g. recurrence,updates; they are "+strings.Join(scheduleMaskFields, ", "))
	}
	for _, p := range mask.GetPaths() {
		if !slices.Contains(scheduleMaskFields, p) {
			return nil, errdefs.InvalidArgument("update_mask", fmt.Sprintf("%q cannot be changed; the fields are %s", p, strings.Join(scheduleMaskFields, ", ")))
		}
	}
	key := s.store.ScheduleKey(imageID, schedID)
	var out *osvcv1.Schedule
	_, err = s.store.Txn(ctx, "update schedule "+in.GetName(), func(tx *store.Tx) error {
		sched, err := store.Load[*osvcv1.Schedule](tx, key)
		if err != nil {
			return fmt.Errorf("schedule %s: %w", in.GetName(), err)
		}
		img, err := store.Load[*osvcv1.Image](tx, s.store.ImageKey(imageID))
		if err != nil {
			return fmt.Errorf("image of schedule %s: %w", in.GetName(), err)
		}
		for _, p := range mask.GetPaths() {
			switch p {
			case "updates":
				sched.Updates, sched.Selection = in.GetUpdates(), nil
			case "selection":
				sched.Selection = in.GetSelection()
				if sched.Selection != nil {
					sched.Updates = nil
				}
			case "start_time":
				sched.StartTime = in.GetStartTime()
			case "recurrence":
				sched.Recurrence = in.GetRecurrence()
			case "continue_on_error":
				sched.ContinueOnError = in.GetContinueOnError()
			case "update_distribution_points":
				sched.UpdateDistributionPoints = in.GetUpdateDistributionPoints()
			case "remove_superseded":
				sched.RemoveSuperseded = in.GetRemoveSuperseded()
			}
		}
		rule, err := checkSchedule(sched)
		if err != nil {
			return err
		}
		if err := s.checkScheduleFor(img, sched); err != nil {
			return err
		}
		if sched.GetSelection() == nil {
			updates, err := s.listedUpdates(ctx, sched.GetUpdates())
			if err != nil {
				return err
			}
			SortForServicing(updates)
			sched.Updates = updateNames(updates)
		}
		now := s.now()
		switch {
		case rule != nil:
			sched.NextRunTime = timestamppb.New(firstOccurrence(sched, rule, now))
		case sched.GetLastRun() == "":
			sched.NextRunTime = timestamppb.New(firstOccurrence(sched, nil, now))
		default:
			// A schedule that ran once has run.
			sched.NextRunTime = nil
		}
		sched.Waiting = ""
		sched.UpdateTime = timestamppb.New(now)
		out = sched
		return tx.Put(key, sched)
	})
	if err != nil {
		return nil, err
	}
	s.logger.Info("schedule updated", "schedule", out.GetName(), "fields", mask.GetPaths(), "next_run_time", out.GetNextRunTime().AsTime())
	return out, nil
}

// DeleteSchedule removes a schedule; its runs stay.
func (s *Service) DeleteSchedule(ctx context.Context, name string) error {
	imageID, schedID, err := ScheduleID(name)
	if err != nil {
		return err
	}
	resp, err := s.store.Client().Delete(ctx, s.store.ScheduleKey(imageID, schedID))
	if err != nil {
		return fmt.Errorf("delete schedule %s: %w", name, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("schedule %s: %w", name, errdefs.ErrNotFound)
	}
	s.logger.Info("schedule deleted", "schedule", name)
	return nil
}

// checkScheduleFor checks a schedule against its image: its start time,
// and remove superseded only for an image of one index.
func (s *Service) checkScheduleFor(img *osvcv1.Image, sched *osvcv1.Schedule) error {
	if err := checkStartTime(sched.GetStartTime(), img, s.now()); err != nil {
		return err
	}
	if n := len(img.GetIndexes()); sched.GetRemoveSuperseded() && n > 1 {
		// DISM's /ResetBase and the export that makes the image smaller
		// work on an image of one index; Configuration Manager refuses the
		// option the same way ("If the image has more than one index, you
		// can't use this option").
		return errdefs.InvalidArgument("schedule.remove_superseded", fmt.Sprintf(
			"image %s has %d indexes, and superseded updates are removed only from an image of one index: schedule without remove superseded, or import each index as an image of its own",
			img.GetName(), n))
	}
	return nil
}

func updateNames(updates []*osvcv1.Update) []string {
	out := make([]string, len(updates))
	for i, u := range updates {
		out[i] = u.GetName()
	}
	return out
}

// StartDueSchedules queues a run for each schedule whose occurrence has
// come by now (the scheduler's clock), and returns when the next one comes
// (zero when none is to come). A due schedule whose image has a run in
// process waits (Schedule.waiting) and is tried again when that run ends.
func (s *Service) StartDueSchedules(ctx context.Context, now time.Time) (time.Time, error) {
	var next time.Time
	var due []*osvcv1.Schedule
	err := s.eachSchedule(ctx, "", func(sched *osvcv1.Schedule) error {
		at := sched.GetNextRunTime()
		switch {
		case at == nil:
		case !at.AsTime().After(now):
			due = append(due, sched)
		case next.IsZero() || at.AsTime().Before(next):
			next = at.AsTime()
		}
		return nil
	})
	if err != nil {
		return time.Time{}, err
	}
	for _, sched := range due {
		later, err := s.startOccurrence(ctx, sched.GetName(), now)
		if err != nil {
			if ctx.Err() != nil {
				return time.Time{}, err
			}
			s.logger.Warn("cannot start a schedule's run; trying again at the next pass", "schedule", sched.GetName(), "error", err)
			continue
		}
		if !later.IsZero() && (next.IsZero() || later.Before(next)) {
			next = later
		}
	}
	return next, nil
}

// startOccurrence queues the run of a due schedule, unless its image has
// a run in process, and returns the schedule's next occurrence.
func (s *Service) startOccurrence(ctx context.Context, name string, now time.Time) (time.Time, error) {
	imageID, schedID, err := ScheduleID(name)
	if err != nil {
		return time.Time{}, err
	}
	key := s.store.ScheduleKey(imageID, schedID)
	var run *osvcv1.Run
	var next time.Time
	var waiting string
	_, err = s.store.Txn(ctx, "start schedule "+name, func(tx *store.Tx) error {
		run, next, waiting = nil, time.Time{}, ""
		sched, err := store.Load[*osvcv1.Schedule](tx, key)
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		at := sched.GetNextRunTime()
		if at == nil || at.AsTime().After(now) {
			if at != nil {
				next = at.AsTime()
			}
			return nil
		}
		img, err := store.Load[*osvcv1.Image](tx, s.store.ImageKey(imageID))
		if errors.Is(err, errdefs.ErrNotFound) {
			// The image is gone: so is what the schedule was for.
			tx.Delete(key)
			return nil
		}
		if err != nil {
			return err
		}
		if active, err := s.activeRun(tx, imageID); err != nil {
			return err
		} else if active != "" {
			waiting = fmt.Sprintf("due since %s; waits for %s, in process on the image", at.AsTime().UTC().Format(time.RFC3339), active)
			if sched.GetWaiting() == waiting {
				return nil
			}
			sched.Waiting = waiting
			return tx.Put(key, sched)
		}
		if _, err := ServiceableVersion(img, img.GetCurrentVersion()); err != nil {
			waiting = fmt.Sprintf("due since %s; %v", at.AsTime().UTC().Format(time.RFC3339), err)
			if sched.GetWaiting() == waiting {
				return nil
			}
			sched.Waiting = waiting
			return tx.Put(key, sched)
		}
		updates, err := s.selectFor(ctx, img, sched)
		if err != nil {
			return err
		}
		if next, err = nextAfter(sched, now); err != nil {
			return err
		}
		sched.NextRunTime = nil
		if !next.IsZero() {
			sched.NextRunTime = timestamppb.New(next)
		}
		sched.UpdateTime = timestamppb.New(now)
		if len(updates) == 0 {
			// This occurrence has nothing to do; the next one may.
			sched.Waiting = fmt.Sprintf("the occurrence of %s found no applicable update", at.AsTime().UTC().Format(time.RFC3339))
			return tx.Put(key, sched)
		}
		if run, err = s.queueRun(tx, img, imageID, sched, updates, now); err != nil {
			return err
		}
		sched.LastRun, sched.Waiting = run.GetName(), ""
		return tx.Put(key, sched)
	})
	if err != nil {
		return time.Time{}, err
	}
	if run != nil {
		s.logger.Info("schedule started its run", "schedule", name, "run", run.GetName(), "updates", len(run.GetUpdates()), "next_run_time", next)
	}
	return next, nil
}
