// Command osvc-bench measures osvc against the raw floor under it, in the same
// run: each benchmark reports osvc's figure, the floor's figure and their
// ratio, so results compare across machines. The last line of the output is
// `RESULT {json}` for scripts.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/integration/sampledata"
	"github.com/osvc/osvc/pkg/wiminfo"
	"github.com/osvc/osvc/server"
)

func main() { os.Exit(realMain()) }

func realMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if served, err := serveBareAgentsFromEnv(ctx); served {
		if err != nil {
			fmt.Fprintln(os.Stderr, "osvc-bench: bare agent server:", err)
			return 1
		}
		return 0
	}
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		// -h printed the usage, as asked: that is not a failure.
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "osvc-bench:", err)
		return 1
	}
	return 0
}

// benchConfig is what every benchmark gets from the command line.
type benchConfig struct {
	// N is the benchmark's size; what it counts is in its registry entry.
	N int
	// Workers is how many clients work at once in the throughput benchmarks,
	// on both sides of the ratio.
	Workers int
	// Fast runs etcd with short ticks on both sides of the ratio.
	Fast   bool
	Logger hclog.Logger
	// LogLevel is the log level of servers run as processes.
	LogLevel string
	// ServerBin is the osvc-server binary the process benchmarks run; empty
	// builds one from this module.
	ServerBin string
	// XMLBytes is the size of the hostile XML info of import-memory's WIMs.
	XMLBytes int
	// Heartbeat is the agents' heartbeat interval in the agents benchmark.
	Heartbeat time.Duration
	// ServerHeap, when set, is where the agents benchmark writes
	// osvc-server's heap profile at the end of each fleet's window.
	ServerHeap string
	// CPUProfile, when set, is where the distribute benchmark writes the
	// CPU profile of its timed fetches (the server runs in this process,
	// so both sides are in it).
	CPUProfile string
	// UpdateFileMiB is the payload of each file the sample's updates carry
	// in the distribute benchmark; 0 takes the sample's default.
	UpdateFileMiB int
	// Out receives the human summary, one line per measurement.
	Out io.Writer
}

// Figure is one measured quantity.
type Figure struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// Samples are the measurements the median Value was taken from.
	Samples []float64 `json:"samples"`
	// P50Ms and P99Ms are the latencies of single operations over all
	// samples, where a benchmark times them.
	P50Ms float64 `json:"p50_ms,omitempty"`
	P99Ms float64 `json:"p99_ms,omitempty"`
	// Ratio, on an Extra figure measured against a floor of its own, is
	// that ratio; otherwise an Extra figure compares with the Result's Floor.
	Ratio float64 `json:"ratio,omitempty"`
}

// Result is what a benchmark reports: osvc's figure, the floor's, and
// Ratio = Osvc.Value / Floor.Value.
type Result struct {
	Bench string  `json:"bench"`
	Ratio float64 `json:"ratio"`
	Osvc  Figure  `json:"osvc"`
	Floor Figure  `json:"floor"`
	// Extra are further osvc figures of the same run (variants), each
	// comparable with Floor.
	Extra []Figure `json:"extra,omitempty"`
	// Steps are the pipeline benchmark's time per step on each side.
	Steps []StepFigure `json:"steps,omitempty"`
	// ImageBytes is the size of the image the servicing benchmarks service.
	ImageBytes int64 `json:"image_bytes,omitempty"`
	N          int   `json:"n"`
	Workers    int   `json:"workers,omitempty"`
	Fast       bool  `json:"fast"`
}

// benchFunc runs one benchmark.
type benchFunc func(ctx context.Context, cfg benchConfig) (*Result, error)

// benchEntry is one registry entry.
type benchEntry struct {
	run benchFunc
	// defaultN is the size when -n is not given, chosen to finish in well
	// under a minute on two cores.
	defaultN int
	// concurrent benchmarks use -c workers.
	concurrent bool
}

// benches is the registry: a new benchmark is one function and one entry.
var benches = map[string]benchEntry{
	// startup: -n starts of each side; the medians are compared.
	"startup": {run: benchStartup, defaultN: 5},
	// lease: -n leases and as many floor transactions, over a few rounds.
	"lease": {run: benchLease, defaultN: 5000, concurrent: true},
	// report: -n progress reports per variant and as many floor transactions.
	"report": {run: benchReport, defaultN: 6000, concurrent: true},
	// logs: -n log lines from one busy agent, over three runs (the server
	// stores at most 100,000 lines per run).
	"logs": {run: benchLogs, defaultN: 3 * maxLinesPerRound},
	// catalog: -n updates in the catalog, with 50 images and 5,000 ended runs.
	"catalog": {run: benchCatalog, defaultN: 20000},
	// import-memory: -n concurrent imports of hostile WIMs into a real
	// osvc-server process; its peak RSS is compared with its idle RSS.
	"import-memory": {run: benchImportMemory, defaultN: 12},
	// pipeline: a servicing run of an image of -n MiB of file data, end to
	// end, against the same wimlib-imagex sequence by hand.
	"pipeline": {run: benchPipeline, defaultN: 512},
	// agents: -n agents (and -n/10, -n/2) connected to a real osvc-server
	// process and to a bare AgentService process; RSS per agent compared.
	"agents": {run: benchFleet, defaultN: 10000},
	// shrink: the size of the serviced image of -n MiB of file data (the
	// demo's by default) with remove superseded, against its size before.
	"shrink": {run: benchShrink, defaultN: defaultShrinkMiB},
	// objstore: a blob of -n MiB written to and read from the content
	// library on an S3-compatible store, against the bare S3 client.
	"objstore": {run: benchObjstore, defaultN: 256},
	// distribute: the sample image of -n MiB of file data, serviced into a
	// new version, fetched by a receiver holding the first: bytes sent ÷
	// its size, and the fetch's rate against a bare gRPC stream.
	"distribute": {run: benchDistribute, defaultN: 512},
}

func benchNames() []string {
	names := make([]string, 0, len(benches))
	for name := range benches {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("osvc-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("run", "", "`benchmark` to run: "+strings.Join(benchNames(), ", "))
	n := fs.Int("n", 0, "size of the benchmark (startup: starts per side; agents: connected agents; lease: leases; report: reports per variant; logs: log lines, at most 300000; catalog: updates; import-memory: concurrent imports; pipeline, shrink, distribute: MiB of file data in the image; objstore: MiB of the blob); 0 takes the benchmark's default")
	workers := fs.Int("c", 8, "concurrent workers of the throughput benchmarks (lease, report), on both sides of the ratio")
	fast := fs.Bool("fast", false, "run etcd with short ticks (tests); default: production ticks on both sides")
	logLevel := fs.String("log-level", "error", "log level of the servers under test: trace, debug, info, warn, error")
	serverBin := fs.String("server-bin", "", "osvc-server `binary` for import-memory; default: build it from this module")
	heartbeat := fs.Duration("heartbeat", server.DefaultHeartbeatInterval, "heartbeat interval of the agents benchmark's agents, as servers tell them")
	serverHeap := fs.String("server-heap", "", "agents: write osvc-server's heap profile at the end of each fleet's window to `FILE`.N (go tool pprof reads it)")
	cpuProfile := fs.String("cpuprofile", "", "distribute: write the CPU profile of the timed fetches (both sides: the server runs in this process) to `FILE`")
	updateFileMiB := fs.Int("update-file-mib", defaultUpdateFileMiB, "distribute: `MiB` of each file the sample's updates carry, and of each of the image's component files they replace, "+
		"as a large system binary (ntoskrnl.exe, shell32.dll) is a few MiB: the update rewrites that much of the image per file (about a dozen); at most 1/24 of -n. "+
		"0 takes the sample's default (updates of 1/32 of -n a file). The other servicing benchmarks keep the sample's default")
	xmlBytes := fs.Int("xml-bytes", wiminfo.MaxXMLBytes, "size of the hostile XML info of import-memory's WIMs; default: the server's cap")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: osvc-bench -run "+strings.Join(benchNames(), "|")+" [flags]")
		fmt.Fprintln(fs.Output(), "Measures osvc against bare etcd in the same run; the last line is RESULT {json} with the ratio.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: give the benchmark with -run", fs.Args())
	}
	bench, ok := benches[*name]
	if !ok {
		if *name == "" {
			return fmt.Errorf("give a benchmark with -run NAME; known: %s", strings.Join(benchNames(), ", "))
		}
		return fmt.Errorf("unknown benchmark %q; known: %s", *name, strings.Join(benchNames(), ", "))
	}
	if *n < 0 {
		return fmt.Errorf("-n %d: give a positive size, or 0 for the benchmark's default", *n)
	}
	if *n == 0 {
		*n = bench.defaultN
	}
	if *workers < 1 || *workers > maxWorkers {
		return fmt.Errorf("-c %d: give 1 to %d workers", *workers, maxWorkers)
	}
	if !bench.concurrent {
		*workers = 0
	}
	level := hclog.LevelFromString(*logLevel)
	if level == hclog.NoLevel {
		return fmt.Errorf("-log-level %q: use trace, debug, info, warn or error", *logLevel)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "osvc-bench", Level: level, Output: stderr})

	if *heartbeat <= 0 {
		return fmt.Errorf("-heartbeat %s: give a positive interval", *heartbeat)
	}
	if *updateFileMiB < 0 || int64(*updateFileMiB) > sampledata.MaxUpdateFileBytes>>20 {
		return fmt.Errorf("-update-file-mib %d: give 1 to %d MiB, or 0 for the sample's default", *updateFileMiB, sampledata.MaxUpdateFileBytes>>20)
	}
	if *xmlBytes < 1 {
		return fmt.Errorf("-xml-bytes %d: give a positive size", *xmlBytes)
	}
	res, err := bench.run(ctx, benchConfig{
		N: *n, Workers: *workers, Fast: *fast, Logger: logger, LogLevel: *logLevel,
		ServerBin: *serverBin, XMLBytes: *xmlBytes, Heartbeat: *heartbeat, ServerHeap: *serverHeap, CPUProfile: *cpuProfile,
		UpdateFileMiB: *updateFileMiB, Out: stdout,
	})
	if err != nil {
		return fmt.Errorf("benchmark %s: %w", *name, err)
	}
	res.Bench, res.N, res.Workers, res.Fast = *name, *n, *workers, *fast
	if res.Floor.Value > 0 {
		res.Ratio = res.Osvc.Value / res.Floor.Value
	}
	for _, f := range res.Extra {
		ratio := f.Ratio
		if ratio == 0 && res.Floor.Value > 0 {
			ratio = f.Value / res.Floor.Value
		}
		if ratio > 0 {
			fmt.Fprintf(stdout, "%s: %s %.3g %s%s, ratio %.3g\n", res.Bench, f.Name, f.Value, f.Unit, latencies(f), ratio)
		}
	}
	fmt.Fprintf(stdout, "%s: %s %.3g %s%s, %s %.3g %s%s, ratio %.3g (median of %d samples)\n", res.Bench,
		res.Osvc.Name, res.Osvc.Value, res.Osvc.Unit, latencies(res.Osvc),
		res.Floor.Name, res.Floor.Value, res.Floor.Unit, latencies(res.Floor), res.Ratio, len(res.Osvc.Samples))
	line, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	fmt.Fprintf(stdout, "RESULT %s\n", line)
	return nil
}

// latencies describes f's p50/p99 latencies when it has them.
func latencies(f Figure) string {
	if f.P50Ms == 0 && f.P99Ms == 0 {
		return ""
	}
	return fmt.Sprintf(" (p50 %.3g ms, p99 %.3g ms)", f.P50Ms, f.P99Ms)
}

// median of samples; samples is not modified.
func median(samples []float64) float64 {
	if len(samples) == 0 {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// millis expresses d in milliseconds, the unit of the startup figures.
func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

var errNotServing = errors.New("health check did not answer SERVING")
