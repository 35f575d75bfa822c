package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/catalog"
)

// runToResult runs osvc-bench with args and parses its last line, RESULT {json}.
func runToResult(t *testing.T, args ...string) Result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run(%q): %v\nstderr:\n%s", args, err, stderr.String())
	}
	lines := strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n")
	last := lines[len(lines)-1]
	payload, ok := strings.CutPrefix(last, "RESULT ")
	if !ok {
		t.Fatalf("last line = %q, want RESULT {json}\nstdout:\n%s", last, stdout.String())
	}
	var res Result
	if err := json.Unmarshal([]byte(payload), &res); err != nil {
		t.Fatalf("RESULT line does not parse: %v: %s", err, payload)
	}
	return res
}

func TestStartupBenchEndsWithAParsableResultLine(t *testing.T) {
	res := runToResult(t, "-run", "startup", "-n", "1", "-fast")
	if res.Bench != "startup" {
		t.Errorf("bench = %q, want startup", res.Bench)
	}
	if !(res.Ratio > 0) {
		t.Errorf("ratio = %v, want > 0", res.Ratio)
	}
	for _, f := range []Figure{res.Osvc, res.Floor} {
		if !(f.Value > 0) || f.Unit == "" || len(f.Samples) != 1 {
			t.Errorf("figure %+v: want a positive value with its unit and 1 sample", f)
		}
	}
}

func TestObjstoreBenchComparesTheLibraryWithTheBareS3Client(t *testing.T) {
	t.Parallel()
	res := runToResult(t, "-run", "objstore", "-n", "8", "-fast")
	if res.Bench != "objstore" || !(res.Ratio > 0) || res.Osvc.Unit != "MiB/s" || len(res.Osvc.Samples) != 3 {
		t.Errorf("result %+v: want a positive ratio of MiB/s over 3 rounds", res)
	}
	if len(res.Extra) != 3 {
		t.Fatalf("extras %+v: want the write, the read and the named write", res.Extra)
	}
	for _, f := range res.Extra {
		if !(f.Value > 0) || !(f.Ratio > 0) {
			t.Errorf("extra %+v: want a positive value and ratio to its own floor", f)
		}
	}
}

func TestCatalogBenchReportsPagesOfBothListsWithTheirFloors(t *testing.T) {
	t.Parallel()
	res := runToResult(t, "-run", "catalog", "-n", "300", "-fast")
	if res.Bench != "catalog" || res.N != 300 {
		t.Errorf("bench, n = %q, %d; want catalog, 300", res.Bench, res.N)
	}
	if !(res.Ratio > 0) || len(res.Extra) != 1 || !(res.Extra[0].Ratio > 0) {
		t.Fatalf("ratio %v, extra %+v: want a positive ratio for each list", res.Ratio, res.Extra)
	}
	// Every image has at least one page of each list.
	for _, f := range []Figure{res.Osvc, res.Floor, res.Extra[0]} {
		if len(f.Samples) < 50 || !(f.P50Ms > 0) || f.P99Ms < f.P50Ms {
			t.Errorf("figure %q: %d samples, p50 %v ms, p99 %v ms; want a page per image at least", f.Name, len(f.Samples), f.P50Ms, f.P99Ms)
		}
	}
}

func TestImportMemoryBenchMeasuresARealServerProcess(t *testing.T) {
	t.Parallel()
	res := runToResult(t, "-run", "import-memory", "-n", "2", "-xml-bytes", "65536")
	if res.Bench != "import-memory" || res.N != 2 {
		t.Errorf("bench, n = %q, %d; want import-memory, 2", res.Bench, res.N)
	}
	if !(res.Ratio > 0) {
		t.Errorf("ratio = %v, want > 0", res.Ratio)
	}
	for _, f := range []Figure{res.Osvc, res.Floor} {
		if !(f.Value > 0) || f.Unit != "MB" || len(f.Samples) != importMemoryRounds {
			t.Errorf("figure %+v: want a positive value in MB with %d samples", f, importMemoryRounds)
		}
	}
}

func TestPipelineBenchServicesATinyImageOnBothSidesStepByStep(t *testing.T) {
	t.Parallel()
	res := runToResult(t, "-run", "pipeline", "-n", "1", "-fast")
	if res.Bench != "pipeline" || res.N != 1 || !(res.Ratio > 0) || res.ImageBytes < 1<<20 {
		t.Errorf("bench %q, n %d, ratio %v, image %d bytes; want pipeline, 1, a positive ratio, an image of 1 MiB of data at least",
			res.Bench, res.N, res.Ratio, res.ImageBytes)
	}
	for _, f := range []Figure{res.Osvc, res.Floor} {
		if !(f.Value > 0) || f.Unit != "s" || len(f.Samples) != pipelineRounds {
			t.Errorf("figure %+v: want a positive value in s with %d samples", f, pipelineRounds)
		}
	}
	steps := map[string]StepFigure{}
	for _, s := range res.Steps {
		steps[s.Step] = s
	}
	// The hand sequence has no drive, staging, upload nor report.
	for _, name := range []string{"DRIVE", "STAGE", "COPY", "VERIFY", "MOUNT", "APPLY", "CLEANUP", "COMMIT", "EXPORT", "VERIFY_RESULT", "SWAP", "REPORT"} {
		s, ok := steps[name]
		if !ok || s.OsvcS == nil {
			t.Errorf("step %s: no osvc figure in %+v", name, res.Steps)
		}
		byHand := name != "DRIVE" && name != "STAGE" && name != "SWAP" && name != "REPORT"
		if (s.FloorS != nil) != byHand {
			t.Errorf("step %s: by-hand figure %v, want one: %v", name, s.FloorS, byHand)
		}
	}
}

func TestShrinkBenchComparesTheDemoImageBeforeAndAfterServicing(t *testing.T) {
	t.Parallel()
	res := runToResult(t, "-run", "shrink", "-fast")
	if res.Bench != "shrink" || res.N != defaultShrinkMiB || len(res.Extra) != 1 {
		t.Fatalf("bench %q, n %d, %d extra figures; want shrink, %d, 1", res.Bench, res.N, len(res.Extra), defaultShrinkMiB)
	}
	shrunk, before, kept := res.Osvc.Value, res.Floor.Value, res.Extra[0].Value
	if !(shrunk > 0) || shrunk >= before || shrunk >= kept {
		t.Errorf("serviced with remove superseded %v MiB, before %v MiB, without remove superseded %v MiB: want the first smallest", shrunk, before, kept)
	}
	if res.ImageBytes <= 0 || res.Floor.Unit != "MiB" {
		t.Errorf("image %d bytes, floor in %q; want the image's size in MiB", res.ImageBytes, res.Floor.Unit)
	}
}

func TestDistributeBenchFetchesTheServicedVersionAsTheChunksTheFirstLacks(t *testing.T) {
	t.Parallel()
	res := runToResult(t, "-run", "distribute", "-n", "48", "-update-file-mib", "1", "-fast")
	if res.Bench != "distribute" || !(res.Ratio > 0) || len(res.Osvc.Samples) != 3 || len(res.Extra) < 2 {
		t.Fatalf("bench %q, ratio %v, %d samples, %d extra figures", res.Bench, res.Ratio, len(res.Osvc.Samples), len(res.Extra))
	}
	// Servicing leaves most of the image alone: some of it is never sent.
	if sent := res.Extra[0]; !(sent.Value > 0 && sent.Value < 1) {
		t.Errorf("%s = %v, want part of version 2", sent.Name, sent.Value)
	}
}

func TestRunStepsCountsEachStepEveryTimeItRan(t *testing.T) {
	t.Parallel()
	start := time.Date(2025, 10, 14, 12, 0, 0, 0, time.UTC)
	at := func(s float64) *timestamppb.Timestamp {
		return timestamppb.New(start.Add(time.Duration(s * float64(time.Second))))
	}
	rec := func(step osvcv1.Step, from, to float64) *osvcv1.StepRecord {
		return &osvcv1.StepRecord{Step: step, State: osvcv1.StepState_STEP_STATE_DONE, StartTime: at(from), EndTime: at(to)}
	}
	s := &serviced{start: start, elapsed: 20 * time.Second, steps: []*osvcv1.StepRecord{
		rec(osvcv1.Step_STEP_DRIVE, 1, 2),
		rec(osvcv1.Step_STEP_APPLY, 3, 7),
		{Step: osvcv1.Step_STEP_CLEANUP, State: osvcv1.StepState_STEP_STATE_SKIPPED, StartTime: at(7), EndTime: at(7)},
		rec(osvcv1.Step_STEP_APPLY, 8, 10),
		rec(osvcv1.Step_STEP_REPORT, 10, 16),
	}}
	got := runSteps(s)
	want := stepTimes{
		stepQueue:               time.Second,
		osvcv1.Step_STEP_DRIVE:  time.Second,
		osvcv1.Step_STEP_APPLY:  6 * time.Second,
		osvcv1.Step_STEP_REPORT: 6 * time.Second,
		stepGaps:                2 * time.Second,
		stepFinish:              4 * time.Second,
	}
	if !maps.Equal(got, want) {
		t.Errorf("runSteps = %v, want %v", got, want)
	}
}

func TestHostileWIMsDeclareExactlyTheirXMLSize(t *testing.T) {
	t.Parallel()
	const xmlBytes = 4096
	paths, err := writeHostileWIMs(t.TempDir(), xmlBytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != len(hostileShapes) {
		t.Fatalf("%d WIMs, want one per shape (%d)", len(paths), len(hostileShapes))
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := len(data) - wimHeaderSize; got != xmlBytes {
			t.Errorf("%s: %d bytes of XML info, want %d", p, got, xmlBytes)
		}
		if got := binary.LittleEndian.Uint64(data[88:]); got != xmlBytes {
			t.Errorf("%s: the header declares %d bytes of XML info, want %d", p, got, xmlBytes)
		}
		if !bytes.HasPrefix(data, []byte("MSWIM\x00\x00\x00")) || !bytes.HasPrefix(data[wimHeaderSize:], []byte{0xFF, 0xFE}) {
			t.Errorf("%s: want a WIM header and UTF-16LE XML info with a byte-order mark", p)
		}
	}
}

func TestThroughputBenchesEndWithAParsableResultLine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		bench string
		// extra is how many variants the benchmark reports besides its main
		// figure: the plaintext run's figures, and report's pipelined one.
		extra int
	}{
		{"lease", 2},
		{"report", 3},
	}
	for _, tt := range tests {
		t.Run(tt.bench+" reports a positive ratio with both raw figures and their latencies", func(t *testing.T) {
			t.Parallel()
			res := runToResult(t, "-run", tt.bench, "-n", "7", "-c", "2", "-fast")
			if res.Bench != tt.bench || res.N != 7 || res.Workers != 2 {
				t.Errorf("bench, n, workers = %q, %d, %d; want %q, 7, 2", res.Bench, res.N, res.Workers, tt.bench)
			}
			if !(res.Ratio > 0) {
				t.Errorf("ratio = %v, want > 0", res.Ratio)
			}
			if len(res.Extra) != tt.extra {
				t.Errorf("%d extra figures, want %d: %+v", len(res.Extra), tt.extra, res.Extra)
			}
			for _, f := range append([]Figure{res.Osvc, res.Floor}, res.Extra...) {
				if !(f.Value > 0) || f.Unit == "" || len(f.Samples) != throughputRounds {
					t.Errorf("figure %+v: want a positive value with its unit and %d samples", f, throughputRounds)
				}
				if !(f.P50Ms > 0) || f.P99Ms < f.P50Ms {
					t.Errorf("figure %q: p50 %v ms, p99 %v ms; want 0 < p50 <= p99", f.Name, f.P50Ms, f.P99Ms)
				}
			}
		})
	}
}

func TestTheLogsBenchStoresEveryLineAndCountsItsWrites(t *testing.T) {
	t.Parallel()
	// Three runs of 3,000 lines.
	res := runToResult(t, "-run", "logs", "-n", "9000", "-fast")
	if res.Bench != "logs" || res.N != 9000 || !(res.Ratio > 0) {
		t.Errorf("bench, n, ratio = %q, %d, %v; want logs, 9000 and a positive ratio", res.Bench, res.N, res.Ratio)
	}
	for _, f := range []Figure{res.Osvc, res.Floor} {
		if !(f.Value > 0) || f.Unit != "lines/s" || len(f.Samples) != throughputRounds {
			t.Errorf("figure %+v: want lines/s over %d rounds", f, throughputRounds)
		}
	}
	if len(res.Extra) != 2 {
		t.Fatalf("%d extra figures, want the writes per 1,000 lines of osvc and of the floor: %+v", len(res.Extra), res.Extra)
	}
	// osvc's revisions are its log transactions, which the floor replays
	// one for one, and whatever the run and the agent wrote besides: a
	// write or two in a round.
	if osvc, floor := res.Extra[0], res.Extra[1]; !(floor.Value > 0) || osvc.Value < floor.Value || osvc.Value > floor.Value+2*1000.0/3000 || !(osvc.Ratio >= 1) {
		t.Errorf("writes per 1,000 lines: osvc %v (ratio %v), floor %v; want osvc from the floor's to two writes per round more",
			osvc.Value, osvc.Ratio, floor.Value)
	}
}

func TestHelpPrintsTheUsageAndIsNoError(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-h"}, &stdout, &stderr)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run(-h) = %v, want flag.ErrHelp, which main turns into exit 0", err)
	}
	for _, want := range []string{"Usage: osvc-bench -run agents|catalog|distribute|import-memory|lease|logs|objstore|pipeline|report|shrink|startup [flags]", "-run benchmark", "-fast"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, stderr.String())
		}
	}
}

func TestRunRefusesBadCommandLines(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"an unknown benchmark is named with the known ones", []string{"-run", "nope"}, `unknown benchmark "nope"; known: agents, catalog, distribute, import-memory, lease, logs, objstore, pipeline, report, shrink, startup`},
		{"no benchmark asks for -run", nil, "give a benchmark with -run NAME"},
		{"a negative size is refused", []string{"-run", "startup", "-n", "-1"}, "-n -1"},
		{"zero workers are refused", []string{"-run", "lease", "-c", "0"}, "-c 0"},
		{"more workers than sites are refused", []string{"-run", "report", "-c", "1001"}, "-c 1001"},
		{"stray arguments are refused", []string{"-run", "startup", "extra"}, "unexpected arguments"},
		{"an empty hostile XML info is refused", []string{"-run", "import-memory", "-xml-bytes", "0"}, "-xml-bytes 0"},
		{"a negative update file size is refused", []string{"-run", "distribute", "-update-file-mib", "-1"}, "-update-file-mib -1"},
		{"update files larger than any system binary are refused", []string{"-run", "distribute", "-update-file-mib", "257"}, "-update-file-mib 257"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tt.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run(%q) = %v, want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestMedianTakesTheMiddleOfOddAndEvenSamples(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		samples []float64
		want    float64
	}{
		{"one sample is its own median", []float64{7}, 7},
		{"odd counts take the middle value", []float64{9, 1, 5}, 5},
		{"even counts average the two middle values", []float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := median(tt.samples); got != tt.want {
				t.Errorf("median(%v) = %v, want %v", tt.samples, got, tt.want)
			}
		})
	}
}

func TestSplitSharesOutEveryOperation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		n, parts int
		want     []int
	}{
		{"an even split gives equal shares", 6, 3, []int{2, 2, 2}},
		{"the remainder goes to the first parts", 8, 3, []int{3, 3, 2}},
		{"more parts than operations leaves some empty", 2, 4, []int{1, 1, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := split(tt.n, tt.parts); !slices.Equal(got, tt.want) {
				t.Errorf("split(%d, %d) = %v, want %v", tt.n, tt.parts, got, tt.want)
			}
		})
	}
}

func TestWorkerTotalsAddUpToTheBenchmarkSize(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ n, workers int }{{7, 2}, {1, 8}, {5000, 8}, {10, 3}} {
		totals := workerTotals(tt.n, tt.workers)
		sum := 0
		for _, v := range totals {
			sum += v
		}
		if sum != tt.n || len(totals) != tt.workers {
			t.Errorf("workerTotals(%d, %d) = %v, want %d workers summing to %d", tt.n, tt.workers, totals, tt.workers, tt.n)
		}
	}
}

func TestPercentileTakesTheNearestRank(t *testing.T) {
	t.Parallel()
	lats := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	tests := []struct {
		name string
		p    float64
		want time.Duration
	}{
		{"p50 of ten is the fifth smallest", 0.50, 5},
		{"p99 of ten is the largest", 0.99, 10},
		{"p10 of ten is the smallest", 0.10, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := percentile(lats, tt.p); got != tt.want {
				t.Errorf("percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestSiteCodesAreValidAndDistinctForEveryWorker(t *testing.T) {
	t.Parallel()
	seen := map[string]int{}
	for w := range maxWorkers {
		code := siteCode(w)
		if err := catalog.ValidateSite(code); err != nil {
			t.Fatalf("siteCode(%d) = %q: %v", w, code, err)
		}
		if prev, ok := seen[code]; ok {
			t.Fatalf("siteCode(%d) = siteCode(%d) = %q", w, prev, code)
		}
		seen[code] = w
	}
}

// TestMain serves the agents benchmark's bare server when the benchmark
// starts this binary again for it, as it starts osvc-bench.
func TestMain(m *testing.M) {
	if served, err := serveBareAgentsFromEnv(context.Background()); served {
		if err != nil {
			fmt.Fprintln(os.Stderr, "bare agent server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestAgentsBenchMeasuresBothServerProcessesAtEachFleetSize(t *testing.T) {
	t.Parallel()
	res := runToResult(t, "-run", "agents", "-n", "20", "-heartbeat", "300ms", "-fast")
	if res.Bench != "agents" || res.N != 20 {
		t.Errorf("bench, n = %q, %d; want agents, 20", res.Bench, res.N)
	}
	if !strings.Contains(res.Osvc.Name, "20 agents") || !strings.Contains(res.Floor.Name, "20 agents") {
		t.Errorf("main figures %q and %q, want those of the largest fleet", res.Osvc.Name, res.Floor.Name)
	}
	// Steps 2, 10 and 20: heartbeat, connect, CPU and etcd writes each, and
	// RSS for the two smaller ones.
	if len(res.Extra) != 3*4+2 {
		t.Errorf("%d extra figures, want 14: %+v", len(res.Extra), res.Extra)
	}
	for _, f := range res.Extra {
		switch {
		case strings.HasPrefix(f.Name, "etcd writes"):
			if f.Value < 0 {
				t.Errorf("%s = %v, want a rate", f.Name, f.Value)
			}
		case strings.HasPrefix(f.Name, "heartbeat p99"), strings.HasPrefix(f.Name, "time to connect"):
			if !(f.Value > 0) || !(f.Ratio > 0) {
				t.Errorf("%s = %v (ratio %v), want both sides measured", f.Name, f.Value, f.Ratio)
			}
		}
	}
}
