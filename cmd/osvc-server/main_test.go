package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/osvc/osvc/pkg/pki"
)

var servingLine = regexp.MustCompile(`osvc-server serving: addr=(\S+) etcd=embedded data_dir=(\S+)`)

func TestRunServesUntilItsContextEnds(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs, logw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--data-dir", dataDir, "--log-level", "info"}, io.Discard, logw)
		logw.Close()
	}()

	// Read the log until the serving line; keep draining it afterwards so
	// the server never blocks on a write.
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			if m := servingLine.FindStringSubmatch(sc.Text()); m != nil {
				if m[2] != dataDir {
					t.Errorf("serving line names data_dir %s, want %s", m[2], dataDir)
				}
				addrc <- m[1]
			}
		}
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("run returned before serving: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("no serving line within a minute")
	}

	// TLS, with the authority the server made in its data directory; a
	// plaintext client gets nothing.
	plain, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if resp, err := healthpb.NewHealthClient(plain).Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
		t.Fatalf("a plaintext health check = %v, want it refused", resp)
	}
	creds, err := pki.ClientCredentials(addr, pki.ClientOptions{CAFile: filepath.Join(dataDir, "pki", pki.CACertFile)})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v; want SERVING", resp, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after cancel = %v, want nil", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("run did not return within a minute of the cancel")
	}
}

func TestRunRefusesBadFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"an unknown flag", []string{"--no-such-flag"}, "no-such-flag"},
		{"an unknown log level", []string{"--log-level", "loud"}, "--log-level"},
		{"an unknown log format", []string{"--log-format", "xml"}, "--log-format"},
		{"a missing config file", []string{"--config", "no-such-osvc.yaml"}, "no-such-osvc.yaml"},
		{"a stray argument", []string{"serve"}, "unexpected arguments"},
		{"a bad duration", []string{"--lease-ttl", "soon"}, "lease-ttl"},
		{"a heartbeat slower than the lease", []string{"--lease-ttl", "5s", "--heartbeat-interval", "10s"}, "heartbeat interval"},
		{"a negative stall time", []string{"--stall-after", "-1m"}, "stall after"},
		{"a negative retry backoff", []string{"--retry-backoff", "-1s"}, "retry backoff"},
		{"a negative import limit", []string{"--max-concurrent-imports", "-1"}, "max concurrent imports"},
		{"a negative upload limit", []string{"--max-concurrent-uploads", "-2"}, "max concurrent uploads"},
		{"a negative upload size", []string{"--max-upload-bytes", "-1"}, "max upload bytes"},
		{"a negative content grace", []string{"--content-grace", "-1h"}, "content grace"},
		{"keeping no version to roll back to", []string{"--keep-versions", "0"}, "--keep-versions"},
		{"keeping more versions than an image record holds", []string{"--keep-versions", "101"}, "keep versions"},
		{"a bucket without an object store", []string{"--s3-bucket", "osvc"}, "--s3-endpoint"},
		{"an object store without a bucket", []string{"--s3-endpoint", "https://s3.example.com"}, "--s3-bucket"},
		{"an object store prefix without its slash", []string{"--s3-endpoint", "https://s3.example.com", "--s3-bucket", "osvc", "--s3-prefix", "osvc"}, "prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			var stderr strings.Builder
			err := run(context.Background(), tt.args, io.Discard, &stderr)
			if err == nil {
				t.Fatal("run accepted it")
			}
			if !strings.Contains(err.Error()+stderr.String(), tt.want) {
				t.Errorf("error %q (stderr %q) does not mention %q", err, stderr.String(), tt.want)
			}
		})
	}
	t.Run("-h prints the usage", func(t *testing.T) {
		var stderr strings.Builder
		if err := run(context.Background(), []string{"-h"}, io.Discard, &stderr); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("run -h = %v, want flag.ErrHelp", err)
		}
		if !strings.Contains(stderr.String(), "--etcd-endpoints") && !strings.Contains(stderr.String(), "-etcd-endpoints") {
			t.Errorf("usage does not list --etcd-endpoints:\n%s", stderr.String())
		}
	})
}

func TestProfilesAreServedOnLoopbackOnly(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"--data-dir", t.TempDir(), "--pprof-listen", "0.0.0.0:6060"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("--pprof-listen on all interfaces = %v, want refused asking for a loopback address", err)
	}
}

func TestVersionAndTheConfigFile(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	if err := run(context.Background(), []string{"--version"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "osvc-server ") || !strings.Contains(out.String(), "go1.") {
		t.Errorf("--version printed %q", out.String())
	}
	// A setting of the file is checked as the flag would be.
	config := filepath.Join(t.TempDir(), "osvc-server.yaml")
	if err := os.WriteFile(config, []byte("lease-ttl: soon\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), []string{"--config", config}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "lease-ttl") || !strings.Contains(err.Error(), config) {
		t.Errorf("a bad lease-ttl in the file: %v, want an error naming the file and the setting", err)
	}
}

func TestTheExampleConfigHoldsOnlySettingsOfTheServer(t *testing.T) {
	t.Parallel()
	// Refused after the file is read: a heartbeat slower than the lease.
	err := run(context.Background(), []string{"--config", filepath.Join("..", "..", "deploy", "config", "osvc-server.yaml"),
		"--lease-ttl", "5s", "--heartbeat-interval", "10s"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "heartbeat interval") {
		t.Fatalf("run with the example config = %v; want it read, then the heartbeat refused", err)
	}
}
