package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
)

// binDir holds the binaries built once for the whole test run.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "osvc-integration-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/osvc/osvc/cmd/osvc-server", "github.com/osvc/osvc/cmd/osvc-agent", "github.com/osvc/osvc/cmd/osvcctl",
		"github.com/osvc/osvc/cmd/dism-replay", "github.com/osvc/osvc/cmd/osvc-sample")
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the binaries under test:", err)
		return 1
	}
	binDir = dir
	return m.Run()
}

// proc is a binary under test running as a process.
type proc struct {
	name string
	// dir is the process's data folder, when it has one.
	dir  string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error
}

// syncBuffer collects a process's output for the test log.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// start runs a binary from binDir; the test's cleanup stops it with SIGTERM and
// logs its output when the test failed.
func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startEnv(t, name, nil, args...)
}

// startEnv is start with variables added to the environment.
func startEnv(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(filepath.Join(binDir, name), args...)
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", name, p.log.String())
		}
	})
	return p
}

// stop sends SIGTERM and waits for the process to exit, killing it after a
// deadline so a hung process cannot hang the suite.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not stop within 30s of SIGTERM", p.name)
	}
}

// freeAddr returns a loopback address with a port the OS just handed out.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// dial connects to a server under test over TLS, trusting the authority
// in caFile as osvcctl and the agents do, with no credential.
func dial(t *testing.T, addr, caFile string) *grpc.ClientConn {
	t.Helper()
	return dialToken(t, addr, caFile, "")
}

// dialToken is dial calling with a bearer token.
func dialToken(t *testing.T, addr, caFile, token string, extra ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	creds, err := pki.ClientCredentials(addr, pki.ClientOptions{CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, transfer.DialOptions()...)
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(pki.Bearer(token, true)))
	}
	opts = append(opts, extra...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// eventually polls cond until it returns true or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// waitServing waits for the server's health service to answer SERVING.
func waitServing(t *testing.T, cc *grpc.ClientConn, p *proc) {
	t.Helper()
	health := healthpb.NewHealthClient(cc)
	eventually(t, 60*time.Second, "osvc-server to serve", func() bool {
		select {
		case <-p.done:
			t.Fatalf("osvc-server exited: %v\n%s", p.err, p.log.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
	})
}
