package servicing

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/applicability"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/store"
)

// servicingSpace is how many times the image's size a servicing run
// needs on its agent's drive: a copy, its mount and its export (the
// agent's pipeline checks the same at its DRIVE step).
const servicingSpace = 3

// PlanSchedule says what CreateSchedule would do with the same arguments,
// without doing it: the updates in apply order with the result expected
// of each on the image as it is now, the disk space needed, when the first
// run would start, and warnings.
func (s *Service) PlanSchedule(ctx context.Context, parent string, sched *osvcv1.Schedule, allApplicable bool) (*osvcv1.SchedulePlan, error) {
	imageID, err := catalog.ImageID(parent)
	if err != nil {
		return nil, errdefs.InvalidArgument("parent", fmt.Sprintf("want images/{id}, got %q", truncate(parent, 80)))
	}
	in := &osvcv1.Schedule{
		Updates: sched.GetUpdates(), Selection: sched.GetSelection(), StartTime: sched.GetStartTime(),
		Recurrence: sched.GetRecurrence(), RemoveSuperseded: sched.GetRemoveSuperseded(),
	}
	if allApplicable {
		if len(in.GetUpdates()) > 0 || in.GetSelection() != nil {
			return nil, errdefs.InvalidArgument("schedule.updates", "send either updates, a selection or all_applicable")
		}
		in.Selection = &osvcv1.UpdateSelection{}
	}
	rule, err := checkSchedule(in)
	if err != nil {
		return nil, err
	}
	img, _, err := store.Get[*osvcv1.Image](ctx, s.store, s.store.ImageKey(imageID))
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, fmt.Errorf("image %s: %w", parent, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if err := s.checkScheduleFor(img, in); err != nil {
		return nil, err
	}
	now := s.now()
	first := firstOccurrence(in, rule, now)
	plan := &osvcv1.SchedulePlan{FirstRunTime: timestamppb.New(first)}
	if _, err := ServiceableVersion(img, img.GetCurrentVersion()); err != nil {
		plan.Warnings = append(plan.Warnings, err.Error())
	}

	updates, err := s.selectFor(ctx, img, in)
	if err != nil {
		return nil, err
	}
	if in.GetSelection() != nil {
		if rule != nil || first.After(now) {
			plan.Warnings = append(plan.Warnings, "the updates are chosen when each run starts; these are what would be chosen now")
		}
		if len(updates) == 0 {
			plan.Warnings = append(plan.Warnings, "no applicable update matches the selection now")
		}
	}
	expect, err := s.catalog.Expect(ctx, img, updates)
	if err != nil {
		return nil, err
	}
	engines, agents, err := s.siteEngines(ctx, img.GetSite())
	if err != nil {
		return nil, err
	}
	if agents == 0 {
		plan.Warnings = append(plan.Warnings, fmt.Sprintf("no agent of site %s is connected: the run waits until one is ('osvcctl agent list')", img.GetSite()))
	}
	var size int64
	if v := currentVersion(img); v != nil {
		size = servicingSpace * v.GetSizeBytes()
	}
	notApplied := 0
	for i, u := range updates {
		p := &osvcv1.PlannedUpdate{Update: u.GetName(), Kb: u.GetKb(), Title: u.GetTitle(), Expected: expect[i].State, Reason: expect[i].Reason}
		if p.Expected == osvcv1.UpdateState_UPDATE_STATE_APPLIED {
			if why := unsupported(u, img, engines, agents); why != "" {
				p.Expected, p.Reason = osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED, why
			} else if by := supersededBy(u, updates, expect); by != "" {
				p.Reason = fmt.Sprintf("superseded by %s, also selected: applied, then replaced by it", by)
				plan.Warnings = append(plan.Warnings, fmt.Sprintf("%s is superseded by %s, also selected: select only the newer", u.GetName(), by))
			}
		}
		if p.Expected != osvcv1.UpdateState_UPDATE_STATE_APPLIED {
			notApplied++
		}
		for _, f := range u.GetFiles() {
			size += f.GetSizeBytes()
		}
		plan.Updates = append(plan.Updates, p)
	}
	plan.DiskBytesNeeded = size
	if notApplied > 0 {
		plan.Warnings = append(plan.Warnings, fmt.Sprintf("%d of %d updates are not expected to apply (see each one's reason)", notApplied, len(updates)))
	}
	if len(updates) > 0 && notApplied == len(updates) {
		plan.Warnings = append(plan.Warnings, "the run would change nothing: no version would be added")
	}
	if active, err := s.activeRunOf(ctx, imageID); err != nil {
		return nil, err
	} else if active != "" {
		plan.Warnings = append(plan.Warnings, fmt.Sprintf("the image has run %s in process: a run for now is refused, a later one waits for it", active))
	}
	return plan, nil
}

// siteEngines are the engines of the connected agents of site, and how
// many agents that is.
func (s *Service) siteEngines(ctx context.Context, site string) ([]string, int, error) {
	var engines []string
	n := 0
	for token := ""; ; {
		page, next, err := store.List[*osvcv1.Agent](ctx, s.store, s.store.AgentsPrefix(), 1000, token)
		if err != nil {
			return nil, 0, err
		}
		for _, a := range page {
			if a.GetSite() != site || a.GetState() != osvcv1.AgentState_AGENT_STATE_CONNECTED {
				continue
			}
			n++
			for _, e := range a.GetEngines() {
				if !slices.Contains(engines, e) {
					engines = append(engines, e)
				}
			}
		}
		if next == "" {
			return engines, n, nil
		}
		token = next
	}
}

// unsupported says why no engine of the site's agents would apply u to
// img; "" when one would (or no agent is there to tell).
func unsupported(u *osvcv1.Update, img *osvcv1.Image, engines []string, agents int) string {
	switch {
	case slices.Contains(img.GetUnsupportedUpdates(), u.GetName()):
		return "an agent reported it UNSUPPORTED for this image"
	case len(u.GetEngines()) == 0:
		return "no engine applies a file of this kind" + reasonSuffix(u.GetUnsupportedReason())
	case agents > 0 && !slices.ContainsFunc(u.GetEngines(), func(e string) bool { return slices.Contains(engines, e) }):
		return fmt.Sprintf("the agents of site %s run %s; it needs %s", img.GetSite(), strings.Join(engines, ", "), strings.Join(u.GetEngines(), " or "))
	}
	return ""
}

func reasonSuffix(r string) string {
	if r == "" {
		return ""
	}
	return ": " + r
}

// supersededBy names another selected update expected to apply that
// supersedes u, "" for none.
func supersededBy(u *osvcv1.Update, updates []*osvcv1.Update, expect []catalog.Expectation) string {
	for i, v := range updates {
		if v == u || expect[i].State != osvcv1.UpdateState_UPDATE_STATE_APPLIED {
			continue
		}
		if applicability.Supersedes(v.GetSupersedes(), u.GetPackageIdentity(), u.GetKb()) {
			return v.GetName()
		}
	}
	return ""
}

// activeRunOf is the run that holds the image, "" when it is free.
func (s *Service) activeRunOf(ctx context.Context, imageID string) (string, error) {
	name, _, err := store.Get[*wrapperspb.StringValue](ctx, s.store, s.store.ActiveRunKey(imageID))
	if errors.Is(err, errdefs.ErrNotFound) {
		return "", nil
	}
	return name.GetValue(), err
}
