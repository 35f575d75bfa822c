package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/runlogs"
)

func (c *cli) runLogsCommand() *cobra.Command {
	var (
		file   string
		follow bool
	)
	cmd := &cobra.Command{
		Use:   "logs RUN",
		Short: "Print a run's log lines, or one of its log files",
		Long: `Print the log lines the run's agent streamed, as the server holds them now.
With -f, follow them until the run ends (exits 5 if it ended FAILED or
CANCELED, as 'run watch' does).

With --file, print one of the log files the agent uploads when the run
ends, succeeded, failed or canceled: ` + runlogs.ServicingLog + ` (the agent's log of
the run) or ` + runlogs.EngineLog + ` (the engine's: DISM's log on Windows, wimlib's
commands and output on Linux). With -f, wait for the run to end first.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := resourceName(collRuns, args[0])
			if err != nil {
				return err
			}
			if file != "" {
				if err := runlogs.CheckName(file); err != nil {
					return usageErrorf("--file: %w", err)
				}
				if c.output == outputJSON {
					return usageErrorf("--file prints the file as it is: leave out -o json")
				}
				return c.printLogFile(cmd.Context(), name, file, follow)
			}
			return withHint(c.printLogLines(cmd.Context(), name, follow), errdefs.ErrNotFound, runNotFoundHint)
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "print the log `FILE` the agent uploaded: "+strings.Join(runlogs.Names, " or "))
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the run until it ends")
	return cmd
}

// printLogLines prints the run's stored log lines; with follow, the lines
// that come after them too, until the run ends.
func (c *cli) printLogLines(ctx context.Context, name string, follow bool) error {
	var lines []*osvcv1.LogLine
	add := func(fresh []*osvcv1.LogLine) {
		lines = append(lines, fresh...)
		if c.output == outputJSON {
			return
		}
		for _, l := range fresh {
			fmt.Fprintln(c.stdout, logLineText(l))
		}
	}
	var (
		last *osvcv1.Run
		err  error
	)
	if follow {
		last, err = c.followRun(ctx, name, 0, "osvcctl run logs -f "+name, func(_ *osvcv1.Run, fresh []*osvcv1.LogLine) { add(fresh) })
	} else {
		last, err = c.snapshotRun(ctx, name, add)
	}
	if err != nil {
		return err
	}
	if c.output == outputJSON {
		if err := printJSON(c.stdout, &osvcv1.WatchRunResponse{Run: last, LogLines: lines}); err != nil {
			return err
		}
	} else if len(lines) == 0 {
		fmt.Fprintln(c.stderr, noLinesText(last))
	}
	if follow && last.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		return &runEndedError{run: last.GetName(), state: last.GetState(), msg: last.GetError()}
	}
	return nil
}

// snapshotRun reads the run as it is now with its stored log lines, which
// come in as many messages as keep each small.
func (c *cli) snapshotRun(ctx context.Context, name string, lines func([]*osvcv1.LogLine)) (*osvcv1.Run, error) {
	servicing, err := c.servicing()
	if err != nil {
		return nil, err
	}
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	stream, err := servicing.WatchRun(ctx, &osvcv1.WatchRunRequest{Name: name, SnapshotOnly: true})
	if err != nil {
		return nil, err
	}
	var last *osvcv1.Run
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if last == nil {
				return nil, fmt.Errorf("the server sent nothing of %s", name)
			}
			return last, nil
		}
		if err != nil {
			return nil, err
		}
		last = resp.GetRun()
		lines(resp.GetLogLines())
	}
}

// noLinesText says why a run shows no log lines.
func noLinesText(r *osvcv1.Run) string {
	switch {
	case r.GetLogLineCount() > 0:
		// Stored lines are removed some time after the run ended; its files stay.
		return fmt.Sprintf("%s logged %d lines, which the server no longer holds; its log files: 'osvcctl run logs %s --file %s'",
			r.GetName(), r.GetLogLineCount(), r.GetName(), runlogs.ServicingLog)
	case runEnded(r.GetState()):
		return fmt.Sprintf("%s ended %s without a log line: no agent worked on it", r.GetName(), runStateText(r.GetState()))
	default:
		return fmt.Sprintf("%s is %s and has no log lines yet ('osvcctl run logs %s -f' follows them)", r.GetName(), runStateText(r.GetState()), r.GetName())
	}
}

// printLogFile prints the run's log file name as the agent uploaded it.
// A run in progress has none yet: with follow it waits for the run to end.
func (c *cli) printLogFile(ctx context.Context, name, file string, follow bool) error {
	servicing, err := c.servicing()
	if err != nil {
		return err
	}
	cctx, cancel := c.callContext(ctx)
	resp, err := servicing.GetRun(cctx, &osvcv1.GetRunRequest{Name: name})
	cancel()
	if err != nil {
		return withHint(err, errdefs.ErrNotFound, runNotFoundHint)
	}
	run := resp.GetRun()
	if !runEnded(run.GetState()) {
		if !follow {
			return errdefs.Newf(errdefs.ErrNotFound, "%s is %s: its agent uploads %s when the run ends ('osvcctl run logs %s' prints the lines it streamed so far; add -f to wait for the file)",
				name, runStateText(run.GetState()), file, name)
		}
		fmt.Fprintf(c.stderr, "%s is %s: waiting for it to end, when its agent uploads %s\n", name, runStateText(run.GetState()), file)
		if run, err = c.followRun(ctx, name, 0, "osvcctl run logs -f "+name+" --file "+file, func(*osvcv1.Run, []*osvcv1.LogLine) {}); err != nil {
			return err
		}
	}
	i := slices.IndexFunc(run.GetArtifacts(), func(a *osvcv1.RunArtifact) bool { return a.GetName() == file })
	if i < 0 {
		return noLogFileError(run, file)
	}
	a := run.GetArtifacts()[i]
	if err := c.readContent(ctx, a.GetSha256(), a.GetSizeBytes(), c.stdout); err != nil {
		return fmt.Errorf("%s of %s: %w", file, name, err)
	}
	if follow && run.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		return &runEndedError{run: run.GetName(), state: run.GetState(), msg: run.GetError()}
	}
	return nil
}

// noLogFileError says why an ended run has no log file named file.
func noLogFileError(r *osvcv1.Run, file string) error {
	name := r.GetName()
	if len(r.GetArtifacts()) == 0 && r.GetLogLineCount() == 0 {
		return errdefs.Newf(errdefs.ErrNotFound, "%s ended %s before an agent worked on it: it has no log files", name, runStateText(r.GetState()))
	}
	has := "no log file"
	if len(r.GetArtifacts()) > 0 {
		var names []string
		for _, a := range r.GetArtifacts() {
			names = append(names, a.GetName())
		}
		has = "only " + strings.Join(names, " and ")
	}
	return errdefs.Newf(errdefs.ErrNotFound, "%s ended %s with %s: its agent uploads %s with the run's result when it has written it, and the upload may "+
		"have failed; the agent keeps its files in <drive>/OfflineImageServicing/%s for its --work-retention, and 'osvcctl run logs %s' prints the lines the run streamed",
		name, runStateText(r.GetState()), has, file, strings.TrimPrefix(name, "runs/"), name)
}

// readContent writes the blob sha to w, checking it has size bytes that
// hash to sha: what was printed is the file the agent uploaded.
func (c *cli) readContent(ctx context.Context, sha string, size int64, w io.Writer) error {
	contents, err := c.contents()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := contents.Read(ctx, &osvcv1.ReadRequest{Sha256: sha})
	if err != nil {
		return err
	}
	h := sha256.New()
	var n int64
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read content %s: %w", sha, err)
		}
		h.Write(resp.GetData())
		n += int64(len(resp.GetData()))
		if _, err := w.Write(resp.GetData()); err != nil {
			return err
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != size || got != sha {
		return fmt.Errorf("read content %s: the server sent %d bytes hashing to %s, not the %d the run records; run the command again", sha, n, got, size)
	}
	return nil
}
