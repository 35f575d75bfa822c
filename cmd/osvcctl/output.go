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
	"github.com/jedib0t/go-pretty/v6/text"
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

// newTable starts a table written to w when rendered. On a terminal it fits
// the terminal's width (see fitTable); written to a pipe or a file it keeps
// every cell on one line, for scripts.
func newTable(w io.Writer, header ...any) table.Writer {
	return newTableWidth(w, terminalWidth(w), header...)
}

// newTableWidth is newTable fitting width columns; 0 for no limit.
func newTableWidth(w io.Writer, width int, header ...any) table.Writer {
	t := table.NewWriter()
	t.SetOutputMirror(w)
	t.SetStyle(table.StyleLight)
	t.AppendHeader(table.Row(header))
	if width <= 0 {
		return t
	}
	return &fitTable{Writer: t, width: width, header: cellTexts(header)}
}

// terminalWidth is the width of the terminal w is, 0 when w is not one.
func terminalWidth(w io.Writer) int {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0
	}
	width, _, err := term.GetSize(int(f.Fd()))
	if err != nil {
		return 0
	}
	return width
}

// fitTable is a table that wraps its widest columns (titles, paths,
// messages) when rendered, so that its rows fit width: a row wider than the
// terminal would wrap at its edge and break the table's lines.
type fitTable struct {
	table.Writer
	width  int
	header []string
	rows   [][]string
}

// minColumnWidth is the least a column is narrowed to.
const minColumnWidth = 8

func (t *fitTable) AppendRow(row table.Row, configs ...table.RowConfig) {
	t.rows = append(t.rows, cellTexts(row))
	t.Writer.AppendRow(row, configs...)
}

func (t *fitTable) AppendRows(rows []table.Row, configs ...table.RowConfig) {
	for _, r := range rows {
		t.AppendRow(r, configs...)
	}
}

func (t *fitTable) Render() string {
	if widths := fitColumns(t.header, t.rows, t.width); widths != nil {
		var configs []table.ColumnConfig
		for i, w := range widths {
			configs = append(configs, table.ColumnConfig{Number: i + 1, WidthMax: w, WidthMaxEnforcer: text.WrapSoft})
		}
		t.SetColumnConfigs(configs)
	}
	return t.Writer.Render()
}

// fitColumns returns the widths that make a table of these cells fit width
// (StyleLight: a border and a padding space either side of each column), or
// nil when it fits as it is. The widest column gives way first, down to
// minColumnWidth (or its own width, when narrower); a table that cannot fit
// even so is left to wrap at the terminal's edge.
func fitColumns(header []string, rows [][]string, width int) []int {
	var widths []int
	for _, r := range append([][]string{header}, rows...) {
		for i, cell := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			for line := range strings.Lines(cell) {
				widths[i] = max(widths[i], text.StringWidthWithoutEscSequences(strings.TrimRight(line, "\n")))
			}
		}
	}
	total := func() int {
		n := 1
		for _, w := range widths {
			n += w + 3
		}
		return n
	}
	if total() <= width {
		return nil
	}
	floor := make([]int, len(widths))
	for i, w := range widths {
		floor[i] = min(w, minColumnWidth)
		if i < len(header) {
			// A header keeps its words whole.
			for _, word := range strings.Fields(header[i]) {
				floor[i] = max(floor[i], min(w, text.StringWidthWithoutEscSequences(word)))
			}
		}
	}
	for over := total() - width; over > 0; {
		widest := -1
		for i, w := range widths {
			if w > floor[i] && (widest < 0 || w > widths[widest]) {
				widest = i
			}
		}
		if widest < 0 {
			break
		}
		// Down to the next widest column at once, or by what is over.
		next := floor[widest]
		for i, w := range widths {
			if i != widest && w < widths[widest] {
				next = max(next, w)
			}
		}
		cut := min(over, max(widths[widest]-next, 1))
		widths[widest] -= cut
		over -= cut
	}
	return widths
}

func cellTexts(row []any) []string {
	out := make([]string, len(row))
	for i, c := range row {
		out[i] = fmt.Sprint(c)
	}
	return out
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
