package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/osvc/osvc/server"
	"github.com/osvc/osvc/server/store"
)

// startupTimeout bounds one start, so a server that never gets ready fails
// the benchmark instead of hanging it.
const startupTimeout = 2 * time.Minute

// healthPollInterval spaces health checks that answered NOT_SERVING.
const healthPollInterval = 10 * time.Millisecond

// benchStartup compares the time osvc-server takes from New until it serves
// (its health check answers SERVING) with the time its floor, a bare embedded
// etcd, takes to be ready. Both start in fresh directories, alternately, so
// drift in the machine's load hits both alike.
func benchStartup(ctx context.Context, cfg benchConfig) (*Result, error) {
	osvc := Figure{Name: "osvc-server ready", Unit: "ms"}
	floor := Figure{Name: "embedded etcd ready", Unit: "ms"}
	for i := range cfg.N {
		etcdTime, err := etcdStartup(ctx, cfg)
		if err != nil {
			return nil, err
		}
		serverTime, err := serverStartup(ctx, cfg)
		if err != nil {
			return nil, err
		}
		floor.Samples = append(floor.Samples, millis(etcdTime))
		osvc.Samples = append(osvc.Samples, millis(serverTime))
		fmt.Fprintf(cfg.Out, "startup %d/%d: embedded etcd %s, osvc-server %s\n", i+1, cfg.N,
			etcdTime.Round(time.Millisecond), serverTime.Round(time.Millisecond))
	}
	osvc.Value, floor.Value = median(osvc.Samples), median(floor.Samples)
	return &Result{Osvc: osvc, Floor: floor}, nil
}

// etcdStartup times store.StartEmbedded in a fresh directory until etcd is ready.
func etcdStartup(ctx context.Context, cfg benchConfig) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "osvc-bench-etcd-*")
	if err != nil {
		return 0, fmt.Errorf("etcd data directory: %w", err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(ctx, startupTimeout)
	defer cancel()

	start := time.Now()
	e, err := store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: dir, Logger: cfg.Logger, FastTicks: cfg.Fast})
	if err != nil {
		return 0, fmt.Errorf("start embedded etcd: %w", err)
	}
	elapsed := time.Since(start)
	if err := e.Close(); err != nil {
		return 0, fmt.Errorf("stop embedded etcd: %w", err)
	}
	return elapsed, nil
}

// serverStartup times server.New + Run with embedded etcd in a fresh
// directory until Ready is closed and the gRPC health check answers SERVING.
func serverStartup(ctx context.Context, cfg benchConfig) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "osvc-bench-server-*")
	if err != nil {
		return 0, fmt.Errorf("server data directory: %w", err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(ctx, startupTimeout)
	defer cancel()

	start := time.Now()
	srv, err := server.New(server.Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: cfg.Logger, FastEtcd: cfg.Fast})
	if err != nil {
		return 0, fmt.Errorf("configure osvc-server: %w", err)
	}
	runCtx, stop := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(runCtx) }()
	// Whatever happens below, the server stops and its goroutine is waited for.
	stopped := false
	defer func() {
		stop()
		if !stopped {
			<-errc
		}
	}()

	select {
	case <-srv.Ready():
	case err := <-errc:
		stopped = true
		return 0, fmt.Errorf("osvc-server stopped before it was ready: %w", err)
	case <-ctx.Done():
		return 0, fmt.Errorf("osvc-server not ready: %w", ctx.Err())
	}
	if err := waitServing(ctx, target{addr: srv.Addr(), caFile: srv.CAFile()}); err != nil {
		return 0, err
	}
	elapsed := time.Since(start)

	stop()
	stopped = true
	if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
		return 0, fmt.Errorf("stop osvc-server: %w", err)
	}
	return elapsed, nil
}

// waitServing asks addr's grpc.health.v1 service until it answers SERVING.
// A server process makes its authority's file once it runs: the file is
// waited for first.
func waitServing(ctx context.Context, srv target) error {
	addr := srv.addr
	for {
		_, err := os.Stat(srv.caFile)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("health check of %s: %w", addr, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("health check of %s: no %s yet: %w", addr, srv.caFile, ctx.Err())
		case <-time.After(healthPollInterval):
		}
	}
	conn, err := srv.dial()
	if err != nil {
		return fmt.Errorf("health check of %s: %w", addr, err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	for {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if status.Code(err) == codes.Unimplemented {
			return fmt.Errorf("health check of %s: osvc-server does not register grpc.health.v1: %w", addr, err)
		}
		if ctx.Err() != nil {
			if err == nil {
				err = fmt.Errorf("%w (last status %s)", errNotServing, resp.GetStatus())
			}
			return fmt.Errorf("health check of %s: %w", addr, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(healthPollInterval):
		}
	}
}
