package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
	"github.com/osvc/osvc/server/content/s3store/s3test"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

// sharedArgs are the flags of servers on the etcd at endpoints and one S3
// bucket that this starts: what replicas share.
func sharedArgs(t *testing.T, endpoints string) []string {
	t.Helper()
	ctx := context.Background()
	s3, err := s3test.Start(ctx, t.TempDir(), s3test.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s3.Close)
	if err := s3.MakeBucket(ctx, "osvc"); err != nil {
		t.Fatal(err)
	}
	st, err := s3.StoreConfig(t.TempDir(), "osvc")
	if err != nil {
		t.Fatal(err)
	}
	return []string{
		"--etcd-endpoints", endpoints,
		"--s3-endpoint", st.Endpoint, "--s3-bucket", st.Bucket, "--s3-prefix", "library/", "--s3-path-style",
		"--s3-access-key-id", st.AccessKeyID, "--s3-secret-key-file", st.SecretKeyFile,
	}
}

// startAgentOf starts agent name with --server listing servers.
func (c *cluster) startAgentOf(t *testing.T, name string, servers ...string) *proc {
	t.Helper()
	dir := t.TempDir()
	args := c.agentArgs(t, name, dir)
	for i, a := range args {
		if a == "--server" {
			args[i+1] = strings.Join(servers, ",")
		}
	}
	p := start(t, "osvc-agent", args...)
	p.dir = dir
	c.waitAgent(t, name, osvcv1.AgentState_AGENT_STATE_CONNECTED, time.Time{})
	return p
}

// presenceServer is the replica that holds agent's stream, as its
// presence in etcd says, and whether that stream is open.
func presenceServer(t *testing.T, etcd *clientv3.Client, agent string) (server string, open bool) {
	t.Helper()
	resp, err := etcd.Get(context.Background(), "/osvc/presence/"+agent)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", false
	}
	p, err := store.Unmarshal[*storev1.AgentPresence](resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return p.GetServer(), !p.GetStreamClosed()
}

// scheduleAllUpdates schedules every update for img and returns the run's name.
func (c *cluster) scheduleAllUpdates(t *testing.T, img *osvcv1.Image, updates []*osvcv1.Update) string {
	t.Helper()
	var names []string
	for _, u := range updates {
		names = append(names, u.GetName())
	}
	created, err := c.svc.CreateSchedule(context.Background(), &osvcv1.CreateScheduleRequest{
		Parent: img.GetName(), Schedule: &osvcv1.Schedule{Updates: names, ContinueOnError: true},
	})
	if err != nil {
		t.Fatalf("create schedule: %v", err)
	}
	return created.GetRun().GetName()
}

// waitInProcess waits until run is IN_PROCESS: its agent is at work.
func (c *cluster) waitInProcess(t *testing.T, run string) {
	t.Helper()
	eventually(t, 2*time.Minute, run+" to be in process", func() bool {
		r, err := c.svc.GetRun(context.Background(), &osvcv1.GetRunRequest{Name: run})
		return err == nil && r.GetRun().GetState() == osvcv1.RunState_RUN_STATE_IN_PROCESS
	})
}

// TestAReplicaKilledDuringARunHandsItsAgentToTheOther runs two replicas on
// one etcd and one bucket and an agent that knows both; the replica
// holding the agent's stream is killed (SIGKILL) during a run. The agent
// moves to the other, keeps its session and run, and the run succeeds
// once: one new version, no second swap.
func TestAReplicaKilledDuringARunHandsItsAgentToTheOther(t *testing.T) {
	ctx := context.Background()
	endpoint := storetest.StartEtcdProcess(t)
	args := sharedArgs(t, endpoint)
	first := newCluster(t, args...)
	second := newReplica(t, first, args...)
	first.agent = first.startAgentOf(t, "agent-ps1", first.addr, second.addr)
	etcd := storetest.Client(t, endpoint)

	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	img, updates := first.importSample(t, sample)
	run := first.scheduleAllUpdates(t, img, updates)
	first.waitInProcess(t, run)

	holder, _ := presenceServer(t, etcd, "agent-ps1")
	victim, survivor := first, second
	if strings.HasSuffix(holder, "/"+second.addr) {
		victim, survivor = second, first
	}
	killed := time.Now()
	if err := victim.server.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-victim.server.done
	eventually(t, 2*time.Minute, "the agent's stream on the surviving replica", func() bool {
		server, open := presenceServer(t, etcd, "agent-ps1")
		return open && strings.HasSuffix(server, "/"+survivor.addr)
	})
	t.Logf("failover: the agent's stream was open on the other replica %s after the kill", time.Since(killed).Round(time.Millisecond))

	ended, _ := survivor.watch(t, run)
	if ended.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run ended %s: %s", ended.GetState(), ended.GetError())
	}
	got, err := survivor.images.GetImage(ctx, &osvcv1.GetImageRequest{Name: img.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(got.GetImage().GetVersions()); n != 2 {
		t.Errorf("the image has %d versions after one run, want 2 (the source and one result): %v", n, got.GetImage().GetVersions())
	}
	t.Logf("the run took %d attempt(s)", ended.GetAttempt())
}

// TestAnEtcdMemberKilledDuringARunLosesNothing runs a server on a
// three-member etcd cluster and kills the leader (SIGKILL) while a run is
// in process: the run succeeds, with every log line of its agent stored
// once and in order.
func TestAnEtcdMemberKilledDuringARunLosesNothing(t *testing.T) {
	ctx := context.Background()
	etcd := storetest.StartEtcdCluster(t, 3)
	c := newCluster(t, sharedArgs(t, strings.Join(etcd.Endpoints, ","))...)
	c.agent = c.startAgent(t, "agent-ps1")
	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	img, updates := c.importSample(t, sample)
	run := c.scheduleAllUpdates(t, img, updates)
	c.waitInProcess(t, run)

	leader := -1
	for i, ep := range etcd.Endpoints {
		st, err := storetest.Client(t, ep).Status(ctx, ep)
		if err == nil && st.Leader == st.Header.GetMemberId() {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no etcd member says it leads")
	}
	etcd.Kill(leader)

	ended, lines := c.watch(t, run)
	if ended.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run ended %s: %s", ended.GetState(), ended.GetError())
	}
	for i, l := range lines {
		if l.GetSequence() != int64(i+1) {
			t.Fatalf("log line %d has sequence %d: lines were lost or stored twice", i+1, l.GetSequence())
		}
	}
	if int64(len(lines)) != ended.GetLogLineCount() || len(lines) == 0 {
		t.Errorf("%d log lines read, the run counts %d", len(lines), ended.GetLogLineCount())
	}
	got, err := c.images.GetImage(ctx, &osvcv1.GetImageRequest{Name: img.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(got.GetImage().GetVersions()); n != 2 {
		t.Errorf("the image has %d versions after one run, want 2", n)
	}
}

// TestTheThreeNodeExampleChecksFailoverAndABackup runs the README's
// three-node example in its check mode with the binaries under test.
func TestTheThreeNodeExampleChecksFailoverAndABackup(t *testing.T) {
	cmd := exec.Command(filepath.Join("..", "deploy", "three-node", "local.sh"), "check")
	cmd.Env = append(os.Environ(), "OSVC_THREE_NODE_DIR="+t.TempDir(), "OSVC_BIN_DIR="+binDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("local.sh check: %v\n%s", err, out)
	}
	for _, want := range []string{"replica 1 killed; osvcctl answered through another replica", "restored into a new etcd holds sites/PS1"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("local.sh check printed no %q:\n%s", want, out)
		}
	}
}
