package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/jedib0t/go-pretty/v6/table"
	"golang.org/x/term"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// Output formats of read commands.
const (
	outputTable = "table"
	outputJSON  = "json"
)

// printJSON writes m as one indented JSON document. protojson deliberately
// varies its whitespace between builds; compacting and indenting again keeps
// the output byte-stable for scripts that diff it.
func printJSON(w io.Writer, m proto.Message) error {
	raw, err := protojson.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s as JSON: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	var compact, out bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return fmt.Errorf("encode %s as JSON: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
		return fmt.Errorf("encode %s as JSON: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	out.WriteByte('\n')
	_, err = w.Write(out.Bytes())
	return err
}

// newTable starts a table written to w when rendered.
func newTable(w io.Writer, header ...any) table.Writer {
	t := table.NewWriter()
	t.SetOutputMirror(w)
	t.SetStyle(table.StyleLight)
	t.AppendHeader(table.Row(header))
	return t
}

// renderList renders t, or says none when it has no rows: an empty boxed
// table reads like a rendering bug.
func renderList(w io.Writer, t table.Writer, none string) {
	if t.Length() == 0 {
		fmt.Fprintln(w, none)
		return
	}
	t.Render()
}

// isTerminal tells whether w is an interactive terminal, where progress bars
// may redraw; anything else (a pipe, a file, a test buffer) gets plain lines.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// enumText strips an enum value's type prefix: RUN_STATE_SUCCEEDED → SUCCEEDED.
// An unset enum reads as "-".
func enumText(name, prefix string) string {
	if strings.HasSuffix(name, "_UNSPECIFIED") {
		return "-"
	}
	return strings.TrimPrefix(name, prefix)
}

func runStateText(s osvcv1.RunState) string { return enumText(s.String(), "RUN_STATE_") }

// runStateLabel is a run's state as listed, marked when the server flagged the
// run stalled: in process, but silent past the server's --stall-after.
func runStateLabel(r *osvcv1.Run) string {
	if r.GetStalled() {
		return runStateText(r.GetState()) + " (stalled)"
	}
	return runStateText(r.GetState())
}

func updateStateText(s osvcv1.UpdateState) string { return enumText(s.String(), "UPDATE_STATE_") }

func stepText(s osvcv1.Step) string { return enumText(s.String(), "STEP_") }

func stepStateText(s osvcv1.StepState) string { return enumText(s.String(), "STEP_STATE_") }

func servicingStatusText(s osvcv1.ServicingStatus) string {
	return enumText(s.String(), "SERVICING_STATUS_")
}

func kindText(k osvcv1.ImageKind) string {
	switch k {
	case osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE:
		return kindOSImage
	case osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE:
		return kindOSUpgradePackage
	}
	return "-"
}

func archText(a osvcv1.Architecture) string {
	switch a {
	case osvcv1.Architecture_ARCHITECTURE_X86:
		return "x86"
	case osvcv1.Architecture_ARCHITECTURE_X64:
		return "x64"
	case osvcv1.Architecture_ARCHITECTURE_ARM64:
		return "arm64"
	case osvcv1.Architecture_ARCHITECTURE_NEUTRAL:
		return "neutral"
	}
	return "-"
}

func classificationText(c osvcv1.Classification) string {
	switch c {
	case osvcv1.Classification_CLASSIFICATION_SERVICING_STACK:
		return "Servicing Stack Update"
	case osvcv1.Classification_CLASSIFICATION_SECURITY_UPDATE:
		return "Security Update"
	case osvcv1.Classification_CLASSIFICATION_UPDATE:
		return "Update"
	case osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE:
		return "Cumulative Update"
	case osvcv1.Classification_CLASSIFICATION_DOTNET:
		return ".NET"
	}
	return "-"
}

// sizeText renders a byte count the way an administrator reads it, in the
// binary units the agent uses in its step details ("3.8 MiB", "73 GiB").
func sizeText(n int64) string {
	if n < 0 {
		return "-"
	}
	return humanize.IBytes(uint64(n))
}

func timeText(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format("2006-01-02 15:04:05Z")
}

// shortSHA keeps enough of a sha256 to tell versions apart in a table.
func shortSHA(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return orDash(s)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
