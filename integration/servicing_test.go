package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
)

// cluster is one osvc-server with one agent of site PS1, as processes.
type cluster struct {
	addr       string
	dataDir    string
	serverArgs []string
	server     *proc
	agent      *proc

	// sites are the sites created with osvcctl.
	sites map[string]bool

	images   osvcv1.ImageServiceClient
	updates  osvcv1.UpdateServiceClient
	svc      osvcv1.ServicingServiceClient
	agents   osvcv1.AgentServiceClient
	contents osvcv1.ContentServiceClient
}

func startCluster(t *testing.T, serverArgs ...string) *cluster {
	t.Helper()
	c := newCluster(t, serverArgs...)
	c.agent = c.startAgent(t, "agent-ps1")
	return c
}

// newCluster starts osvc-server alone, with extra flags, and creates site
// PS1 with osvcctl, as an administrator does before anything else.
func newCluster(t *testing.T, serverArgs ...string) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{addr: freeAddr(t), dataDir: filepath.Join(dir, "server"), serverArgs: serverArgs, sites: map[string]bool{}}
	c.startServer(t)
	eventually(t, 60*time.Second, "osvc-server to make its certificate authority", func() bool {
		select {
		case <-c.server.done:
			t.Fatalf("osvc-server exited: %v\n%s", c.server.err, c.server.log.String())
		default:
		}
		// The admin token is written after the authority, once etcd runs.
		_, err := os.Stat(c.adminTokenFile())
		return err == nil
	})
	c.connect(t, c.adminToken(t))
	c.createSite(t, "PS1")
	return c
}

// connect makes the cluster's clients, calling with token, and waits until
// the server serves.
func (c *cluster) connect(t *testing.T, token string) {
	t.Helper()
	cc := dialToken(t, c.addr, c.caFile(), token)
	c.images = osvcv1.NewImageServiceClient(cc)
	c.updates = osvcv1.NewUpdateServiceClient(cc)
	c.svc = osvcv1.NewServicingServiceClient(cc)
	c.agents = osvcv1.NewAgentServiceClient(cc)
	c.contents = osvcv1.NewContentServiceClient(cc)
	waitServing(t, cc, c.server)
}

// createSite creates site code with osvcctl, once per cluster.
func (c *cluster) createSite(t *testing.T, code string) {
	t.Helper()
	if c.sites[code] {
		return
	}
	if out := c.osvcctl(t, "site", "create", code, "--description", "site "+code); !strings.Contains(out, "created sites/"+code) {
		t.Fatalf("osvcctl site create %s printed %q", code, out)
	}
	c.sites[code] = true
}

// caFile is the authority the server makes in its data directory, which
// its clients trust.
func (c *cluster) caFile() string { return filepath.Join(c.dataDir, "pki", pki.CACertFile) }

// adminTokenFile is the first admin token the server writes at first start.
func (c *cluster) adminTokenFile() string { return filepath.Join(c.dataDir, "admin.token") }

func (c *cluster) adminToken(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(c.adminTokenFile())
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// agentArgs are the flags of an agent of site PS1 named name keeping its
// data in dir: with a new single-use join token while dir holds no
// identity yet, as an administrator enrolls one.
func (c *cluster) agentArgs(t *testing.T, name, dir string) []string {
	t.Helper()
	return c.agentArgsAt(t, name, dir, "PS1")
}

// agentArgsAt are agentArgs for an agent of site.
func (c *cluster) agentArgsAt(t *testing.T, name, dir, site string) []string {
	t.Helper()
	args := []string{"--server", c.addr, "--ca-file", c.caFile(), "--name", name, "--data-dir", dir, "--log-level", "debug"}
	if _, err := os.Stat(filepath.Join(dir, "identity", "agent.pem")); err == nil {
		return args
	}
	resp, err := c.agents.CreateJoinToken(context.Background(), &osvcv1.CreateJoinTokenRequest{Site: site})
	if err != nil {
		t.Fatalf("join token for %s: %v", name, err)
	}
	file := filepath.Join(t.TempDir(), "join.token")
	if err := os.WriteFile(file, []byte(resp.GetToken()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return append(args, "--join-token-file", file)
}

func (c *cluster) startServer(t *testing.T) {
	t.Helper()
	args := append([]string{"--data-dir", c.dataDir, "--listen", c.addr, "--log-level", "debug"}, c.serverArgs...)
	c.server = start(t, "osvc-server", args...)
}

// startAgent starts an agent of site PS1 and waits until it is connected.
func (c *cluster) startAgent(t *testing.T, name string) *proc {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	p := start(t, "osvc-agent", c.agentArgs(t, name, dir)...)
	p.dir = dir
	c.waitAgent(t, name, osvcv1.AgentState_AGENT_STATE_CONNECTED, time.Time{})
	return p
}

// waitAgent waits until agents/NAME is in state and was last seen after since.
func (c *cluster) waitAgent(t *testing.T, name string, state osvcv1.AgentState, since time.Time) {
	t.Helper()
	eventually(t, 60*time.Second, name+" to be "+state.String(), func() bool {
		resp, err := c.agents.ListAgents(context.Background(), &osvcv1.ListAgentsRequest{})
		if err != nil {
			return false
		}
		for _, a := range resp.GetAgents() {
			if a.GetName() == "agents/"+name && a.GetState() == state && a.GetLastSeenTime().AsTime().After(since) {
				return true
			}
		}
		return false
	})
}

// importSample uploads the sample WIM and updates and records them in the catalog.
func (c *cluster) importSample(t *testing.T, s *sampledata.Sample) (*osvcv1.Image, []*osvcv1.Update) {
	t.Helper()
	ctx := context.Background()
	wim, err := transfer.Upload(ctx, c.contents, s.WIM, "application/x-ms-wim", nil)
	if err != nil {
		t.Fatalf("upload %s: %v", s.WIM, err)
	}
	img, err := c.images.ImportImage(ctx, &osvcv1.ImportImageRequest{
		ImageId: "win11-ent", DisplayName: "Windows 11 Enterprise", Site: "PS1",
		Kind: osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE, ContentSha256: wim.GetSha256(),
	})
	if err != nil {
		t.Fatalf("import image: %v", err)
	}
	updates := c.importUpdates(t, s)
	// The image is serviced once an agent inspected it.
	return c.inspected(t, img.GetImage().GetName(), img.GetInspectionRun()), updates
}

// importUpdates uploads the sample's updates and records them in the catalog.
func (c *cluster) importUpdates(t *testing.T, s *sampledata.Sample) []*osvcv1.Update {
	t.Helper()
	ctx := context.Background()
	var files []*osvcv1.UpdateFile
	for _, u := range s.Updates {
		content, err := transfer.Upload(ctx, c.contents, u.File, "application/vnd.ms-cab-compressed", nil)
		if err != nil {
			t.Fatalf("upload %s: %v", u.File, err)
		}
		files = append(files, &osvcv1.UpdateFile{FileName: filepath.Base(u.File), Sha256: content.GetSha256(), SizeBytes: content.GetSizeBytes()})
	}
	ups, err := c.updates.ImportUpdates(ctx, &osvcv1.ImportUpdatesRequest{Files: files})
	if err != nil {
		t.Fatalf("import updates: %v", err)
	}
	if len(ups.GetUpdates()) != len(s.Updates) {
		t.Fatalf("imported %d updates, want %d", len(ups.GetUpdates()), len(s.Updates))
	}
	return ups.GetUpdates()
}

// inspected waits for the inspection run of an image's version 1 to end,
// checks it succeeded, and returns the image.
func (c *cluster) inspected(t *testing.T, image, run string) *osvcv1.Image {
	t.Helper()
	inspection, _ := c.watch(t, run)
	if inspection.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || inspection.GetKind() != osvcv1.RunKind_RUN_KIND_INSPECTION {
		t.Fatalf("inspection %s ended %s: %s", inspection.GetName(), inspection.GetState(), inspection.GetError())
	}
	got := c.image(t, image)
	if v := got.GetVersions()[0]; v.GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_INSPECTED {
		t.Fatalf("version 1 inspection %s after its run succeeded", v.GetInspection())
	}
	return got
}

// watch follows a run until it ends and returns its last snapshot and all log lines.
func (c *cluster) watch(t *testing.T, run string) (*osvcv1.Run, []*osvcv1.LogLine) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stream, err := c.svc.WatchRun(ctx, &osvcv1.WatchRunRequest{Name: run})
	if err != nil {
		t.Fatalf("watch %s: %v", run, err)
	}
	var last *osvcv1.Run
	var lines []*osvcv1.LogLine
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("watch %s: %v (last state %v)", run, err, last.GetState())
		}
		last = resp.GetRun()
		lines = append(lines, resp.GetLogLines()...)
	}
	if last == nil {
		t.Fatalf("watch %s sent nothing", run)
	}
	return last, lines
}

// logFiles reads a run's log files from the content library, as the run
// names them (ContentService.Read), by name; it checks each is the blob and
// size the run records.
func (c *cluster) logFiles(t *testing.T, run *osvcv1.Run) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, a := range run.GetArtifacts() {
		dst := filepath.Join(t.TempDir(), a.GetName())
		if err := transfer.Download(context.Background(), c.contents, a.GetSha256(), dst, nil); err != nil {
			t.Fatalf("download %s of %s: %v", a.GetName(), run.GetName(), err)
		}
		data, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(data)) != a.GetSizeBytes() || a.GetMediaType() != "text/plain" {
			t.Errorf("%s: %d bytes of %s, the run records %d bytes of %s", a.GetName(), len(data), a.GetMediaType(), a.GetSizeBytes(), a.GetMediaType())
		}
		files[a.GetName()] = string(data)
	}
	return files
}

// agentLogFile reads a log file the agent keeps in a run's work folder on drive.
func agentLogFile(t *testing.T, drive, run, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(drive, "OfflineImageServicing", strings.TrimPrefix(run, "runs/"), name))
	if err != nil {
		t.Fatalf("the agent's %s of %s: %v", name, run, err)
	}
	return string(data)
}

// checkLogFiles checks that the run has both log files, that each holds
// what the agent wrote in the run's work folder on drive (the run's own log
// as it was at its upload: it goes on a few lines after), and that each
// says what want lists for it.
func (c *cluster) checkLogFiles(t *testing.T, run *osvcv1.Run, drive string, want map[string][]string) {
	t.Helper()
	files := c.logFiles(t, run)
	if len(files) != 2 || len(run.GetArtifacts()) != 2 {
		t.Fatalf("%s has log files %v, want dism.log and OfflineServicingMgr.log", run.GetName(), run.GetArtifacts())
	}
	for name, text := range files {
		onAgent := agentLogFile(t, drive, run.GetName(), name)
		if !strings.HasPrefix(onAgent, text) || text == "" {
			t.Errorf("%s: the uploaded %d bytes are not the start of the agent's file (%d bytes)", name, len(text), len(onAgent))
		}
		for _, w := range want[name] {
			if !strings.Contains(text, w) {
				t.Errorf("%s lacks %q:\n%s", name, w, text)
			}
		}
	}
}

// wimlib runs wimlib-imagex and returns its output.
func wimlib(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("wimlib-imagex", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("wimlib-imagex %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// logged tells whether a log line contains text.
func logged(lines []*osvcv1.LogLine, text string) bool {
	for _, l := range lines {
		if strings.Contains(l.GetMessage(), text) {
			return true
		}
	}
	return false
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestServicingEndToEnd runs the demo flow through the real binaries: import a
// sample image and its updates, schedule every update, let the agent service
// the image, and check the result in the serviced WIM itself.
func TestServicingEndToEnd(t *testing.T) {
	ctx := context.Background()
	metricsAddr := freeAddr(t)
	c := startCluster(t, "--metrics-listen", metricsAddr)
	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	sourceSHA := fileSHA256(t, sample.WIM)
	img, updates := c.importSample(t, sample)

	// The site's drive reaches the agent with the run: the agent, started
	// without --drive, services there.
	drive := t.TempDir()
	c.osvcctl(t, "site", "update", "PS1", "--drive", drive)

	wantByKB := map[string]osvcv1.UpdateState{}
	var names []string
	for i, u := range updates {
		wantByKB[u.GetKb()] = sample.Updates[i].Want
		names = append(names, u.GetName())
	}

	// Every update, the not-applicable one included, so each result kind shows.
	created, err := c.svc.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{
		Parent: img.GetName(),
		Schedule: &osvcv1.Schedule{
			Updates:          names,
			ContinueOnError:  true,
			RemoveSuperseded: true,
		},
	})
	if err != nil {
		t.Fatalf("create schedule: %v", err)
	}
	run, lines := c.watch(t, created.GetRun().GetName())
	if run.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run ended %v: %s", run.GetState(), run.GetError())
	}

	t.Run("each update has the expected result", func(t *testing.T) {
		if len(run.GetUpdateResults()) != len(updates) {
			t.Fatalf("got %d update results, want %d", len(run.GetUpdateResults()), len(updates))
		}
		for _, r := range run.GetUpdateResults() {
			if want := wantByKB[r.GetKb()]; r.GetState() != want {
				t.Errorf("%s: got %v, want %v (%s)", r.GetKb(), r.GetState(), want, r.GetMessage())
			}
		}
	})

	t.Run("the metrics count the run, its updates and what crossed", func(t *testing.T) {
		want := []string{
			`osvc_agents_connected{site="PS1"} 1`,
			`osvc_runs{kind="SERVICING",state="SUCCEEDED"} 1`,
			`osvc_updates_total{result="APPLIED"} 4`,
			`osvc_updates_total{result="UNSUPPORTED"} 1`,
			// Both APPLY passes: before cleanup and the .NET update after it.
			`osvc_step_duration_seconds_count{step="APPLY"} 2`,
			`osvc_run_duration_seconds_count{kind="SERVICING",result="SUCCEEDED"} 1`,
		}
		var body string
		// The elected replica follows the runs through a watch.
		eventually(t, 30*time.Second, "the metrics to show the run", func() bool {
			body = scrape(t, "http://"+metricsAddr+"/metrics")
			return strings.Contains(body, want[1])
		})
		for _, w := range want {
			if !strings.Contains(body, w) {
				t.Errorf("/metrics lacks %s", w)
			}
		}
		// The uploads came over gRPC; the agent beside the server took
		// the blobs by link, so nothing may have gone out.
		for _, prefix := range []string{`osvc_content_bytes_total{direction="in"} `, `osvc_etcd_request_duration_seconds_count{method="Txn",outcome="ok"} `} {
			if v := metricValue(body, prefix); v <= 0 {
				t.Errorf("%s= %v, want more than 0", prefix, v)
			}
		}
		if v := metricValue(body, `osvc_content_bytes_total{direction="out"} `); v < 0 {
			t.Error("/metrics lacks the content bytes sent")
		}
	})

	t.Run("the run keeps both APPLY passes, the bytes each image step moved and what each update took", func(t *testing.T) {
		var applies int
		moved := map[osvcv1.Step]*osvcv1.StepRecord{}
		for _, s := range run.GetSteps() {
			if s.GetStep() == osvcv1.Step_STEP_APPLY {
				applies++
			}
			if s.GetBytesTotal() > 0 {
				moved[s.GetStep()] = s
			}
		}
		if applies != 2 {
			t.Errorf("%d APPLY records, want 2 (the .NET update after cleanup has its own): %v", applies, run.GetSteps())
		}
		for _, st := range []osvcv1.Step{osvcv1.Step_STEP_COPY, osvcv1.Step_STEP_EXPORT, osvcv1.Step_STEP_SWAP} {
			if s := moved[st]; s == nil || s.GetBytesDone() != s.GetBytesTotal() {
				t.Errorf("%s moved %d of %d bytes, want all of a known total", st, s.GetBytesDone(), s.GetBytesTotal())
			}
		}
		for _, u := range run.GetUpdateResults() {
			if u.GetStartTime() == nil || u.GetEndTime() == nil || u.GetEndTime().AsTime().Before(u.GetStartTime().AsTime()) {
				t.Errorf("%s ran from %v to %v", u.GetKb(), u.GetStartTime(), u.GetEndTime())
			}
		}
		out, err := c.osvcctlCmd("run", "get", run.GetName()).Output()
		if err != nil {
			t.Fatalf("osvcctl run get: %v", err)
		}
		if n := strings.Count(string(out), "│ APPLY "); n != 2 {
			t.Errorf("osvcctl run get shows %d APPLY rows, want 2:\n%s", n, out)
		}
	})

	t.Run("the engine's command lines are debug lines", func(t *testing.T) {
		for _, l := range lines {
			if strings.Contains(l.GetMessage(), "wimlib: running command=") && l.GetLevel() != "DEBUG" {
				t.Errorf("%s line %q: want DEBUG, so that run watch hides it at info", l.GetLevel(), l.GetMessage())
			}
		}
		if !logged(lines, "wimlib: running command=") {
			t.Error("no command line reached the run's log, for run watch --log-level debug")
		}
	})

	t.Run("the run log says which binary is not supported", func(t *testing.T) {
		found := false
		for _, l := range lines {
			if strings.Contains(l.GetMessage(), "Not applying this update binary, it is not supported") {
				found = true
			}
		}
		if !found {
			t.Errorf("no log line says an update binary is not supported among %d lines", len(lines))
		}
		for i, l := range lines {
			if l.GetSequence() != int64(i+1) {
				t.Fatalf("log line %d has sequence %d: lines must arrive once each, in order", i+1, l.GetSequence())
			}
		}
	})

	got, err := c.images.GetImage(ctx, &osvcv1.GetImageRequest{Name: img.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	image := got.GetImage()
	if image.GetCurrentVersion() != 2 {
		t.Fatalf("current version %d after servicing, want 2", image.GetCurrentVersion())
	}
	var current, previous *osvcv1.ImageVersion
	for _, v := range image.GetVersions() {
		switch v.GetVersion() {
		case 2:
			current = v
		case 1:
			previous = v
		}
	}
	if current == nil || previous == nil {
		t.Fatalf("versions %v: want the serviced version 2 and the previous version 1", image.GetVersions())
	}

	t.Run("the source version is untouched", func(t *testing.T) {
		if previous.GetSha256() != sourceSHA {
			t.Fatalf("version 1 is %s, the imported file is %s", previous.GetSha256(), sourceSHA)
		}
		dst := filepath.Join(t.TempDir(), "v1.wim")
		if err := transfer.Download(ctx, c.contents, previous.GetSha256(), dst, nil); err != nil {
			t.Fatal(err)
		}
		if sum := fileSHA256(t, dst); sum != sourceSHA {
			t.Fatalf("version 1 now hashes to %s, want %s", sum, sourceSHA)
		}
		// The agent shares the library's volume here: its cache took the
		// library's file, and the run a copy of the cached one; the commit
		// into the copy must touch neither.
		if sum := fileSHA256(t, filepath.Join(c.dataDir, "content", sourceSHA[:2], sourceSHA)); sum != sourceSHA {
			t.Fatalf("the library's file of version 1 now hashes to %s, want %s", sum, sourceSHA)
		}
		if sum := fileSHA256(t, filepath.Join(c.agent.dir, "cache", sourceSHA)); sum != sourceSHA {
			t.Fatalf("the agent's cached file of version 1 now hashes to %s, want %s", sum, sourceSHA)
		}
		if !logged(lines, "fetched through the agent's cache, copied from there") {
			t.Errorf("no log line says the run copied the source out of the agent's cache: the test no longer covers that copy")
		}
	})

	serviced := filepath.Join(t.TempDir(), "serviced.wim")
	if err := transfer.Download(ctx, c.contents, current.GetSha256(), serviced, nil); err != nil {
		t.Fatal(err)
	}

	t.Run("the serviced WIM holds the applied packages", func(t *testing.T) {
		extract := t.TempDir()
		wimlib(t, "extract", serviced, "1", "/Windows/servicing/Sessions/Sessions.xml", "--dest-dir="+extract, "--no-acls")
		sessions, err := os.ReadFile(filepath.Join(extract, "Sessions.xml"))
		if err != nil {
			t.Fatal(err)
		}
		listing := wimlib(t, "dir", serviced, "1")
		for i, u := range updates {
			applied := sample.Updates[i].Want == osvcv1.UpdateState_UPDATE_STATE_APPLIED
			if got := strings.Contains(string(sessions), u.GetPackageIdentity()) && u.GetPackageIdentity() != ""; got != applied {
				t.Errorf("%s (%s): recorded in Sessions.xml = %v, want %v", u.GetKb(), u.GetPackageIdentity(), got, applied)
			}
			if applied && !strings.Contains(listing, "/Windows/servicing/Packages/"+u.GetPackageIdentity()+".mum") {
				t.Errorf("%s: /Windows/servicing/Packages/%s.mum is missing from the serviced image", u.GetKb(), u.GetPackageIdentity())
			}
		}
	})

	t.Run("cleanup and export made the image smaller", func(t *testing.T) {
		st, err := os.Stat(serviced)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() != current.GetSizeBytes() {
			t.Errorf("downloaded %d bytes, version 2 says %d", st.Size(), current.GetSizeBytes())
		}
		if st.Size() >= previous.GetSizeBytes() {
			t.Errorf("serviced image is %d bytes, source %d: removing superseded components should shrink it", st.Size(), previous.GetSizeBytes())
		}
	})

	t.Run("the catalog shows the installed updates", func(t *testing.T) {
		installed := map[string]bool{}
		for _, idx := range image.GetIndexes() {
			for _, u := range idx.GetInstalledUpdates() {
				installed[u.GetPackageIdentity()] = true
			}
		}
		for i, u := range updates {
			if sample.Updates[i].Want == osvcv1.UpdateState_UPDATE_STATE_APPLIED && !installed[u.GetPackageIdentity()] {
				t.Errorf("%s is not listed as installed in %s", u.GetKb(), image.GetName())
			}
		}
	})

	t.Run("the run's log files hold what the agent wrote", func(t *testing.T) {
		c.checkLogFiles(t, run, drive, map[string][]string{
			"OfflineServicingMgr.log": {"run: offline servicing drive: drive=" + drive, `why="the site's offline servicing drive ` + drive + `"`,
				"run: step started: step=DRIVE", "run: step done: step=APPLY", "Not applying this update binary, it is not supported",
				"run: run succeeded", "run: log file uploaded: file=dism.log"},
			"dism.log": {"wimlib: running: command=", " verify ", " mountrw ", " unmount ", " export ", "wimlib: package installed", "wimlib: command ended: command=unmount exit_code=0"},
		})
	})

	t.Run("osvcctl prints the run's log lines and log files", func(t *testing.T) {
		osvcctl := func(args ...string) string {
			t.Helper()
			out, err := c.osvcctlCmd(args...).Output()
			if err != nil {
				t.Fatalf("osvcctl %s: %v", strings.Join(args, " "), err)
			}
			return string(out)
		}
		if got := strings.Count(osvcctl("run", "logs", run.GetName()), "\n"); got != len(lines) {
			t.Errorf("osvcctl run logs printed %d lines, the run streamed %d", got, len(lines))
		}
		files := c.logFiles(t, run)
		for _, name := range []string{"dism.log", "OfflineServicingMgr.log"} {
			if got := osvcctl("run", "logs", run.GetName(), "--file", name); got != files[name] {
				t.Errorf("osvcctl run logs --file %s printed %d bytes, the run's file has %d", name, len(got), len(files[name]))
			}
		}
	})

	t.Run("osvcctl lists the run as an administrator sees it", func(t *testing.T) {
		out, err := c.osvcctlCmd("run", "list", "-o", "json").CombinedOutput()
		if err != nil {
			t.Fatalf("osvcctl run list: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), run.GetName()) || !strings.Contains(string(out), "RUN_STATE_SUCCEEDED") {
			t.Errorf("osvcctl run list -o json does not show %s as succeeded:\n%s", run.GetName(), out)
		}
	})

	t.Run("the agent reconnects after the server restarts", func(t *testing.T) {
		c.server.stop(t)
		restarted := time.Now()
		c.startServer(t)
		c.waitAgent(t, "agent-ps1", osvcv1.AgentState_AGENT_STATE_CONNECTED, restarted)
		again, err := c.images.GetImage(ctx, &osvcv1.GetImageRequest{Name: img.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		if again.GetImage().GetCurrentVersion() != 2 {
			t.Fatalf("after a restart the image is at version %d, want 2", again.GetImage().GetCurrentVersion())
		}
	})
}

// scrape reads a Prometheus text page.
func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// metricValue is the value of the sample line starting with prefix, -1
// when there is none.
func metricValue(body, prefix string) float64 {
	for line := range strings.Lines(body) {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}
