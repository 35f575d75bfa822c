// Package agent is the servicing agent: it holds its stream to the server and
// runs the servicing pipelines the server assigns.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/osvc/osvc/agent/cache"
	"github.com/osvc/osvc/agent/conn"
	"github.com/osvc/osvc/agent/dp"
	"github.com/osvc/osvc/agent/drive"
	"github.com/osvc/osvc/agent/engine"
	"github.com/osvc/osvc/agent/identity"
	"github.com/osvc/osvc/agent/pipeline"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/drivesetting"
	"github.com/osvc/osvc/pkg/names"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
)

// DriveAutomatic is the drive setting that means the drive the agent is
// installed on: on Windows the root of its executable's volume, elsewhere
// its data folder.
const DriveAutomatic = drivesetting.Automatic

// Config configures an Agent.
type Config struct {
	// Server is the server's address, host:port.
	Server string
	// TLS says which authority the agent trusts for the server's
	// certificate, or that it dials a loopback server in plaintext.
	TLS pki.ClientOptions
	// Site is the code of the agent's site, e.g. PS1; default the site its
	// certificate names (the join token's).
	Site string
	// JoinToken enrolls the agent when its data folder holds no identity
	// yet; see package identity.
	JoinToken string
	// Name is the agent's name; default the host name.
	Name string
	// Drive, when set, is this agent's own offline servicing drive, which
	// overrides the setting of its site on this server: "Automatic", a
	// drive (D: or D:\) or a folder. Empty, each run works on the drive its
	// site's setting names (the Assign carries it). A drive or folder this
	// server lacks means Automatic, as in Configuration Manager (see
	// drive.Resolve), and the agent and each run's log say so.
	Drive string
	// DataDir holds the update cache (DataDir/cache).
	DataDir string
	// CacheMaxBytes caps the update cache: past it the least recently used
	// files no run holds are evicted. 0 means DefaultCacheMaxBytes, negative
	// means no cap.
	CacheMaxBytes int64
	// Capacity is how many runs the agent services at once; default 1.
	Capacity int
	// Engine services the images; its Name is announced to the server.
	Engine engine.Engine
	// NewEngine, when set, makes a run's engine with the run's logger, so the
	// engine's output lands in the run log; Engine is used otherwise.
	NewEngine engine.RunEngine
	Logger    hclog.Logger
	Version   string
	// DialOptions are added to the connections' options (credentials; tests: bufconn).
	DialOptions []grpc.DialOption
	// InitialBackoff and MaxBackoff bound the reconnect delay; default 1s and 30s.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// WorkRetention is how long the work folder of an ended run (its logs)
	// is kept after the run, by the folder's modification time; default
	// DefaultWorkRetention, negative keeps them for ever.
	WorkRetention time.Duration
	// Distribution configures the distribution point role.
	Distribution DistributionConfig
}

// DefaultCacheMaxBytes is the update cache's default size cap: a few months
// of cumulative updates for a few Windows versions and architectures.
const DefaultCacheMaxBytes int64 = 20 << 30

// DefaultWorkRetention is how long the logs of ended runs are kept.
const DefaultWorkRetention = 7 * 24 * time.Hour

// retentionEvery is how often a running agent removes expired work folders.
const retentionEvery = 24 * time.Hour

// nameFromHost makes a valid agent name of a host name: the first label,
// lower-cased, other characters turned into '-'.
func nameFromHost(host string) string {
	host, _, _ = strings.Cut(strings.ToLower(host), ".")
	var b strings.Builder
	for _, r := range host {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	name := b.String()
	if name == "" || name[0] < 'a' || name[0] > 'z' {
		name = "agent-" + name
	}
	if len(name) > 63 {
		name = name[:63]
	}
	return strings.TrimRight(name, "-")
}

// Agent services the runs the server assigns to it.
type Agent struct {
	// ident is the agent's key and certificate.
	ident  *identity.Identity
	cfg    Config
	logger hclog.Logger
	host   string
	// drive is where runs work when the site's setting does not apply:
	// the agent's --drive resolved, else the Automatic drive. It is locked
	// from the start.
	drive string
	// ownDrive tells that the agent was given its own drive (--drive).
	ownDrive bool
	cache    string
	conn     *conn.Conn
	// driveFallback is why the drive setting gave way to Automatic, if it did.
	driveFallback error

	// drivesMu guards locked: the drives the agent holds, by folder, with
	// how to let each go: drive and those its sites' settings named.
	drivesMu sync.Mutex
	locked   map[string]func()

	mu      sync.Mutex
	runs    map[string]*heldRun
	closing bool
	wg      sync.WaitGroup
	// runsCtx parents every run; it outlives one stream, and ends (with
	// pipeline.ErrDiscard as cause) when the agent shuts down.
	runsCtx    context.Context
	cancelRuns context.CancelCauseFunc
	// images and updates serve the runs' downloads and uploads; set by Run.
	images  *transfer.Client
	updates *cache.Cache
	// point is the distribution point role, once the agent has it.
	point *distributionPoint

	// now and retentionTicks drive the retention; tests replace them.
	now            func() time.Time
	retentionTicks func() (<-chan time.Time, func())
}

// heldRun is a run the agent is servicing.
type heldRun struct {
	token  int64
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// New validates cfg, creates the data folder and resolves the drive.
func New(cfg Config) (*Agent, error) {
	if cfg.Server == "" {
		return nil, errors.New("agent: the server address is required (--server host:port)")
	}
	if cfg.Engine == nil {
		return nil, errors.New("agent: an engine is required (--engine wimlib)")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("agent: a data folder is required (--data-dir)")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Capacity == 0 {
		cfg.Capacity = 1
	}
	if cfg.Capacity < 0 {
		return nil, fmt.Errorf("agent: capacity %d: want 1 or more runs at once", cfg.Capacity)
	}
	if cfg.WorkRetention == 0 {
		cfg.WorkRetention = DefaultWorkRetention
	}
	if u := cfg.Distribution.URL; u != "" {
		parsed, err := url.Parse(u)
		if err != nil || (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" || len(u) > 2048 {
			return nil, fmt.Errorf("agent: --dp-url %q: want an http:// or https:// URL with a host, e.g. https://dp1.example:8090/", u)
		}
	}
	if cfg.CacheMaxBytes == 0 {
		cfg.CacheMaxBytes = DefaultCacheMaxBytes
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("agent: data folder %s: %w", cfg.DataDir, err)
	}
	cfg.DataDir = dataDir
	ident, err := identity.New(filepath.Join(dataDir, "identity"))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if ident.Enrolled() {
		id := ident.ID()
		if cfg.Name != "" && cfg.Name != id.Name || cfg.Site != "" && cfg.Site != id.Site {
			return nil, fmt.Errorf("agent: --name %q --site %q, but this agent is enrolled as %s of site %s (%s): drop the flags, or enroll anew in another --data-dir",
				cfg.Name, cfg.Site, id.Name, id.Site, filepath.Join(dataDir, "identity", identity.File))
		}
		cfg.Name, cfg.Site = id.Name, id.Site
		if cfg.JoinToken != "" {
			cfg.Logger.Named("agent").Info("the agent is enrolled already: the join token is not used", "agent", id.Name, "site", id.Site)
		}
	} else if cfg.Site != "" {
		if err := names.ValidateSite(cfg.Site); err != nil {
			return nil, fmt.Errorf("agent: --site: %v", err)
		}
	}
	opts := cfg.TLS
	opts.Certificate = ident.ClientCertificate
	creds, err := pki.ClientCredentials(cfg.Server, opts)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	// Later options win: DialOptions may replace the credentials (tests).
	cfg.DialOptions = append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, cfg.DialOptions...)
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	if cfg.Name == "" {
		cfg.Name = nameFromHost(host)
	}
	if err := names.ValidateID(cfg.Name); err != nil {
		return nil, fmt.Errorf("agent: name %q: %v (--name)", cfg.Name, err)
	}
	cache := filepath.Join(dataDir, "cache")
	if err := os.MkdirAll(cache, 0o750); err != nil {
		return nil, fmt.Errorf("agent: create the data folder: %w: set --data-dir to a writable folder", err)
	}
	logger := cfg.Logger.Named("agent")
	resolved, err := drive.Resolve(cfg.Drive, drive.Local(dataDir))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	switch {
	case cfg.Drive == "":
		logger.Info("runs work on the offline servicing drive their site sets; --drive would override it on this server",
			"automatic_drive", resolved.Dir)
	case resolved.Fallback != nil:
		logger.Warn("the offline servicing drive is not on this server: runs work on the Automatic drive",
			"setting", cfg.Drive, "drive", resolved.Dir, "reason", resolved.Fallback)
	case resolved.Dir != cfg.Drive:
		logger.Info("offline servicing drive resolved; it overrides the site's setting on this server", "setting", cfg.Drive, "drive", resolved.Dir)
	default:
		logger.Info("offline servicing drive; it overrides the site's setting on this server", "drive", resolved.Dir)
	}
	a := &Agent{
		ident:    ident,
		cfg:      cfg,
		logger:   logger,
		host:     host,
		drive:    resolved.Dir,
		ownDrive: cfg.Drive != "",
		cache:    cache,
		runs:     make(map[string]*heldRun),
		locked:   map[string]func(){},
		now:      time.Now,
		retentionTicks: func() (<-chan time.Time, func()) {
			t := time.NewTicker(retentionEvery)
			return t.C, t.Stop
		},
		driveFallback: resolved.Fallback,
	}
	c, err := conn.New(conn.Config{
		Server:         cfg.Server,
		DialOptions:    cfg.DialOptions,
		Logger:         cfg.Logger,
		Hello:          a.hello,
		Heartbeat:      func() *osvcv1.Heartbeat { return &osvcv1.Heartbeat{Drives: a.drives()} },
		Handler:        (*handler)(a),
		InitialBackoff: cfg.InitialBackoff,
		MaxBackoff:     cfg.MaxBackoff,
	})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.conn = c
	return a, nil
}

// enroll trades the join token for the agent's certificate when the agent
// has none yet. Without either, the agent connects without a certificate,
// which only a server that asks for none (a test's) accepts.
func (a *Agent) enroll(ctx context.Context) error {
	if a.ident.Enrolled() {
		return nil
	}
	if a.cfg.JoinToken == "" {
		a.logger.Warn("this agent is not enrolled and has no join token: the server will refuse it; create one with osvcctl agent token create --site SITE and start the agent with --join-token-file or $" + identity.JoinTokenEnv)
		return nil
	}
	// A connection of its own: its handshake carried no certificate, and
	// gRPC would keep using it for the calls that need one.
	cc, err := pki.NewClient(a.cfg.Server, a.cfg.DialOptions...)
	if err != nil {
		return fmt.Errorf("agent: server address %q: %w", a.cfg.Server, err)
	}
	defer cc.Close()
	ectx, cancel := context.WithTimeout(ctx, enrollTimeout)
	defer cancel()
	if err := a.ident.Enroll(ectx, osvcv1.NewAgentServiceClient(cc), a.cfg.Name, a.cfg.JoinToken); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	id := a.ident.ID()
	if a.cfg.Site != "" && a.cfg.Site != id.Site {
		return fmt.Errorf("agent: --site %s, but the join token is for site %s: the agent is enrolled in %s; start it without --site", a.cfg.Site, id.Site, id.Site)
	}
	a.mu.Lock()
	a.cfg.Site = id.Site
	a.mu.Unlock()
	a.logger.Info("enrolled: the server issued the agent's certificate", "agent", id.Name, "site", id.Site, "expires", a.ident.NotAfter())
	return nil
}

// enrollTimeout bounds enrollment, one call.
const enrollTimeout = time.Minute

// Site is the agent's site: its certificate's, else --site; "" before
// enrollment without --site.
func (a *Agent) Site() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg.Site
}

// Drive returns the resolved folder runs work under when their site's
// setting does not apply: the agent's own --drive, else the Automatic drive.
func (a *Agent) Drive() string { return a.drive }

// OwnDrive tells whether the agent was given its own drive (--drive),
// which overrides its site's setting.
func (a *Agent) OwnDrive() bool { return a.ownDrive }

// Run keeps the agent connected and servicing until ctx ends; running runs are
// discarded (unmounted without commit) before it returns. Before it connects
// it cleans up what a crashed agent left on the drive (mounts, copies) and
// removes expired work folders, which it then does once a day.
func (a *Agent) Run(ctx context.Context) error {
	a.logger.Info("agent starting", "name", a.cfg.Name, "site", a.cfg.Site, "server", a.cfg.Server,
		"engine", a.cfg.Engine.Name(), "drive", a.drive, "capacity", a.cfg.Capacity, "work_retention", a.cfg.WorkRetention.String(),
		"cache_max_bytes", a.cfg.CacheMaxBytes)
	unlock, err := lockDrive(a.drive)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.drivesMu.Lock()
	a.locked[a.drive] = unlock
	a.drivesMu.Unlock()
	defer a.releaseDrives()
	// Nothing runs yet: whatever is mounted in a work folder was left by an
	// agent that crashed, and nothing in it is worth keeping.
	if err := pipeline.Recover(ctx, a.cfg.Engine, a.drive, a.logger); err != nil {
		a.logger.Error("cleaning up after earlier runs left some behind: runs in those folders may fail until it is fixed", "error", err)
	}
	a.removeExpired()
	var retention sync.WaitGroup
	defer retention.Wait()
	rctx, stopRetention := context.WithCancel(ctx)
	defer stopRetention()
	retention.Go(func() { a.keepRemovingExpired(rctx) })

	opts := append(transfer.DialOptions(), a.cfg.DialOptions...)
	cc, err := pki.NewClient(a.cfg.Server, opts...)
	if err != nil {
		return fmt.Errorf("agent: server address %q: %w", a.cfg.Server, err)
	}
	defer cc.Close()
	if err := a.enroll(ctx); err != nil {
		return err
	}
	agents := osvcv1.NewAgentServiceClient(cc)
	if a.ident.Enrolled() {
		retention.Go(func() { a.ident.KeepRenewed(rctx, agents, a.logger) })
	}
	images, err := transfer.NewClient(osvcv1.NewContentServiceClient(cc))
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	updates, err := cache.New(cache.Config{Dir: a.cache, MaxBytes: max(a.cfg.CacheMaxBytes, 0), Source: images, Logger: a.cfg.Logger})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	// Deferred here, it runs after every run has ended (a.wg.Wait below).
	defer updates.Close()

	a.mu.Lock()
	a.images, a.updates = images, updates
	// Runs survive a dropped stream, so they do not hang off ctx directly.
	a.runsCtx, a.cancelRuns = context.WithCancelCause(context.WithoutCancel(ctx))
	a.mu.Unlock()
	defer a.stopDistributionPoint()
	// An agent that was a distribution point serves again what it served.
	// An agent that was a point serves again what it served; one that
	// asked for the role fails to start without it, one its site named
	// services runs all the same, and its point reports the failure.
	switch {
	case a.cfg.Distribution.Role:
		if _, err := a.distributionPoint(); err != nil {
			return err
		}
	case dp.Has(a.distributionDir()):
		if _, err := a.distributionPoint(); err != nil {
			a.logger.Error("cannot serve the images this distribution point kept", "error", err)
		}
	}

	connErr := make(chan error, 1)
	go func() { connErr <- a.conn.Run(ctx) }()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-connErr:
		connErr <- runErr
	}
	a.mu.Lock()
	a.closing = true
	a.mu.Unlock()
	a.cancelRuns(fmt.Errorf("%w: the agent is shutting down", pipeline.ErrDiscard))
	a.wg.Wait()
	if err := <-connErr; err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.logger.Info("agent stopped")
	return nil
}

// lockDrive makes sure one agent at a time works on a drive: recovery at
// start would otherwise discard another live agent's mounts. The lock is an
// flock, so a crashed agent's lock goes with its process.
func lockDrive(dir string) (unlock func(), err error) {
	root := filepath.Join(dir, pipeline.WorkFolder)
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("create the work folder on drive %s: %w: set --drive to a writable folder", dir, err)
	}
	path := filepath.Join(root, ".osvc-agent.lock")
	unlock, err = drive.Lock(path)
	if errors.Is(err, drive.ErrLocked) {
		return nil, fmt.Errorf("drive %s is in use by another osvc-agent on this server (%s is locked): give each agent its own --drive or --data-dir", dir, path)
	}
	if err != nil {
		return nil, fmt.Errorf("lock drive %s: %w", dir, err)
	}
	return unlock, nil
}

// releaseDrives lets go of every drive the agent holds, once its runs ended.
func (a *Agent) releaseDrives() {
	a.drivesMu.Lock()
	defer a.drivesMu.Unlock()
	for dir, unlock := range a.locked {
		unlock()
		delete(a.locked, dir)
	}
}

// heldDrives returns the drives the agent holds, its own first.
func (a *Agent) heldDrives() []string {
	a.drivesMu.Lock()
	defer a.drivesMu.Unlock()
	dirs := []string{a.drive}
	for dir := range a.locked {
		if dir != a.drive {
			dirs = append(dirs, dir)
		}
	}
	slices.Sort(dirs[1:])
	return dirs
}

// holdDrive locks dir for this agent when it does not hold it yet, and
// cleans up what a crashed agent left there: no run of this agent has
// worked on it since it started. Only the work folders are cleaned, not
// the engine's records, which other runs of the agent may be using.
func (a *Agent) holdDrive(ctx context.Context, dir string) error {
	a.drivesMu.Lock()
	defer a.drivesMu.Unlock()
	if _, ok := a.locked[dir]; ok {
		return nil
	}
	unlock, err := lockDrive(dir)
	if err != nil {
		return err
	}
	if err := pipeline.RecoverFolders(ctx, a.cfg.Engine, dir, a.logger); err != nil {
		a.logger.Error("cleaning up after earlier runs left some behind: runs in those folders may fail until it is fixed", "drive", dir, "error", err)
	}
	a.locked[dir] = unlock
	return nil
}

// runDrive is where one run works and why there.
type runDrive struct {
	dir string
	// reason names whose setting dir is, for the logs.
	reason string
	// fallback, when not nil, is why the setting could not be used here:
	// dir is then the Automatic drive.
	fallback error
}

// runDrive picks the drive of a run: the agent's own --drive when it was
// given one, which overrides the site's setting on this server; else the
// site's setting the Assign carries. A setting this server lacks, or a
// drive another agent here holds, means the Automatic drive.
func (a *Agent) runDrive(ctx context.Context, asg *osvcv1.Assign) runDrive {
	site := asg.GetOfflineServicingDrive()
	if drivesetting.IsAutomatic(site) {
		site = DriveAutomatic
	}
	if a.ownDrive {
		return runDrive{dir: a.drive, fallback: a.driveFallback,
			reason: fmt.Sprintf("the agent's --drive %s, which overrides the site's setting %s on this server", a.cfg.Drive, site)}
	}
	d := runDrive{reason: fmt.Sprintf("the site's offline servicing drive %s", site)}
	resolved, err := drive.Resolve(site, drive.Local(a.cfg.DataDir))
	if err != nil {
		// Automatic itself did not resolve now; it did at start.
		return runDrive{dir: a.drive, reason: d.reason, fallback: err}
	}
	d.dir, d.fallback = resolved.Dir, resolved.Fallback
	if err := a.holdDrive(ctx, d.dir); err != nil {
		d.dir, d.fallback = a.drive, err
	}
	return d
}

// keepRemovingExpired removes expired work folders on every tick until ctx ends.
func (a *Agent) keepRemovingExpired(ctx context.Context) {
	if a.cfg.WorkRetention < 0 {
		return
	}
	ticks, stop := a.retentionTicks()
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticks:
			a.removeExpired()
		}
	}
}

// removeExpired removes the work folders of ended runs older than the
// retention. a.mu is held throughout: a run the agent does not hold cannot
// start (and write into its folder) while its folder is being removed.
func (a *Agent) removeExpired() {
	if a.cfg.WorkRetention < 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	held := func(id string) bool { _, ok := a.runs["runs/"+id]; return ok }
	for _, dir := range a.heldDrives() {
		removed, err := pipeline.RemoveExpired(context.Background(), a.cfg.Engine, dir, a.cfg.WorkRetention, a.now(), held, a.logger)
		if err != nil {
			a.logger.Warn("removing expired work folders failed", "drive", dir, "error", err)
		}
		if len(removed) > 0 {
			a.logger.Info("expired work folders removed", "drive", dir, "count", len(removed), "retention", a.cfg.WorkRetention.String())
		}
	}
}

// hello describes the agent for each (re)connect.
func (a *Agent) hello() *osvcv1.Hello {
	return &osvcv1.Hello{
		Name:     a.cfg.Name,
		Site:     a.cfg.Site,
		Host:     a.host,
		Version:  a.cfg.Version,
		Engines:  []string{a.cfg.Engine.Name()},
		Drives:   a.drives(),
		Capacity: int32(a.cfg.Capacity),
		HeldRuns: a.heldRuns(),

		DistributionPoint: a.cfg.Distribution.Role,
		DistributionUrl:   a.distributionURL(),
		DistributedImages: a.distributedImages(),
	}
}

func (a *Agent) heldRuns() []*osvcv1.HeldRun {
	a.mu.Lock()
	defer a.mu.Unlock()
	held := make([]*osvcv1.HeldRun, 0, len(a.runs))
	for name, r := range a.runs {
		held = append(held, &osvcv1.HeldRun{Run: name, FencingToken: r.token})
	}
	return held
}

// drives reports the servicing drives the agent holds with their free and
// total bytes.
func (a *Agent) drives() []*osvcv1.Drive {
	var out []*osvcv1.Drive
	for _, dir := range a.heldDrives() {
		space, err := drive.SpaceOf(dir)
		if err != nil {
			a.logger.Warn("reading the drive's free space failed", "drive", dir, "error", err)
			out = append(out, &osvcv1.Drive{Path: dir})
			continue
		}
		out = append(out, &osvcv1.Drive{Path: dir, FreeBytes: space.Free, TotalBytes: space.Total})
	}
	return out
}

// handler receives the server's messages; a named type keeps the Handler
// methods off the Agent's API.
type handler Agent

func (h *handler) Assign(_ context.Context, asg *osvcv1.Assign) {
	a := (*Agent)(h)
	name := asg.GetRun().GetName()
	token := asg.GetRun().GetFencingToken()
	log := a.logger.With("run", name, "fencing_token", token)

	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closing || a.runsCtx == nil {
		log.Warn("assignment ignored: the agent is shutting down")
		return
	}
	var previous chan struct{}
	if old, ok := a.runs[name]; ok {
		if old.token == token {
			log.Info("assignment already held: resuming")
			return
		}
		// A new lease of the same run: the old one is stale. Its work
		// folder is the same, so the new one starts once the old is gone.
		log.Warn("run reassigned with a new fencing token: stopping the old one", "old_token", old.token)
		old.cancel(fmt.Errorf("%w: reassigned with fencing token %d", pipeline.ErrDiscard, token))
		previous = old.done
	}
	if len(a.runs) >= a.cfg.Capacity && previous == nil {
		log.Warn("assignment beyond the agent's capacity: servicing it anyway", "capacity", a.cfg.Capacity, "running", len(a.runs))
	}
	ctx, cancel := context.WithCancelCause(a.runsCtx)
	hr := &heldRun{token: token, cancel: cancel, done: make(chan struct{})}
	a.runs[name] = hr
	a.wg.Go(func() {
		defer close(hr.done)
		defer cancel(nil)
		defer a.release(name, hr)
		if previous != nil {
			select {
			case <-previous:
			case <-ctx.Done():
				return
			}
		}
		a.service(ctx, asg, log)
	})
}

// release forgets a finished run unless a newer lease replaced it.
func (a *Agent) release(name string, hr *heldRun) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.runs[name] == hr {
		delete(a.runs, name)
	}
}

func (a *Agent) service(ctx context.Context, asg *osvcv1.Assign, log hclog.Logger) {
	rep := &reporter{conn: a.conn, run: asg.GetRun().GetName(), token: asg.GetRun().GetFencingToken()}
	d := a.runDrive(ctx, asg)
	if d.fallback != nil {
		log.Warn("the offline servicing drive is not on this server: the run works on the Automatic drive", "drive", d.dir, "why", d.reason, "reason", d.fallback)
	} else {
		log.Info("offline servicing drive of the run", "drive", d.dir, "why", d.reason)
	}
	err := pipeline.Run(ctx, pipeline.Config{
		Engine:        a.cfg.Engine,
		NewEngine:     a.cfg.NewEngine,
		UpdateFiles:   a.updates,
		Images:        a.images,
		Sources:       a.updates,
		Drive:         d.dir,
		DriveReason:   d.reason,
		DriveFallback: d.fallback,
		Logger:        a.cfg.Logger,
	}, asg, rep)
	switch {
	case err == nil:
		log.Info("run ended")
	case errors.Is(err, pipeline.ErrLost), errors.Is(err, pipeline.ErrDiscard):
		log.Warn("run dropped", "reason", err)
	default:
		log.Error("run ended without a reported result", "error", err)
	}
}

func (h *handler) Cancel(c *osvcv1.Cancel) {
	a := (*Agent)(h)
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.runs[c.GetRun()]
	if !ok || (c.GetFencingToken() != 0 && c.GetFencingToken() != r.token) {
		a.logger.Warn("cancel for a run this agent does not hold", "run", c.GetRun(), "fencing_token", c.GetFencingToken())
		return
	}
	reason := c.GetReason()
	if reason == "" {
		reason = "canceled by the server"
	}
	a.logger.Info("canceling run", "run", c.GetRun(), "reason", reason)
	r.cancel(errors.New(reason))
}

func (h *handler) Welcome(w *osvcv1.Welcome) {
	a := (*Agent)(h)
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, name := range w.GetDiscardRuns() {
		if r, ok := a.runs[name]; ok {
			a.logger.Warn("the server says the run is no longer this agent's: discarding it", "run", name)
			r.cancel(fmt.Errorf("%w: the server gave the run to another lease", pipeline.ErrDiscard))
		}
	}
}

// reporter sends one run's reports over the agent's stream.
type reporter struct {
	conn  *conn.Conn
	run   string
	token int64
}

func (r *reporter) Step(ctx context.Context, s *osvcv1.StepRecord) error {
	return r.conn.Send(ctx, &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_StepChanged{
		StepChanged: &osvcv1.StepChanged{Run: r.run, FencingToken: r.token, Step: s}}})
}

func (r *reporter) Progress(ctx context.Context, p *osvcv1.Progress) error {
	p = proto.CloneOf(p)
	p.Run, p.FencingToken = r.run, r.token
	return r.conn.Send(ctx, &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Progress{Progress: p}})
}

func (r *reporter) UpdateResult(ctx context.Context, u *osvcv1.UpdateResult) error {
	return r.conn.Send(ctx, &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_UpdateResult{
		UpdateResult: &osvcv1.UpdateResultReport{Run: r.run, FencingToken: r.token, Result: u}}})
}

func (r *reporter) Logs(lines []*osvcv1.LogLine) { r.conn.SendLogs(r.run, r.token, lines) }

// logFlushTimeout bounds the wait for a run's last log lines before its result.
const logFlushTimeout = 10 * time.Second

func (r *reporter) Result(ctx context.Context, res *osvcv1.RunResult) error {
	// The last lines first: once the result is in, the server refuses more.
	fctx, cancel := context.WithTimeout(ctx, logFlushTimeout)
	_ = r.conn.FlushLogs(fctx, r.run, r.token)
	cancel()
	res.Run, res.FencingToken = r.run, r.token
	return r.conn.Send(ctx, &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_RunResult{RunResult: res}})
}
