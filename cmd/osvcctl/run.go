package main

import (
	"fmt"

	"github.com/spf13/cobra"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

// runNotFoundHint follows a run's NotFound.
const runNotFoundHint = "'osvcctl run list' lists the runs"

func (c *cli) runCommand() *cobra.Command {
	cmd := groupCommand("run", "Follow and cancel servicing runs")
	cmd.AddCommand(c.runListCommand(), c.runGetCommand(), c.runWatchCommand(), c.runLogsCommand(), c.runCancelCommand())
	return cmd
}

func (c *cli) runListCommand() *cobra.Command {
	var imageArg string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List runs, oldest first",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			image := ""
			if imageArg != "" {
				var err error
				if image, err = resourceName(collImages, imageArg); err != nil {
					return usageErrorf("--image: %w", err)
				}
			}
			servicing, err := c.servicing()
			if err != nil {
				return err
			}
			all := &osvcv1.ListRunsResponse{}
			token := ""
			for {
				ctx, cancel := c.callContext(cmd.Context())
				resp, err := servicing.ListRuns(ctx, &osvcv1.ListRunsRequest{PageSize: listPageSize, PageToken: token, Image: image})
				cancel()
				if err != nil {
					return err
				}
				all.Runs = append(all.Runs, resp.GetRuns()...)
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, all)
			}
			t := newTable(c.stdout, "NAME", "KIND", "IMAGE", "STATE", "STEP", "PERCENT", "ATTEMPT", "AGENT", "CREATED")
			for _, r := range all.GetRuns() {
				t.AppendRow([]any{r.GetName(), runKindText(r.GetKind()), r.GetImage(), runStateLabel(r), stepText(r.GetStep()),
					fmt.Sprintf("%d%%", r.GetPercent()), r.GetAttempt(), orDash(r.GetAgent()), timeText(r.GetCreateTime())})
			}
			renderList(c.stdout, t, "no runs")
			return nil
		},
	}
	cmd.Flags().StringVar(&imageArg, "image", "", "list only the runs of this `IMAGE`")
	return cmd
}

func (c *cli) runGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get RUN",
		Short: "Show a run: state, steps and per-update results",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := resourceName(collRuns, args[0])
			if err != nil {
				return err
			}
			servicing, err := c.servicing()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := servicing.GetRun(ctx, &osvcv1.GetRunRequest{Name: name})
			if err != nil {
				return withHint(err, errdefs.ErrNotFound, runNotFoundHint)
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			c.printRun(resp.GetRun())
			return nil
		},
	}
}

func (c *cli) runWatchCommand() *cobra.Command {
	var opts watchOptions
	cmd := &cobra.Command{
		Use:   "watch RUN",
		Short: "Follow a run until it ends; exits 5 if it failed or was canceled, 130 when interrupted (the run goes on)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := resourceName(collRuns, args[0])
			if err != nil {
				return err
			}
			return withHint(c.watchRun(cmd.Context(), name, opts), errdefs.ErrNotFound, runNotFoundHint)
		},
	}
	addLogLevelFlag(cmd, &opts)
	return cmd
}

// addLogLevelFlag adds --log-level, which filters the log lines a watch shows.
func addLogLevelFlag(cmd *cobra.Command, opts *watchOptions) {
	cmd.Flags().StringVar(&opts.logLevel, "log-level", defaultLogLevel,
		"show the run's log lines at this `LEVEL` and above: trace, debug (adds the engine's command lines), info, warn or error")
}

func (c *cli) runCancelCommand() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "cancel RUN",
		Short: "Cancel a run; the image's current version is never modified",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := resourceName(collRuns, args[0])
			if err != nil {
				return err
			}
			servicing, err := c.servicing()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := servicing.CancelRun(ctx, &osvcv1.CancelRunRequest{Name: name, Reason: reason})
			if err != nil {
				return withHint(err, errdefs.ErrNotFound, runNotFoundHint)
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			r := resp.GetRun()
			fmt.Fprintf(c.stdout, "%s: %s", r.GetName(), runStateText(r.GetState()))
			if r.GetCancelRequested() && r.GetState() != osvcv1.RunState_RUN_STATE_CANCELED {
				fmt.Fprint(c.stdout, ", cancel requested")
			}
			fmt.Fprintln(c.stdout)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "`TEXT` saying why the run is canceled, kept with the run as its reason")
	return cmd
}

// printRun writes the detail view of one run.
func (c *cli) printRun(r *osvcv1.Run) {
	w := c.stdout
	fmt.Fprintf(w, "Name:     %s\n", r.GetName())
	fmt.Fprintf(w, "Kind:     %s\n", runKindText(r.GetKind()))
	fmt.Fprintf(w, "Image:    %s (version %d)\n", r.GetImage(), r.GetSourceVersion())
	fmt.Fprintf(w, "Schedule: %s\n", orDash(r.GetSchedule()))
	fmt.Fprintf(w, "State:    %s\n", runStateLabel(r))
	fmt.Fprintf(w, "Step:     %s (%d%%)\n", stepText(r.GetStep()), r.GetPercent())
	fmt.Fprintf(w, "Attempt:  %d\n", r.GetAttempt())
	fmt.Fprintf(w, "Agent:    %s\n", orDash(r.GetAgent()))
	fmt.Fprintf(w, "Options:  Continue on error: %s, Remove superseded updates: %s, Update distribution points: %s\n",
		yesNo(r.GetContinueOnError()), yesNo(r.GetRemoveSuperseded()), yesNo(r.GetUpdateDistributionPoints()))
	fmt.Fprintf(w, "Created:  %s\n", timeText(r.GetCreateTime()))
	// A run held by its schedule's start time, or waiting to be leased again
	// after its agent was lost, is PENDING until then: say why it waits.
	if r.GetNotBefore() != nil && r.GetState() == osvcv1.RunState_RUN_STATE_PENDING {
		fmt.Fprintf(w, "Start:    not before %s\n", timeText(r.GetNotBefore()))
	}
	if r.GetWaiting() != "" && r.GetState() == osvcv1.RunState_RUN_STATE_PENDING {
		fmt.Fprintf(w, "Waiting:  %s\n", r.GetWaiting())
	}
	if r.GetStartTime() != nil {
		fmt.Fprintf(w, "Started:  %s\n", timeText(r.GetStartTime()))
	}
	if r.GetLastProgressTime() != nil {
		fmt.Fprintf(w, "Progress: last reported %s\n", timeText(r.GetLastProgressTime()))
	}
	if r.GetEndTime() != nil {
		fmt.Fprintf(w, "Ended:    %s\n", timeText(r.GetEndTime()))
	}
	if r.GetError() != "" {
		// A canceled run keeps the reason given to 'run cancel' as its error.
		label := "Error: "
		if r.GetState() == osvcv1.RunState_RUN_STATE_CANCELED {
			label = "Reason:"
		}
		fmt.Fprintf(w, "%s   %s\n", label, r.GetError())
	}
	if len(r.GetSteps()) > 0 {
		fmt.Fprintln(w, "\nSteps:")
		// Each pass of a step has its row: APPLY before and after cleanup,
		// the steps of each index.
		t := newTable(w, "STEP", "STATE", "STARTED", "TOOK", "BYTES", "DETAIL")
		for _, s := range r.GetSteps() {
			bytes := "-"
			if s.GetBytesTotal() > 0 {
				bytes = bytesText(s.GetBytesDone(), s.GetBytesTotal())
			}
			t.AppendRow([]any{stepText(s.GetStep()), stepStateText(s.GetState()), timeText(s.GetStartTime()),
				orDash(tookText(s.GetStartTime(), s.GetEndTime())), bytes, orDash(s.GetDetail())})
		}
		t.Render()
	}
	fmt.Fprintln(w, "\nUpdates:")
	c.printRunResults(r)
	if len(r.GetArtifacts()) > 0 {
		fmt.Fprintln(w, "\nLog files ('osvcctl run logs RUN --file NAME' prints one):")
		t := newTable(w, "NAME", "SIZE", "SHA256")
		for _, a := range r.GetArtifacts() {
			size := sizeText(a.GetSizeBytes())
			if a.GetTruncatedBytes() > 0 {
				size += fmt.Sprintf(" (the first %s left out)", sizeText(a.GetTruncatedBytes()))
			}
			t.AppendRow([]any{a.GetName(), size, a.GetSha256()})
		}
		t.Render()
	}
}

// printRunResults writes the per update per index results of a run and, once
// it produced an image, the size before and after.
func (c *cli) printRunResults(r *osvcv1.Run) {
	w := c.stdout
	if r.GetKind() == osvcv1.RunKind_RUN_KIND_INSPECTION {
		c.printInspected(r)
		return
	}
	t := newTable(w, "UPDATE", "KB", "INDEX", "RESULT", "TOOK", "MESSAGE")
	if len(r.GetUpdateResults()) == 0 {
		for _, u := range r.GetUpdates() {
			t.AppendRow([]any{u, "-", "-", "-", "-", ""})
		}
	}
	// The server records the updates an ended run never reached as SKIPPED,
	// with why; the results are shown as recorded.
	for _, u := range r.GetUpdateResults() {
		result := updateStateText(u.GetState())
		if u.GetState() == osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS {
			result += fmt.Sprintf(" %d%%", u.GetPercent())
		}
		t.AppendRow([]any{u.GetUpdate(), kbText(u.GetKb()), u.GetIndex(), result, orDash(tookText(u.GetStartTime(), u.GetEndTime())), u.GetMessage()})
	}
	t.Render()
	// A run not yet leased does not know its source size yet.
	if r.GetSourceSizeBytes() > 0 || r.GetResultSizeBytes() > 0 {
		fmt.Fprintf(w, "Image size: %s\n", sizeChangeText(r.GetSourceSizeBytes(), r.GetResultSizeBytes()))
	}
}

// printInspected writes what an inspection found: the indexes of the
// version and the packages installed in each.
func (c *cli) printInspected(r *osvcv1.Run) {
	w := c.stdout
	if r.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		fmt.Fprintf(w, "Version %d was not inspected: %s\n", r.GetSourceVersion(), orDash(r.GetError()))
		return
	}
	fmt.Fprintf(w, "Version %d verified (%s):\n", r.GetResultVersion(), sizeText(r.GetResultSizeBytes()))
	t := newTable(w, "INDEX", "NAME", "EDITION", "ARCH", "VERSION", "INSTALLED PACKAGES")
	for _, ix := range r.GetResultIndexes() {
		t.AppendRow([]any{ix.GetIndex(), ix.GetName(), orDash(ix.GetEdition()), archText(ix.GetArchitecture()),
			orDash(ix.GetVersion()), len(ix.GetInstalledUpdates())})
	}
	renderList(w, t, "none")
}

// sizeChangeText reads "4.0 GiB → 3.1 GiB (-22.5%)"; a run without a
// result, or with one of the same size, keeps the size it started from.
func sizeChangeText(before, after int64) string {
	if after <= 0 || after == before {
		return fmt.Sprintf("%s (unchanged)", sizeText(before))
	}
	s := fmt.Sprintf("%s → %s", sizeText(before), sizeText(after))
	if before > 0 {
		s += fmt.Sprintf(" (%+.1f%%)", float64(after-before)*100/float64(before))
	}
	return s
}

// runKindText names what a run does: servicing or inspection.
func runKindText(k osvcv1.RunKind) string {
	if k == osvcv1.RunKind_RUN_KIND_INSPECTION {
		return "inspection"
	}
	return "servicing"
}
