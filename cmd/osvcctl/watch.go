package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jedib0t/go-pretty/v6/progress"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

// Reconnecting a watch: a server restart or a replica going away ends the
// stream, not the run, so the watch picks up where it stopped.
const (
	watchReconnectWait = time.Second
	watchMaxReconnects = 10
)

// runDisplay shows a watched run as its snapshots arrive.
type runDisplay interface {
	// show gets each snapshot with the log lines new since the previous one.
	show(run *osvcv1.Run, lines []*osvcv1.LogLine)
	// close ends the live display before the final table is printed;
	// stopped tells that the watch stopped (Ctrl-C) before the run ended,
	// which is no failure of the run.
	close(stopped bool)
}

// watchOptions are how run watch (and the --watch of other commands) shows
// a run.
type watchOptions struct {
	// logLevel is the least level of the log lines shown: TRACE, DEBUG,
	// INFO, WARN or ERROR; empty for INFO.
	logLevel string
}

// logLevels rank the levels of a run's log lines; the agent logs the
// engine's command lines at DEBUG.
var logLevels = map[string]int{"TRACE": 0, "DEBUG": 1, "INFO": 2, "WARN": 3, "ERROR": 4}

// defaultLogLevel is what run watch shows unless told otherwise.
const defaultLogLevel = "info"

// logLevelFilter returns a filter keeping the lines at level or above; a
// line of a level it does not know is kept.
func logLevelFilter(level string) (func([]*osvcv1.LogLine) []*osvcv1.LogLine, error) {
	least, ok := logLevels[strings.ToUpper(cmp.Or(level, defaultLogLevel))]
	if !ok {
		return nil, usageErrorf("--log-level %q: use trace, debug, info, warn or error", level)
	}
	return func(lines []*osvcv1.LogLine) []*osvcv1.LogLine {
		var out []*osvcv1.LogLine
		for _, l := range lines {
			if rank, known := logLevels[strings.ToUpper(l.GetLevel())]; !known || rank >= least {
				out = append(out, l)
			}
		}
		return out
	}, nil
}

// watchRun follows a run until it ends, then prints its results. It returns a
// *runEndedError when the run failed or was canceled, and a *watchStoppedError
// when the watch was interrupted before the run ended.
func (c *cli) watchRun(ctx context.Context, name string, opts watchOptions) error {
	filter, err := logLevelFilter(opts.logLevel)
	if err != nil {
		return err
	}
	var display runDisplay
	switch {
	case c.output == outputJSON:
		display = nopDisplay{}
	case isTerminal(c.stdout):
		display = newBarDisplay(c.stdout)
	default:
		display = &plainDisplay{w: c.stdout}
	}
	var lines []*osvcv1.LogLine
	last, err := c.followRun(ctx, name, 0, "osvcctl run watch "+name, func(run *osvcv1.Run, fresh []*osvcv1.LogLine) {
		fresh = filter(fresh)
		lines = append(lines, fresh...)
		display.show(run, fresh)
	})
	var stopped *watchStoppedError
	display.close(errors.As(err, &stopped))
	if err != nil {
		return err
	}

	if c.output == outputJSON {
		if err := printJSON(c.stdout, &osvcv1.WatchRunResponse{Run: last, LogLines: lines}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(c.stdout, "\n%s %s%s\n", last.GetName(), runStateText(last.GetState()), runTookText(last))
		c.printRunResults(last)
	}
	if last.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		return &runEndedError{run: last.GetName(), state: last.GetState(), msg: last.GetError()}
	}
	return nil
}

// runTookText is " in 4m12s" for a run that started and ended, else empty.
func runTookText(r *osvcv1.Run) string {
	if r.GetStartTime() == nil || r.GetEndTime() == nil {
		return ""
	}
	return " in " + durationText(r.GetEndTime().AsTime().Sub(r.GetStartTime().AsTime()))
}

// followRun follows a run from after its log line afterSeq until it ends,
// calling show with each snapshot and the log lines new in it, each line
// once. A stream that ends or breaks before the run does is reopened after
// the last line seen; watchMaxReconnects in a row without a message gives
// up, saying to run again to follow it again. It returns the run's last
// snapshot, in a final state.
func (c *cli) followRun(ctx context.Context, name string, afterSeq int64, again string, show func(*osvcv1.Run, []*osvcv1.LogLine)) (*osvcv1.Run, error) {
	servicing, err := c.servicing()
	if err != nil {
		return nil, err
	}
	var (
		last      *osvcv1.Run
		reconnect int
	)
	for {
		err := func() error {
			stream, err := servicing.WatchRun(ctx, &osvcv1.WatchRunRequest{Name: name, AfterSequence: afterSeq})
			if err != nil {
				return err
			}
			for {
				resp, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					return err
				}
				reconnect = 0
				var fresh []*osvcv1.LogLine
				for _, l := range resp.GetLogLines() {
					// Lines are at least once: a resent batch must not print twice.
					if l.GetSequence() > afterSeq {
						afterSeq = l.GetSequence()
						fresh = append(fresh, l)
					}
				}
				if resp.GetRun() != nil {
					last = resp.GetRun()
				}
				show(last, fresh)
			}
		}()
		if last != nil && runEnded(last.GetState()) {
			return last, nil
		}
		if ctx.Err() != nil {
			return nil, &watchStoppedError{run: name, again: again}
		}
		if err != nil && (last == nil || !errors.Is(err, errdefs.ErrUnavailable)) {
			return nil, err
		}
		if reconnect++; reconnect > watchMaxReconnects {
			if err == nil {
				err = errors.New("the server ended the watch before the run ended")
			}
			return nil, fmt.Errorf("watch %s: %w (follow it again with '%s')", name, err, again)
		}
		// The first reconnect after a broken stream is at once: a replica
		// that went away usually has a sibling ready. Later ones, and those
		// after a stream the server ended itself, give it time to come back.
		if reconnect > 1 || err == nil {
			select {
			case <-ctx.Done():
			case <-time.After(watchReconnectWait):
			}
		}
	}
}

// runEnded tells a final run state.
func runEnded(s osvcv1.RunState) bool {
	switch s {
	case osvcv1.RunState_RUN_STATE_SUCCEEDED, osvcv1.RunState_RUN_STATE_FAILED, osvcv1.RunState_RUN_STATE_CANCELED:
		return true
	}
	return false
}

// updateEnded tells a final per-update state.
func updateEnded(s osvcv1.UpdateState) bool {
	switch s {
	case osvcv1.UpdateState_UPDATE_STATE_UNSPECIFIED, osvcv1.UpdateState_UPDATE_STATE_PENDING,
		osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS:
		return false
	}
	return true
}

// resultLabel names one update on one index: "KB5031354 (index 1)".
func resultLabel(u *osvcv1.UpdateResult) string {
	label := u.GetUpdate()
	if u.GetKb() != "" {
		label = kbText(u.GetKb())
	}
	return fmt.Sprintf("%s (index %d)", label, u.GetIndex())
}

func resultKey(u *osvcv1.UpdateResult) string {
	return fmt.Sprintf("%s#%d", u.GetUpdate(), u.GetIndex())
}

func logLineText(l *osvcv1.LogLine) string {
	var b strings.Builder
	if l.GetTime() != nil {
		b.WriteString(l.GetTime().AsTime().UTC().Format("15:04:05 "))
	}
	if l.GetLevel() != "" {
		fmt.Fprintf(&b, "%-5s ", strings.ToUpper(l.GetLevel()))
	}
	b.WriteString(l.GetMessage())
	return b.String()
}

// nopDisplay shows nothing: -o json prints only the final document.
type nopDisplay struct{}

func (nopDisplay) show(*osvcv1.Run, []*osvcv1.LogLine) {}
func (nopDisplay) close(bool)                          {}

// durationText reads a duration the way a watch shows it: "0.4s", "12s",
// "4m12s", "1h02m".
func durationText(d time.Duration) string {
	switch {
	case d < 0:
		return "-"
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Hour:
		return d.Round(time.Second).String()
	}
	d = d.Round(time.Minute)
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// tookText is how long something from start to end took, "" while either
// is unknown.
func tookText(start, end *timestamppb.Timestamp) string {
	if start == nil || end == nil {
		return ""
	}
	return durationText(end.AsTime().Sub(start.AsTime()))
}

// bytesText reads "12 MiB of 28 MiB", or "12 MiB" while the total is not
// known.
func bytesText(done, total int64) string {
	if total <= 0 {
		return sizeText(done)
	}
	return fmt.Sprintf("%s of %s", sizeText(done), sizeText(total))
}

// stepLine is one line about a step record: "step APPLY: DONE in 4.2s
// (3 applied)", with the bytes it moved.
func stepLine(s *osvcv1.StepRecord) string {
	line := fmt.Sprintf("step %s: %s", stepText(s.GetStep()), stepStateText(s.GetState()))
	if took := tookText(s.GetStartTime(), s.GetEndTime()); took != "" && s.GetState() != osvcv1.StepState_STEP_STATE_SKIPPED {
		line += " in " + took
	}
	if s.GetBytesTotal() > 0 && s.GetState() != osvcv1.StepState_STEP_STATE_RUNNING {
		line += ", " + bytesText(s.GetBytesDone(), s.GetBytesTotal())
	}
	if s.GetDetail() != "" {
		line += " (" + s.GetDetail() + ")"
	}
	return line
}

// updateLine is one line about an update's result: "KB5031354 (index 1):
// APPLIED in 41s", with its message.
func updateLine(u *osvcv1.UpdateResult) string {
	line := fmt.Sprintf("%s: %s", resultLabel(u), updateStateText(u.GetState()))
	switch {
	case u.GetState() == osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS:
		line += fmt.Sprintf(" %d%%", u.GetPercent())
	case updateEnded(u.GetState()):
		if took := tookText(u.GetStartTime(), u.GetEndTime()); took != "" {
			line += " in " + took
		}
		if u.GetMessage() != "" {
			line += ": " + u.GetMessage()
		}
	}
	return line
}

// plainDisplay prints one line per change, for pipes, files and CI logs where
// redrawn bars would be noise: a step's bytes and an update's percent at
// each quarter.
type plainDisplay struct {
	w     io.Writer
	state osvcv1.RunState
	agent string
	// steps is what was printed of each step record, by its place in the
	// run's steps (each pass of a step has its own).
	steps   map[int]plainStep
	results map[string]plainResult
}

type plainStep struct {
	step    osvcv1.Step
	state   osvcv1.StepState
	quarter int64
}

type plainResult struct {
	state   osvcv1.UpdateState
	quarter int32
}

func (d *plainDisplay) show(r *osvcv1.Run, lines []*osvcv1.LogLine) {
	if d.steps == nil {
		d.steps = map[int]plainStep{}
		d.results = map[string]plainResult{}
	}
	if r != nil && (r.GetState() != d.state || r.GetAgent() != d.agent) {
		d.state, d.agent = r.GetState(), r.GetAgent()
		line := fmt.Sprintf("%s: %s", r.GetName(), runStateText(r.GetState()))
		if r.GetAgent() != "" && !runEnded(r.GetState()) {
			line += fmt.Sprintf(" on %s (attempt %d)", r.GetAgent(), r.GetAttempt())
		}
		fmt.Fprintln(d.w, line)
	}
	for i, s := range r.GetSteps() {
		prev, seen := d.steps[i]
		var quarter int64
		if s.GetBytesTotal() > 0 {
			quarter = min(s.GetBytesDone(), s.GetBytesTotal()) * 4 / s.GetBytesTotal()
		}
		switch {
		case !seen || prev.step != s.GetStep() || prev.state != s.GetState():
			fmt.Fprintln(d.w, stepLine(s))
		case s.GetState() == osvcv1.StepState_STEP_STATE_RUNNING && quarter > prev.quarter:
			fmt.Fprintf(d.w, "step %s: %s\n", stepText(s.GetStep()), bytesText(s.GetBytesDone(), s.GetBytesTotal()))
		}
		d.steps[i] = plainStep{step: s.GetStep(), state: s.GetState(), quarter: quarter}
	}
	for _, u := range r.GetUpdateResults() {
		key := resultKey(u)
		prev, seen := d.results[key]
		quarter := u.GetPercent() / 25
		switch {
		case !seen || prev.state != u.GetState():
			fmt.Fprintln(d.w, updateLine(u))
		case u.GetState() == osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS && quarter > prev.quarter:
			fmt.Fprintf(d.w, "%s: %d%%\n", resultLabel(u), u.GetPercent())
		}
		d.results[key] = plainResult{state: u.GetState(), quarter: quarter}
	}
	for _, l := range lines {
		fmt.Fprintf(d.w, "  | %s\n", logLineText(l))
	}
}

func (d *plainDisplay) close(bool) {}

// barDisplay redraws a progress bar per update per index on a terminal under
// one for the whole run, and a byte bar for each step that moves an image
// (COPY, EXPORT, SWAP), the log lines scrolling above them.
type barDisplay struct {
	pw progress.Writer
	// run tracks the whole run. It stays active until close because go-pretty
	// draws nothing, log lines included, once no tracker is active.
	run      *progress.Tracker
	last     *osvcv1.Run
	trackers map[string]*progress.Tracker
	// steps are the byte bars, by the step record's place in the run.
	steps    map[int]*stepBar
	rendered chan struct{}
}

func newBarDisplay(w io.Writer) *barDisplay {
	pw := progress.NewWriter()
	pw.SetOutputWriter(w)
	pw.SetAutoStop(false)
	pw.SetUpdateFrequency(100 * time.Millisecond)
	pw.SetMessageLength(64)
	pw.SetTrackerLength(30)
	pw.SetSortBy(progress.SortByNone)
	pw.Style().Visibility.Value = false
	pw.Style().Visibility.ETA = false
	pw.Style().Visibility.Time = true
	if width := terminalWidth(w); width > 0 {
		// The message, the bar and the percent and time after it on one
		// line: a line wider than the terminal wraps and every redraw
		// leaves a copy behind.
		pw.SetMessageLength(max(20, min(64, width-30-24)))
		pw.SetTrackerLength(max(10, min(30, width-20-24)))
	}
	d := &barDisplay{
		pw:       pw,
		run:      &progress.Tracker{Message: "waiting for the run", Total: 100, AutoStopDisabled: true},
		trackers: map[string]*progress.Tracker{},
		steps:    map[int]*stepBar{},
		rendered: make(chan struct{}),
	}
	pw.AppendTracker(d.run)
	go func() {
		defer close(d.rendered)
		pw.Render()
	}()
	return d
}

// runMessage sums up the run for its tracker: "runs/r-1 IN_PROCESS · APPLY on agents/ps1-a".
func runMessage(r *osvcv1.Run) string {
	msg := fmt.Sprintf("%s %s", r.GetName(), runStateText(r.GetState()))
	if r.GetStep() != osvcv1.Step_STEP_UNSPECIFIED {
		msg += " · " + stepText(r.GetStep())
	}
	if r.GetAgent() != "" && !runEnded(r.GetState()) {
		msg += " on " + r.GetAgent()
	}
	return msg
}

func (d *barDisplay) show(r *osvcv1.Run, lines []*osvcv1.LogLine) {
	for _, l := range lines {
		d.pw.Log("%s", logLineText(l))
	}
	if r == nil {
		return
	}
	d.last = r
	d.run.UpdateMessage(runMessage(r))
	d.run.SetValue(int64(r.GetPercent()))
	for i, s := range r.GetSteps() {
		d.showStep(i, s)
	}
	for _, u := range r.GetUpdateResults() {
		t, ok := d.trackers[resultKey(u)]
		if !ok {
			t = &progress.Tracker{Message: resultLabel(u), Total: 100}
			d.trackers[resultKey(u)] = t
			d.pw.AppendTracker(t)
		}
		if t.IsDone() {
			continue
		}
		if !updateEnded(u.GetState()) {
			// 100% would end the tracker before the update has its result.
			t.SetValue(min(int64(u.GetPercent()), 99))
			continue
		}
		msg := resultLabel(u) + " " + updateStateText(u.GetState())
		if took := tookText(u.GetStartTime(), u.GetEndTime()); took != "" {
			msg += " in " + took
		}
		t.UpdateMessage(msg)
		if u.GetState() == osvcv1.UpdateState_UPDATE_STATE_FAILED {
			t.MarkAsErrored()
		} else {
			t.SetValue(100)
			t.MarkAsDone()
		}
	}
}

// stepBar is the byte bar of one step record.
type stepBar struct {
	step  osvcv1.Step
	total int64
	t     *progress.Tracker
}

// showStep keeps the byte bar of a step record that moves bytes.
func (d *barDisplay) showStep(i int, s *osvcv1.StepRecord) {
	b, ok := d.steps[i]
	if ok && b.step != s.GetStep() {
		ok = false // a new attempt's steps took the places of the last one's
	}
	if ok && b.t.IsDone() {
		return
	}
	if !ok {
		if s.GetBytesTotal() <= 0 {
			return
		}
		b = &stepBar{step: s.GetStep(), total: s.GetBytesTotal(),
			t: &progress.Tracker{Message: stepText(s.GetStep()), Total: s.GetBytesTotal(), Units: progress.UnitsBytes}}
		d.steps[i] = b
		d.pw.AppendTracker(b.t)
	}
	if s.GetBytesTotal() > 0 && s.GetBytesTotal() != b.total {
		b.total = s.GetBytesTotal()
		b.t.UpdateTotal(b.total)
	}
	// The sizes go in the message: the bars hide their values, which for
	// the updates' bars are percents.
	if s.GetState() == osvcv1.StepState_STEP_STATE_RUNNING {
		b.t.UpdateMessage(stepText(s.GetStep()) + " " + bytesText(s.GetBytesDone(), b.total))
		// The total would end the tracker before the step ends.
		b.t.SetValue(min(s.GetBytesDone(), max(b.total-1, 0)))
		return
	}
	msg := stepText(s.GetStep()) + " " + stepStateText(s.GetState())
	if took := tookText(s.GetStartTime(), s.GetEndTime()); took != "" {
		msg += " in " + took
	}
	b.t.UpdateMessage(msg + ", " + bytesText(s.GetBytesDone(), b.total))
	if s.GetState() == osvcv1.StepState_STEP_STATE_FAILED {
		b.t.MarkAsErrored()
		return
	}
	b.t.SetValue(b.total)
	b.t.MarkAsDone()
}

func (d *barDisplay) close(stopped bool) {
	switch {
	case d.last.GetState() == osvcv1.RunState_RUN_STATE_SUCCEEDED:
		d.run.SetValue(100)
		d.run.MarkAsDone()
	case stopped:
		// The run goes on: its bar stays where it was, not failed.
		d.run.UpdateMessage(d.last.GetName() + " goes on on the server")
	default:
		d.run.MarkAsErrored()
	}
	stopRender(d.pw, d.rendered)
}
