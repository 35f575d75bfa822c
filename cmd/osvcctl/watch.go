package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jedib0t/go-pretty/v6/progress"

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
	// close ends the live display before the final table is printed.
	close()
}

// watchRun follows a run until it ends, then prints its results. It returns a
// *runEndedError when the run failed or was canceled.
func (c *cli) watchRun(ctx context.Context, name string) error {
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
		lines = append(lines, fresh...)
		display.show(run, fresh)
	})
	display.close()
	if err != nil {
		return err
	}

	if c.output == outputJSON {
		if err := printJSON(c.stdout, &osvcv1.WatchRunResponse{Run: last, LogLines: lines}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(c.stdout, "\n%s %s\n", last.GetName(), runStateText(last.GetState()))
		c.printRunResults(last)
	}
	if last.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		return &runEndedError{run: last.GetName(), state: last.GetState(), msg: last.GetError()}
	}
	return nil
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
			return nil, fmt.Errorf("stopped watching %s; the run goes on ('osvcctl run cancel %s' stops it)", name, name)
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
func (nopDisplay) close()                              {}

// plainDisplay prints one line per change, for pipes, files and CI logs where
// redrawn bars would be noise.
type plainDisplay struct {
	w       io.Writer
	state   osvcv1.RunState
	agent   string
	steps   map[osvcv1.Step]osvcv1.StepState
	results map[string]plainResult
}

type plainResult struct {
	state   osvcv1.UpdateState
	quarter int32
}

func (d *plainDisplay) show(r *osvcv1.Run, lines []*osvcv1.LogLine) {
	if d.steps == nil {
		d.steps = map[osvcv1.Step]osvcv1.StepState{}
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
	for _, s := range r.GetSteps() {
		if d.steps[s.GetStep()] == s.GetState() {
			continue
		}
		d.steps[s.GetStep()] = s.GetState()
		line := fmt.Sprintf("step %s: %s", stepText(s.GetStep()), stepStateText(s.GetState()))
		if s.GetDetail() != "" {
			line += " (" + s.GetDetail() + ")"
		}
		fmt.Fprintln(d.w, line)
	}
	for _, u := range r.GetUpdateResults() {
		key := resultKey(u)
		prev, seen := d.results[key]
		quarter := u.GetPercent() / 25
		switch {
		case !seen || prev.state != u.GetState():
			line := fmt.Sprintf("%s: %s", resultLabel(u), updateStateText(u.GetState()))
			if u.GetState() == osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS {
				line += fmt.Sprintf(" %d%%", u.GetPercent())
			}
			if updateEnded(u.GetState()) && u.GetMessage() != "" {
				line += ": " + u.GetMessage()
			}
			fmt.Fprintln(d.w, line)
		case u.GetState() == osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS && quarter > prev.quarter:
			fmt.Fprintf(d.w, "%s: %d%%\n", resultLabel(u), u.GetPercent())
		}
		d.results[key] = plainResult{state: u.GetState(), quarter: quarter}
	}
	for _, l := range lines {
		fmt.Fprintf(d.w, "  | %s\n", logLineText(l))
	}
}

func (d *plainDisplay) close() {}

// barDisplay redraws a progress bar per update per index on a terminal under
// one for the whole run, the log lines scrolling above them.
type barDisplay struct {
	pw progress.Writer
	// run tracks the whole run. It stays active until close because go-pretty
	// draws nothing, log lines included, once no tracker is active.
	run      *progress.Tracker
	last     *osvcv1.Run
	trackers map[string]*progress.Tracker
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
	d := &barDisplay{
		pw:       pw,
		run:      &progress.Tracker{Message: "waiting for the run", Total: 100, AutoStopDisabled: true},
		trackers: map[string]*progress.Tracker{},
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
		t.UpdateMessage(resultLabel(u) + " " + updateStateText(u.GetState()))
		if u.GetState() == osvcv1.UpdateState_UPDATE_STATE_FAILED {
			t.MarkAsErrored()
		} else {
			t.SetValue(100)
			t.MarkAsDone()
		}
	}
}

func (d *barDisplay) close() {
	if d.last.GetState() == osvcv1.RunState_RUN_STATE_SUCCEEDED {
		d.run.SetValue(100)
		d.run.MarkAsDone()
	} else {
		d.run.MarkAsErrored()
	}
	stopRender(d.pw, d.rendered)
}
