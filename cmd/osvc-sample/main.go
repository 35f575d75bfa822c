// Command osvc-sample creates a sample Windows image and update packages for
// trying osvc without real Windows media:
//
//	osvc-sample -out ./sample
//
// writes sample/install.wim and sample/updates/, and prints each update with
// the result servicing the image is expected to give.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/osvc/osvc/integration/sampledata"
)

func main() { os.Exit(realMain()) }

func realMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "osvc-sample:", err)
		return 1
	}
	return 0
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("osvc-sample", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "folder to create the sample in (required)")
	payload := fs.Int64("payload-bytes", sampledata.DefaultPayloadBytes, "bytes of file data in the image")
	build := fs.Uint("build", uint(sampledata.DefaultBuild), "OS build of the image (22631 is Windows 11 23H2)")
	edition := fs.String("edition", sampledata.DefaultEdition, "edition ID of the image")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: osvc-sample -out DIR [flags]")
		fmt.Fprintln(fs.Output(), "Creates a sample Windows image (install.wim) and update packages (updates/) in DIR.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: use -out DIR", fs.Args())
	}
	if *out == "" {
		fs.Usage()
		return errors.New("-out is required: name the folder to create the sample in")
	}
	if *build == 0 || *build > 1<<32-1 {
		return fmt.Errorf("-build %d is not an OS build number", *build)
	}
	s, err := sampledata.Create(ctx, sampledata.Options{
		Dir:          *out,
		PayloadBytes: *payload,
		Build:        uint32(*build),
		Edition:      *edition,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "image:   %s\nupdates: %s\n\n", s.WIM, s.UpdatesDir)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tKB\tCLASSIFICATION\tEXPECTED RESULT")
	for _, u := range s.Updates {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", filepath.Base(u.File), u.KB,
			enumWord(u.Classification.String(), "CLASSIFICATION_"), enumWord(u.Want.String(), "UPDATE_STATE_"))
	}
	return tw.Flush()
}

// enumWord turns CLASSIFICATION_SERVICING_STACK into SERVICING_STACK.
func enumWord(s, prefix string) string { return strings.TrimPrefix(s, prefix) }
