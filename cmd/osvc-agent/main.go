// Command osvc-agent is the servicing agent of a site: it connects to
// osvc-server, takes the runs leased to it and services the images with its
// engine (wimlib on Linux):
//
//	osvc-agent --server osvc.example.com:7300 --site PS1
//
// SIGINT or SIGTERM stops it: runs in progress are discarded (unmounted
// without commit) before it exits, and the server re-queues them.
//
// On a Windows site server it also runs as the service osvc-agent, which
// "osvc-agent service install [flags]" registers (service.go); the service's
// Stop and Shutdown end it as SIGTERM does.
package main

import (
	"context"

	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/dustin/go-humanize"
	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/agent"
	"github.com/osvc/osvc/agent/engine"
	"github.com/osvc/osvc/agent/engine/dism"
	"github.com/osvc/osvc/agent/engine/wimlib"
	"github.com/osvc/osvc/agent/identity"
	"github.com/osvc/osvc/pkg/buildinfo"
	"github.com/osvc/osvc/pkg/cmdline"
	"github.com/osvc/osvc/pkg/pki"
)

func main() { os.Exit(realMain()) }

func realMain() int {
	// Started by the Windows Service Control Manager: run as its service.
	if code, ok := runAsWindowsService(os.Args[1:]); ok {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "osvc-agent:", err)
		return 1
	}
	return 0
}

// run parses args, starts the agent and services runs until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "service" {
		return serviceCommand(ctx, args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("osvc-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg        agent.Config
		engineName string
		wimlibBin  string
		dismBin    string
		joinFile   string
	)
	fs.StringVar(&cfg.Server, "server", "localhost:7300", "osvc-server gRPC address, host:port; several replicas comma-separated (the agent moves to another when its own fails)")
	fs.StringVar(&cfg.TLS.CAFile, "ca-file", os.Getenv(pki.CAFileEnv), "PEM file of the authority that signed the server's certificate: the server's <data-dir>/pki/ca.crt; default: "+pki.DefaultCAFile+" when it exists, else the system's; $"+pki.CAFileEnv+" sets the default")
	fs.BoolVar(&cfg.TLS.Insecure, "insecure", false, "plaintext, to a server started with --insecure on this machine")
	fs.StringVar(&cfg.Site, "site", "", "code of the agent's site, e.g. PS1; default: the site of its join token (checked against it when given)")
	fs.StringVar(&joinFile, "join-token-file", "", "`FILE` holding the join token (osvcctl agent token create) the agent enrolls with on its first start; $"+identity.JoinTokenEnv+" may hold the token instead; never on the command line, where ps shows it")
	fs.StringVar(&cfg.Name, "name", "", "the agent's name, unique in the hierarchy (default: the host name)")
	fs.StringVar(&cfg.Drive, "drive", "", "offline servicing drive of this server, overriding the site's setting (osvcctl site update --drive): "+agent.DriveAutomatic+" (the drive the agent is installed on; elsewhere than Windows, --data-dir), a drive such as D:, or a folder; one this server lacks means "+agent.DriveAutomatic+"; runs work in <drive>/OfflineImageServicing/<run> (default: the site's setting)")
	fs.StringVar(&cfg.DataDir, "data-dir", "./osvc-agent-data", "folder of the agent's update cache")
	fs.IntVar(&cfg.Capacity, "capacity", 1, "how many runs the agent services at once")
	cacheMax := byteSize(agent.DefaultCacheMaxBytes)
	fs.Var(&cacheMax, "cache-max-bytes", "size cap of the update cache in <data-dir>/cache: a `size` in bytes or with a unit, e.g. 50GiB; least recently used files no run holds are evicted past it; 0 means no cap")
	fs.DurationVar(&cfg.WorkRetention, "work-retention", agent.DefaultWorkRetention, "how long the work folder of an ended run (its logs) is kept after the run, e.g. 72h; 0 keeps them for ever")
	fs.StringVar(&engineName, "engine", defaultEngine(), "servicing engine: dism (Windows) or wimlib (Linux)")
	fs.StringVar(&wimlibBin, "wimlib-imagex", wimlib.DefaultBinary, "wimlib-imagex executable, a path or a name looked up in PATH")
	fs.StringVar(&dismBin, "dism", "", "dism.exe to run (default: the system's); elsewhere than Windows only a stand-in, for tests")
	var logging cmdline.Logging
	logging.Register(fs)
	configFile := fs.String(cmdline.ConfigFlag, "", "YAML `FILE` of settings, the flags' names as keys (e.g. data-dir: /var/lib/osvc); the command line and OSVC_<FLAG> environment variables (OSVC_DATA_DIR) win over it")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.BoolVar(&cfg.Distribution.Role, "distribution-point", false, "hold the distribution point role for the agent's site: keep the images of the site and of the sites above it in <data-dir>/distribution and serve them over HTTP(S) (a site's setting, osvcctl site update --distribution-points, gives the role too)")
	fs.StringVar(&cfg.Distribution.Listen, "dp-listen", agent.DefaultDistributionListen, "`host:port` the distribution point serves images on")
	fs.StringVar(&cfg.Distribution.URL, "dp-url", "", "address of the distribution point that clients use, e.g. https://dp1.example:8090/ (default: from --dp-listen and the host name)")
	fs.StringVar(&cfg.Distribution.CertFile, "dp-tls-cert", "", "PEM certificate `file` to serve HTTPS with (with --dp-tls-key); default plain HTTP")
	fs.StringVar(&cfg.Distribution.KeyFile, "dp-tls-key", "", "PEM key `file` of --dp-tls-cert")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: osvc-agent [--join-token-file FILE] [flags]")
		fmt.Fprintln(fs.Output(), "Services the images the osvc server assigns to this agent.")
		fmt.Fprintln(fs.Output(), "On Windows, osvc-agent service install [flags] runs it as a service (see osvc-agent service -h).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Fprintln(stdout, "osvc-agent "+buildinfo.Read().String())
		return nil
	}
	if err := cmdline.Apply(cmdline.Std(fs), *configFile, os.Getenv); err != nil {
		return err
	}
	if (cfg.Distribution.CertFile == "") != (cfg.Distribution.KeyFile == "") {
		return errors.New("--dp-tls-cert and --dp-tls-key go together: give both to serve HTTPS, or neither")
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q; osvc-agent takes flags only (see -h)", fs.Args())
	}
	token, err := joinToken(joinFile, os.Getenv(identity.JoinTokenEnv))
	if err != nil {
		return err
	}
	cfg.JoinToken = token
	switch {
	case cfg.WorkRetention < 0:
		return fmt.Errorf("--work-retention %s: want a duration of 0 or more, e.g. 168h (0 keeps the logs for ever)", cfg.WorkRetention)
	case cfg.WorkRetention == 0:
		cfg.WorkRetention = -1 // agent.Config's "keep for ever"
	}
	cfg.CacheMaxBytes = int64(cacheMax)
	if cfg.CacheMaxBytes == 0 {
		cfg.CacheMaxBytes = -1 // agent.Config's "no cap"
	}
	logger, err := logging.Logger("osvc-agent", stderr)
	if err != nil {
		return err
	}
	cfg.Logger = logger
	cfg.Version = buildinfo.Read().Short()

	newEngine, err := engineFactory(runtime.GOOS, engineName, wimlibBin, dismBin)
	if err != nil {
		return err
	}
	eng, err := newEngine(logger, "")
	if err != nil {
		return err
	}
	cfg.Engine, cfg.NewEngine = eng, newEngine

	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	site := a.Site()
	if site == "" {
		site = "from its join token"
	}
	drive := a.Drive() + " (--drive, overriding the site's setting)"
	if !a.OwnDrive() {
		drive = "the site's setting (" + agent.DriveAutomatic + " here is " + a.Drive() + ")"
	}
	fmt.Fprintf(stdout, "osvc-agent %s: site %s, server %s, drive %s\n", cfg.Version, site, cfg.Server, drive)
	return a.Run(ctx)
}

// byteSize is a flag holding a number of bytes, given as a plain number or
// with a unit: 20GiB, 500MB.
type byteSize int64

func (b *byteSize) String() string { return humanize.IBytes(uint64(*b)) }

func (b *byteSize) Set(s string) error {
	n, err := humanize.ParseBytes(s)
	if err != nil || n > math.MaxInt64 {
		return fmt.Errorf("want a size of 0 or more, in bytes or with a unit such as 20GiB")
	}
	*b = byteSize(n)
	return nil
}

// defaultEngine is the engine of this platform: dism on Windows, wimlib elsewhere.
func defaultEngine() string {
	if runtime.GOOS == "windows" {
		return dism.Name
	}
	return "wimlib"
}

// engineFactory returns how to make the named engine's instances, or why
// the platform goos cannot run it.
func engineFactory(goos, name, wimlibBin, dismBin string) (engine.RunEngine, error) {
	switch name {
	case "wimlib":
		if goos == "windows" {
			return nil, errors.New("--engine wimlib: the wimlib engine mounts images with FUSE, which Windows lacks: use --engine dism")
		}
		return func(l hclog.Logger, work string) (engine.Engine, error) {
			return wimlib.New(wimlib.Config{Logger: l, Binary: wimlibBin, Work: work})
		}, nil
	case dism.Name:
		if goos != "windows" && dismBin == "" {
			return nil, fmt.Errorf("--engine dism: %w (or give --dism a stand-in, as the tests do)", dism.ErrNoDISM)
		}
		return func(l hclog.Logger, work string) (engine.Engine, error) {
			return dism.New(dism.Config{Logger: l, Binary: dismBin, Work: work})
		}, nil
	}
	return nil, fmt.Errorf("--engine %q: use dism (Windows) or wimlib (Linux)", name)
}

// joinToken is the join token from file, else from the environment.
func joinToken(file, env string) (string, error) {
	if file == "" {
		return strings.TrimSpace(env), nil
	}
	token, err := pki.ReadSecretFile(file)
	if err != nil {
		return "", fmt.Errorf("--join-token-file: %w; it holds the token osvcctl agent token create printed", err)
	}
	return strings.TrimSpace(token), nil
}
