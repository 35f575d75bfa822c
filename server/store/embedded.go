package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// startTimeout bounds how long StartEmbedded waits for etcd to serve when the
// caller's ctx has no deadline of its own.
const startTimeout = time.Minute

// EmbeddedConfig configures an etcd server running inside this process.
type EmbeddedConfig struct {
	// Dir is the data directory; restarting on the same Dir keeps the data.
	Dir string
	// ClientURL defaults to http://127.0.0.1:0: a free loopback port.
	ClientURL string
	// PeerURL defaults to a free loopback port.
	PeerURL string
	Logger  hclog.Logger
	// FastTicks uses TickMs 10 and ElectionMs 100, for tests.
	FastTicks bool
	// AutoCompactionRetention keeps this much history (periodic mode); default 1h.
	// embed leaves compaction off, which would grow the backend until its quota.
	AutoCompactionRetention time.Duration
	// TLS, when set, serves clients and peers over https and refuses any
	// client without a certificate from TLS.TrustedCAFile: another process on
	// the machine cannot read or write the store through the loopback port.
	TLS *transport.TLSInfo
}

// Embedded is an etcd server running in this process.
type Embedded struct {
	etcd      *embed.Etcd
	endpoints []string
	zapLevel  zap.AtomicLevel
	logger    hclog.Logger
	closeOnce sync.Once
	closeErr  error
}

// StartEmbedded starts etcd and returns once it is ready to serve, or fails when
// ctx ends or etcd does not become ready.
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Dir == "" {
		return nil, errors.New("embedded etcd: EmbeddedConfig.Dir is required (the data directory)")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	logger = logger.Named("etcd")
	scheme := "http"
	if cfg.TLS != nil {
		scheme = "https"
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = scheme + "://127.0.0.1:0"
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = scheme + "://127.0.0.1:0"
	}
	if cfg.AutoCompactionRetention <= 0 {
		cfg.AutoCompactionRetention = time.Hour
	}
	clientURL, err := url.Parse(cfg.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: client URL %q: %w", cfg.ClientURL, err)
	}
	peerURL, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: peer URL %q: %w", cfg.PeerURL, err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: data directory: %w", err)
	}

	// etcd logs through zap; only errors come through, into our logger, so test
	// and demo output stays readable, and the harmless ones only at DEBUG.
	level := zap.NewAtomicLevelAt(zap.ErrorLevel)
	zl := newZapLogger(logger, level)

	ec := embed.NewConfig()
	ec.Name = "osvc"
	ec.Dir = cfg.Dir
	ec.ListenClientUrls = []url.URL{*clientURL}
	ec.AdvertiseClientUrls = []url.URL{*clientURL}
	// HTTP (health, metrics) on a port of its own: the client port then
	// serves gRPC natively, not through an HTTP server that muxes it, which
	// with TLS costs a third of the throughput and can starve watches
	// (etcd-io/etcd#15402).
	httpPort, err := freeLoopbackPort()
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	ec.ListenClientHttpUrls = []url.URL{{Scheme: clientURL.Scheme, Host: net.JoinHostPort("127.0.0.1", httpPort)}}
	ec.ListenPeerUrls = []url.URL{*peerURL}
	ec.AdvertisePeerUrls = []url.URL{*peerURL}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = cfg.AutoCompactionRetention.String()
	ec.Logger = "zap"
	ec.LogLevel = "error"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl)
	if cfg.TLS != nil {
		info := *cfg.TLS
		info.ClientCertAuth = true
		ec.ClientTLSInfo, ec.PeerTLSInfo = info, info
	}
	if cfg.FastTicks {
		ec.TickMs = 10
		ec.ElectionMs = 100
	}

	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("embedded etcd in %s: %w", cfg.Dir, err)
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd in %s: %w", cfg.Dir, err)
	}
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: %w", cfg.Dir, err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: waiting until ready: %w", cfg.Dir, ctx.Err())
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: not ready after %s", cfg.Dir, startTimeout)
	}
	endpoints := make([]string, 0, len(e.Clients))
	for _, l := range e.Clients {
		if _, port, _ := net.SplitHostPort(l.Addr().String()); port == httpPort {
			continue // HTTP only
		}
		// The listener's address, not the configured URL: port 0 became a real port.
		endpoints = append(endpoints, clientURL.Scheme+"://"+l.Addr().String())
	}
	logger.Info("embedded etcd ready", "dir", cfg.Dir, "endpoints", endpoints)
	return &Embedded{etcd: e, endpoints: endpoints, zapLevel: level, logger: logger}, nil
}

// freeLoopbackPort is a port the OS just handed out on 127.0.0.1. etcd
// refuses a second ":0" URL beside the client URL's.
func freeLoopbackPort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	_, port, err := net.SplitHostPort(l.Addr().String())
	return port, err
}

// Endpoints returns the client URLs.
func (e *Embedded) Endpoints() []string { return e.endpoints }

// Close stops etcd and waits until it has stopped. Closing twice is harmless.
func (e *Embedded) Close() error {
	e.closeOnce.Do(func() {
		// Closing listeners makes etcd log "use of closed network connection"
		// errors that mean nothing: silence it for the shutdown.
		e.zapLevel.SetLevel(zap.FatalLevel)
		e.etcd.Close()
		select {
		case err, ok := <-e.etcd.Err():
			if ok && err != nil {
				e.closeErr = fmt.Errorf("embedded etcd: %w", err)
			}
		default:
		}
		e.logger.Info("embedded etcd stopped")
	})
	return e.closeErr
}
