// Package storetest gives tests a Store on an embedded etcd shared by the test binary.
package storetest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/osvc/osvc/server/store"
)

var (
	once      sync.Once
	shared    *store.Embedded
	client    *clientv3.Client
	startErr  error
	prefixSeq atomic.Int64
)

// dirPrefix names the shared etcd's temp dir after the test binary's pid, so a
// later run can tell the directories of finished binaries from live ones.
const dirPrefix = "osvc-storetest-etcd-"

// start runs the shared etcd once, for the whole test binary. A library cannot
// hook the binary's exit: TestMain calls Close to remove the directory, and for
// packages that do not, the next start removes the directories of binaries that
// are gone.
func start() {
	removeStaleDirs()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		startErr = fmt.Errorf("storetest: temp dir: %w", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := store.StartEmbedded(ctx, store.EmbeddedConfig{
		Dir:       dir,
		FastTicks: true,
		Logger:    hclog.New(&hclog.LoggerOptions{Name: "storetest", Level: hclog.Error}),
	})
	if err != nil {
		os.RemoveAll(dir)
		startErr = err
		return
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   e.Endpoints(),
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		e.Close()
		os.RemoveAll(dir)
		startErr = fmt.Errorf("storetest: etcd client: %w", err)
		return
	}
	shared, client = e, c
	tempDir = dir
}

var tempDir string

// removeStaleDirs removes the etcd directories left by test binaries that
// exited without calling Close.
func removeStaleDirs() {
	entries, err := os.ReadDir(os.TempDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), dirPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
	}
}

// processAlive reports whether pid is a running process (signal 0 probes it).
// On Windows signals cannot probe, so every directory counts as live there.
func processAlive(pid int) bool {
	if runtime.GOOS == "windows" {
		return true
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	return p.Signal(syscall.Signal(0)) == nil
}

// Close stops the shared etcd and removes its directory. Call it from TestMain
// after m.Run when the package uses storetest, so the temp dir is removed at exit:
//
//	func TestMain(m *testing.M) { code := m.Run(); storetest.Close(); os.Exit(code) }
//
// Without it the data is left in the system temp dir.
func Close() {
	if shared == nil {
		return
	}
	client.Close()
	shared.Close()
	os.RemoveAll(tempDir)
}

// Option tunes the Store New returns.
type Option func(*store.Config)

// BeforeCommit sets the store's store.Config.BeforeCommit hook: f runs in
// every transaction between its reads and its commit.
func BeforeCommit(f func(txn string)) Option {
	return func(c *store.Config) { c.BeforeCommit = f }
}

// New returns a Store with a fresh unique prefix on an embedded etcd shared by the
// test binary (started once, FastTicks, in a temp dir).
func New(t testing.TB, opts ...Option) *store.Store {
	t.Helper()
	once.Do(start)
	if startErr != nil {
		t.Fatalf("storetest: start embedded etcd: %v", startErr)
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	prefix := fmt.Sprintf("/test/%s-%d/", name, prefixSeq.Add(1))
	cfg := store.Config{Client: client, Prefix: prefix, Logger: hclog.NewNullLogger()}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := store.New(cfg)
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	return s
}

// Endpoints returns the shared embedded etcd's endpoints, for tests that start
// their own client.
func Endpoints(t testing.TB) []string {
	t.Helper()
	once.Do(start)
	if startErr != nil {
		t.Fatalf("storetest: start embedded etcd: %v", startErr)
	}
	return shared.Endpoints()
}

// StartEtcdProcess starts a one-member etcd (the etcd binary) with short
// ticks, stopped when the test ends, and returns its client URL.
func StartEtcdProcess(t testing.TB) string {
	t.Helper()
	return StartEtcdCluster(t, 1).Endpoints[0]
}

// EtcdCluster is a cluster of real etcd member processes.
type EtcdCluster struct {
	// Endpoints are the members' client URLs, in member order.
	Endpoints []string
	members   []*exec.Cmd
	exited    []chan error
}

// Kill kills member i (SIGKILL) and waits for it to exit.
func (c *EtcdCluster) Kill(i int) {
	_ = c.members[i].Process.Kill()
	<-c.exited[i]
	c.exited[i] <- nil // for the cleanup's wait
}

// StartEtcdCluster starts an n-member etcd cluster (the etcd binary) with
// short ticks, stopped when the test ends, and waits until every member
// answers.
func StartEtcdCluster(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	c := &EtcdCluster{}
	var peers, initial []string
	for i := range n {
		c.Endpoints = append(c.Endpoints, FreeURL(t))
		peers = append(peers, FreeURL(t))
		initial = append(initial, fmt.Sprintf("m%d=%s", i, peers[i]))
	}
	for i := range n {
		cmd := exec.Command("etcd",
			"--name", fmt.Sprintf("m%d", i),
			"--data-dir", t.TempDir(),
			"--listen-client-urls", c.Endpoints[i], "--advertise-client-urls", c.Endpoints[i],
			"--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--heartbeat-interval", "10", "--election-timeout", "100",
			"--log-level", "error", "--logger", "zap")
		if err := cmd.Start(); err != nil {
			t.Fatalf("start etcd (deploy/install-deps.sh installs it): %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		c.members, c.exited = append(c.members, cmd), append(c.exited, exited)
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-exited
		})
	}
	for i, ep := range c.Endpoints {
		client := Client(t, ep)
		deadline := time.Now().Add(30 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := client.Get(ctx, "health-probe")
			cancel()
			if err == nil {
				break
			}
			select {
			case err := <-c.exited[i]:
				t.Fatalf("etcd member %d exited: %v", i, err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("etcd at %s did not answer within 30s: %v", ep, err)
			}
		}
	}
	return c
}

// Client is a client of the etcd at endpoint, closed when the test ends.
func Client(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// FreeURL returns a loopback URL on a port the OS just handed out.
func FreeURL(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprintf("http://%s", l.Addr())
}
