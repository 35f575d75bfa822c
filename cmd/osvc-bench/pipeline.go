package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/osvc/osvc/agent/engine"
	"github.com/osvc/osvc/agent/engine/wimlib"
	"github.com/osvc/osvc/agent/mountinfo"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// pipelineRounds is how many times each side services the image; the
// medians are reported.
const pipelineRounds = 3

// unmountSettle bounds the wait for the kernel to drop a FUSE mount after
// wimlib-imagex unmount returned, before the hand sequence's folder goes.
const unmountSettle = 30 * time.Second

// stepOrder is the pipeline's order of steps, the order they are printed in.
var stepOrder = []osvcv1.Step{
	stepQueue, osvcv1.Step_STEP_DRIVE, osvcv1.Step_STEP_STAGE, osvcv1.Step_STEP_COPY, osvcv1.Step_STEP_VERIFY,
	osvcv1.Step_STEP_MOUNT, osvcv1.Step_STEP_APPLY, osvcv1.Step_STEP_CLEANUP, osvcv1.Step_STEP_COMMIT,
	osvcv1.Step_STEP_EXPORT, osvcv1.Step_STEP_VERIFY_RESULT, osvcv1.Step_STEP_SWAP, osvcv1.Step_STEP_REPORT,
	stepGaps, stepFinish,
}

// StepFigure is one step's median time on each side of the pipeline
// benchmark; a side without such a step has none.
type StepFigure struct {
	Step   string   `json:"step"`
	OsvcS  *float64 `json:"osvc_s,omitempty"`
	FloorS *float64 `json:"floor_s,omitempty"`
}

// stepTimes are one side's time per step in one round.
type stepTimes map[osvcv1.Step]time.Duration

// benchPipeline compares osvc servicing a generated image of -n MiB of file
// data end to end (a real server with embedded etcd and content library, a
// real agent with the wimlib engine, every applicable update, remove
// superseded, from the schedule's creation until the run's end is seen)
// with the floor: the same wimlib-imagex command sequence the engine runs,
// run directly on a copy made with cp and applying the packages with the
// engine's own code, with no server, agent or transfer. The sides alternate
// over pipelineRounds rounds, each round a fresh agent (empty update cache)
// and a fresh import of the same image. osvc's steps come from the run's
// step records.
func benchPipeline(ctx context.Context, cfg benchConfig) (*Result, error) {
	r, err := startRig(ctx, cfg, int64(cfg.N)<<20, 0)
	if err != nil {
		return nil, err
	}
	defer r.close()
	fmt.Fprintf(cfg.Out, "pipeline: image %s (%d bytes, %d MiB of file data), %d update files\n",
		filepath.Base(r.sample.WIM), r.wim.GetSizeBytes(), cfg.N, len(r.sample.Updates))

	osvc := Figure{Name: "osvc servicing run, schedule to result", Unit: "s"}
	floor := Figure{Name: "the same wimlib-imagex sequence run by hand", Unit: "s"}
	var osvcSteps, floorSteps []stepTimes
	// order is the first run's: the hand sequence applies what osvc applies,
	// in the same order, and every run must keep to it.
	var order *osvcv1.Run
	for round := 1; round <= pipelineRounds; round++ {
		var s *serviced
		var hand *handResult
		// Alternating which side goes first spreads drift in the machine's
		// load over both; the first round learns the order from osvc.
		for _, osvcTurn := range []bool{round%2 == 1, round%2 == 0} {
			if osvcTurn {
				if s, err = r.service(ctx, round, true); err != nil {
					return nil, fmt.Errorf("round %d: %w", round, err)
				}
				if order == nil {
					order = s.run
				} else if !slices.Equal(s.run.GetUpdates(), order.GetUpdates()) {
					return nil, fmt.Errorf("round %d applied %v, round 1 %v: every round must do the same work", round, s.run.GetUpdates(), order.GetUpdates())
				}
			} else if hand, err = r.handSequence(ctx, round, order); err != nil {
				return nil, fmt.Errorf("round %d, by hand: %w", round, err)
			}
		}
		osvc.Samples = append(osvc.Samples, s.elapsed.Seconds())
		floor.Samples = append(floor.Samples, hand.elapsed.Seconds())
		osvcSteps = append(osvcSteps, runSteps(s))
		floorSteps = append(floorSteps, hand.steps)
		fmt.Fprintf(cfg.Out, "pipeline %d/%d: by hand %.2f s, osvc %.2f s; results %s by hand, %s by osvc\n", round, pipelineRounds,
			hand.elapsed.Seconds(), s.elapsed.Seconds(), humanize.IBytes(uint64(hand.size)), humanize.IBytes(uint64(s.run.GetResultSizeBytes())))
	}
	osvc.Value, floor.Value = median(osvc.Samples), median(floor.Samples)
	steps := medianSteps(osvcSteps, floorSteps)
	printSteps(cfg, steps, osvc.Value, floor.Value)
	return &Result{Osvc: osvc, Floor: floor, Steps: steps, ImageBytes: r.wim.GetSizeBytes()}, nil
}

// Parts of an osvc run outside its steps, in the step tables.
const (
	// stepQueue is from the schedule's creation until the first step
	// started: the scheduler's lease and the assignment reaching the agent.
	stepQueue osvcv1.Step = -1 - iota
	// stepGaps are the time between one step's end and the next one's
	// start: the step reports awaiting their acknowledgement.
	stepGaps
	// stepFinish is from the last step's end until the run's end was
	// seen: the result report, the version swap and the watch.
	stepFinish
)

// runSteps adds up the time of each step of a run (a step that ran twice,
// as APPLY with .NET after cleanup, counts both times) and of the parts
// between them.
func runSteps(s *serviced) stepTimes {
	out := stepTimes{}
	var first, last time.Time
	var inSteps time.Duration
	for _, rec := range s.steps {
		if rec.GetState() == osvcv1.StepState_STEP_STATE_SKIPPED {
			continue
		}
		start, end := rec.GetStartTime().AsTime(), rec.GetEndTime().AsTime()
		out[rec.GetStep()] += end.Sub(start)
		inSteps += end.Sub(start)
		if first.IsZero() || start.Before(first) {
			first = start
		}
		if end.After(last) {
			last = end
		}
	}
	if first.IsZero() {
		return out
	}
	out[stepQueue] = first.Sub(s.start)
	out[stepFinish] = s.start.Add(s.elapsed).Sub(last)
	out[stepGaps] = last.Sub(first) - inSteps
	return out
}

// medianSteps takes each step's median over the rounds, on each side that has it.
func medianSteps(osvc, floor []stepTimes) []StepFigure {
	med := func(rounds []stepTimes, step osvcv1.Step) *float64 {
		var samples []float64
		for _, r := range rounds {
			if d, ok := r[step]; ok {
				samples = append(samples, d.Seconds())
			}
		}
		if len(samples) == 0 {
			return nil
		}
		m := median(samples)
		return &m
	}
	var out []StepFigure
	for _, step := range stepOrder {
		f := StepFigure{Step: stepName(step), OsvcS: med(osvc, step), FloorS: med(floor, step)}
		if f.OsvcS != nil || f.FloorS != nil {
			out = append(out, f)
		}
	}
	return out
}

func stepName(s osvcv1.Step) string {
	switch s {
	case stepQueue:
		return "(queue: lease, assign)"
	case stepGaps:
		return "(between steps: reports)"
	case stepFinish:
		return "(result, swap, watch)"
	}
	return strings.TrimPrefix(s.String(), "STEP_")
}

// printSteps prints the per-step table (medians, which need not add up to
// the median total).
func printSteps(cfg benchConfig, steps []StepFigure, osvcTotal, floorTotal float64) {
	tw := tabwriter.NewWriter(cfg.Out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "step (median s)\tosvc\tby hand\tratio\t\n")
	cell := func(v *float64) string {
		if v == nil {
			return "-"
		}
		return fmt.Sprintf("%.2f", *v)
	}
	for _, s := range steps {
		ratio := "-"
		if s.OsvcS != nil && s.FloorS != nil && *s.FloorS > 0 {
			ratio = fmt.Sprintf("%.2f", *s.OsvcS / *s.FloorS)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", s.Step, cell(s.OsvcS), cell(s.FloorS), ratio)
	}
	fmt.Fprintf(tw, "total\t%.2f\t%.2f\t%.2f\t\n", osvcTotal, floorTotal, osvcTotal/floorTotal)
	tw.Flush()
}

// handOutcomes are the update results the engine's outcomes stand for.
var handOutcomes = map[engine.Outcome]osvcv1.UpdateState{
	engine.Applied:          osvcv1.UpdateState_UPDATE_STATE_APPLIED,
	engine.AlreadyInstalled: osvcv1.UpdateState_UPDATE_STATE_ALREADY_INSTALLED,
	engine.NotApplicable:    osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE,
	engine.Unsupported:      osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED,
}

// handResult is one run of the hand sequence.
type handResult struct {
	steps   stepTimes
	elapsed time.Duration
	// size is the exported image's.
	size int64
}

// handSequence services the sample image as an administrator would by hand
// with the commands the wimlib engine runs: cp the image, read its indexes
// (wimlib-imagex info), verify it, mountrw, apply the updates in the run's
// order with the engine's package code (.NET after cleanup, as the pipeline
// does), clean up superseded components, unmount --commit, export and
// verify the export. The update files are read where the sample wrote them.
func (r *rig) handSequence(ctx context.Context, round int, order *osvcv1.Run) (_ *handResult, err error) {
	bin, err := exec.LookPath(wimlib.DefaultBinary)
	if err != nil {
		return nil, fmt.Errorf("%s not found: install wimtools: %w", wimlib.DefaultBinary, err)
	}
	eng, err := wimlib.New(wimlib.Config{Logger: r.cfg.Logger})
	if err != nil {
		return nil, err
	}
	first, afterCleanup, err := r.applyOrder(order)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(r.dir, fmt.Sprintf("hand-%d", round))
	source, mount, export := filepath.Join(dir, "source.wim"), filepath.Join(dir, "mount"), filepath.Join(dir, "export.wim")
	if err := os.MkdirAll(mount, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		if mountinfo.IsMountPoint(mount) {
			_ = exec.Command(bin, "unmount", mount).Run()
		}
		if werr := waitNotMounted(mount); werr != nil && err == nil {
			err = werr
		}
		os.RemoveAll(dir)
	}()
	wimlibCmd := func(args ...string) error {
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("wimlib-imagex %s: %w: %s", strings.Join(args, " "), err, lastLines(out.String()))
		}
		return nil
	}
	res := &handResult{steps: stepTimes{}}
	timed := func(step osvcv1.Step, fn func() error) error {
		t := time.Now()
		err := fn()
		res.steps[step] += time.Since(t)
		return err
	}
	apply := func(m *engine.Mount, updates []*osvcv1.Update) error {
		return timed(osvcv1.Step_STEP_APPLY, func() error {
			for _, u := range updates {
				for _, f := range u.GetFiles() {
					res, err := eng.AddPackage(ctx, m, r.files[f.GetFileName()], nil)
					if err != nil {
						return err
					}
					if got, want := handOutcomes[res.Outcome], r.want(u.GetKb()); got != want {
						return fmt.Errorf("%s: %s (%s), the sample expects %s", u.GetKb(), got, res.Detail, want)
					}
				}
			}
			return nil
		})
	}

	syncDisks()
	start := time.Now()
	var indexes []engine.Index
	if err := timed(osvcv1.Step_STEP_COPY, func() error {
		if out, err := exec.CommandContext(ctx, "cp", r.sample.WIM, source).CombinedOutput(); err != nil {
			return fmt.Errorf("cp %s: %w: %s", r.sample.WIM, err, out)
		}
		indexes, err = eng.Inspect(ctx, source)
		return err
	}); err != nil {
		return nil, err
	}
	if len(indexes) != 1 {
		return nil, fmt.Errorf("the sample image has %d indexes; the hand sequence services one", len(indexes))
	}
	if err := timed(osvcv1.Step_STEP_VERIFY, func() error { return wimlibCmd("verify", source) }); err != nil {
		return nil, err
	}
	if err := timed(osvcv1.Step_STEP_MOUNT, func() error { return wimlibCmd("mountrw", source, "1", mount) }); err != nil {
		return nil, err
	}
	m := &engine.Mount{WIM: source, Index: 1, Dir: mount, Info: &indexes[0]}
	if err := apply(m, first); err != nil {
		return nil, err
	}
	if err := timed(osvcv1.Step_STEP_CLEANUP, func() error { return eng.Cleanup(ctx, m) }); err != nil {
		return nil, err
	}
	if err := apply(m, afterCleanup); err != nil {
		return nil, err
	}
	if err := timed(osvcv1.Step_STEP_COMMIT, func() error { return wimlibCmd("unmount", mount, "--commit") }); err != nil {
		return nil, err
	}
	if err := timed(osvcv1.Step_STEP_EXPORT, func() error { return wimlibCmd("export", source, "1", export) }); err != nil {
		return nil, err
	}
	if err := timed(osvcv1.Step_STEP_VERIFY_RESULT, func() error { return wimlibCmd("verify", export) }); err != nil {
		return nil, err
	}
	res.elapsed = time.Since(start)
	st, err := os.Stat(export)
	if err != nil {
		return nil, err
	}
	res.size = st.Size()
	return res, nil
}

// applyOrder is the order run applied its updates in: the run's, with .NET
// updates after cleanup, as the pipeline does for a single-index image with
// remove superseded.
func (r *rig) applyOrder(run *osvcv1.Run) (first, afterCleanup []*osvcv1.Update, err error) {
	for _, name := range run.GetUpdates() {
		u := r.updates[name]
		if u == nil {
			return nil, nil, fmt.Errorf("the run applied %s, which the benchmark did not import", name)
		}
		if u.GetClassification() == osvcv1.Classification_CLASSIFICATION_DOTNET {
			afterCleanup = append(afterCleanup, u)
		} else {
			first = append(first, u)
		}
	}
	return first, afterCleanup, nil
}

// waitNotMounted waits for the kernel to drop the FUSE mount at dir.
func waitNotMounted(dir string) error {
	deadline := time.Now().Add(unmountSettle)
	for mountinfo.IsMountPoint(dir) {
		if time.Now().After(deadline) {
			return errors.New(dir + " is still mounted: unmount it with fusermount -u")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// lastLines is the end of a command's output, where wimlib-imagex says what failed.
func lastLines(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	return strings.Join(lines, " ")
}
