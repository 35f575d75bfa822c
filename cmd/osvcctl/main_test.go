package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/pki"
)

// osvcctl runs the CLI against addr and returns what it printed.
func osvcctl(t *testing.T, addr string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	full := append([]string{"--server", addr, "--timeout", "30s", "--ca-file", testCAFile(t)}, args...)
	err = run(t.Context(), full, &out, &errOut)
	return out.String(), errOut.String(), err
}

// mustRun runs the CLI and fails the test if it fails.
func mustRun(t *testing.T, addr string, args ...string) string {
	t.Helper()
	stdout, stderr, err := osvcctl(t, addr, args...)
	if err != nil {
		t.Fatalf("osvcctl %s: %v\nstderr:\n%s", strings.Join(args, " "), err, stderr)
	}
	return stdout
}

// assertContainsInOrder checks that every part appears in s, each after the previous.
func assertContainsInOrder(t *testing.T, s string, parts ...string) {
	t.Helper()
	rest := s
	for _, p := range parts {
		i := strings.Index(rest, p)
		if i < 0 {
			t.Fatalf("output lacks %q (in this order)\noutput:\n%s", p, s)
		}
		rest = rest[i+len(p):]
	}
}

func TestImageListFollowsEveryPageIntoOneTable(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "image", "list")
	assertContainsInOrder(t, out, "NAME", "SITE", "images/server-2022", "PS2", "images/win11-23h2", "Windows 11 23H2", "PS1", "3.0 GiB", "SUCCEEDED", "runs/r-1")
	if got := len(requestsOf[*osvcv1.ListImagesRequest](f)); got != 2 {
		t.Errorf("ListImages called %d times, want 2 (one per page)", got)
	}
}

func TestImageListSendsTheSiteFilter(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "image", "list", "--site", "PS1")
	if strings.Contains(out, "server-2022") || !strings.Contains(out, "win11-23h2") {
		t.Errorf("image list --site PS1 printed:\n%s\nwant only images/win11-23h2", out)
	}
	if reqs := requestsOf[*osvcv1.ListImagesRequest](f); len(reqs) == 0 || reqs[0].GetSite() != "PS1" {
		t.Errorf("ListImages requests %v, want site PS1", reqs)
	}
}

func TestJSONOutputIsOneStableDocumentOfTheResponse(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	tests := []struct {
		name  string
		args  []string
		into  proto.Message
		check func(t *testing.T, m proto.Message)
	}{
		{
			name: "image list gathers every page into one response",
			args: []string{"image", "list", "-o", "json"},
			into: &osvcv1.ListImagesResponse{},
			check: func(t *testing.T, m proto.Message) {
				resp := m.(*osvcv1.ListImagesResponse)
				if len(resp.GetImages()) != 2 || resp.GetNextPageToken() != "" {
					t.Errorf("got %d images, next token %q; want 2 images and no token", len(resp.GetImages()), resp.GetNextPageToken())
				}
			},
		},
		{
			name: "image get prints the GetImageResponse",
			args: []string{"image", "get", "win11-23h2", "--output", "json"},
			into: &osvcv1.GetImageResponse{},
			check: func(t *testing.T, m proto.Message) {
				if !proto.Equal(m.(*osvcv1.GetImageResponse).GetImage(), cannedImages[1]) {
					t.Errorf("image = %v, want %v", m, cannedImages[1])
				}
			},
		},
		{
			name: "update list gathers every page",
			args: []string{"update", "list", "-o", "json"},
			into: &osvcv1.ListUpdatesResponse{},
			check: func(t *testing.T, m proto.Message) {
				if got := len(m.(*osvcv1.ListUpdatesResponse).GetUpdates()); got != len(cannedUpdates) {
					t.Errorf("got %d updates, want %d", got, len(cannedUpdates))
				}
			},
		},
		{
			name: "site list gathers every page",
			args: []string{"site", "list", "-o", "json"},
			into: &osvcv1.ListSitesResponse{},
			check: func(t *testing.T, m proto.Message) {
				if !proto.Equal(m, &osvcv1.ListSitesResponse{Sites: cannedSites}) {
					t.Errorf("sites = %v, want %v", m, cannedSites)
				}
			},
		},
		{
			name: "site get prints the GetSiteResponse",
			args: []string{"site", "get", "PS1", "-o", "json"},
			into: &osvcv1.GetSiteResponse{},
			check: func(t *testing.T, m proto.Message) {
				if !proto.Equal(m.(*osvcv1.GetSiteResponse).GetSite(), cannedSites[1]) {
					t.Errorf("site = %v, want %v", m, cannedSites[1])
				}
			},
		},
		{
			name: "agent list prints the ListAgentsResponse",
			args: []string{"agent", "list", "-o", "json"},
			into: &osvcv1.ListAgentsResponse{},
			check: func(t *testing.T, m proto.Message) {
				if !proto.Equal(m, &osvcv1.ListAgentsResponse{Agents: cannedAgents}) {
					t.Errorf("agents = %v, want %v", m, cannedAgents)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			first := mustRun(t, f.addr, tt.args...)
			if err := protojson.Unmarshal([]byte(first), tt.into); err != nil {
				t.Fatalf("output is not one JSON document of %T: %v\n%s", tt.into, err, first)
			}
			tt.check(t, tt.into)
			if again := mustRun(t, f.addr, tt.args...); again != first {
				t.Errorf("JSON output differs between two runs:\n%s\n---\n%s", first, again)
			}
		})
	}
}

func TestImageGetShowsIndexesInstalledUpdatesAndVersions(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "image", "get", "images/win11-23h2")
	assertContainsInOrder(t, out,
		"Indexes:", "Windows 11 Enterprise", "Enterprise", "x64", "10.0.22631.2428", "16 GiB", "Windows 11 Pro",
		"Installed updates:", "KB5031354", "Package_for_RollupFix~31bf3856ad364e35~amd64~~22631.2428.1.0", "Installed",
		"Versions:", "0123456789ab", "4.0 GiB", "2 (current)", "fedcba987654", "3.0 GiB", "runs/r-1")
}

func TestNamesAcceptTheIDOrTheFullName(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"an image ID becomes images/ID", []string{"image", "get", "win11-23h2"}, "images/win11-23h2"},
		{"an image name is kept", []string{"image", "get", "images/win11-23h2"}, "images/win11-23h2"},
		{"a run ID becomes runs/ID", []string{"run", "get", "r-1"}, "runs/r-1"},
		{"a run name is kept", []string{"run", "get", "runs/r-1"}, "runs/r-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out := mustRun(t, f.addr, tt.args...)
			if !strings.Contains(out, tt.want) {
				t.Errorf("output lacks %s:\n%s", tt.want, out)
			}
		})
	}
	var asked []string
	for _, r := range requestsOf[*osvcv1.GetImageRequest](f) {
		asked = append(asked, r.GetName())
	}
	for _, r := range requestsOf[*osvcv1.GetRunRequest](f) {
		asked = append(asked, r.GetName())
	}
	for _, name := range asked {
		if name != "images/win11-23h2" && name != "runs/r-1" {
			t.Errorf("server was asked for %q, want only full names", name)
		}
	}
}

func TestResourceName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, collection, arg, want, wantErr string
	}{
		{"a bare ID gets the collection", collImages, "win11", "images/win11", ""},
		{"a full name is kept", collUpdates, "updates/kb1", "updates/kb1", ""},
		{"a name of another collection is refused", collImages, "runs/r-1", "", `image name "runs/r-1": give ID or images/ID`},
		{"an empty ID is refused", collRuns, "runs/", "", "give ID or runs/ID"},
		{"a nested name is refused", collImages, "images/a/b", "", "give ID or images/ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := resourceName(tt.collection, tt.arg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("resourceName(%q) = %q, %v; want error %q", tt.arg, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("resourceName(%q) = %q, %v; want %q", tt.arg, got, err, tt.want)
			}
		})
	}
}

func TestDefaultImageIDIsTheSanitizedFileName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, path, want string
	}{
		{"the extension goes and letters are lowered", "dir/Install.WIM", "install"},
		{"runs of other characters become one dash", "Win11_23H2 (x64) .wim", "win11-23h2-x64"},
		{"a leading digit gets a letter prefix", "2022-server.wim", "image-2022-server"},
		{"long names are cut to 63 characters", strings.Repeat("a", 70) + ".wim", strings.Repeat("a", 63)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got, err := defaultImageID(tt.path); err != nil || got != tt.want {
				t.Errorf("defaultImageID(%q) = %q, %v; want %q", tt.path, got, err, tt.want)
			}
		})
	}
	if got, err := defaultImageID("___.wim"); err == nil || !strings.Contains(err.Error(), "--id") {
		t.Errorf("defaultImageID(___.wim) = %q, %v; want an error pointing at --id", got, err)
	}
}

// TestServerAddressComesFromOSVC_SERVER cannot be parallel: it sets the environment.
func TestServerAddressComesFromOSVC_SERVER(t *testing.T) {
	f := startFake(t)
	t.Setenv(serverEnv, f.addr)
	t.Setenv(pki.CAFileEnv, testCAFile(t))
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"agent", "list"}, &out, &errOut); err != nil {
		t.Fatalf("agent list with %s=%s: %v\n%s", serverEnv, f.addr, err, errOut.String())
	}
	assertContainsInOrder(t, out.String(), "agents/ps1-a", "PS1", "CONNECTED", "wimlib", "/srv 100 GiB free of 200 GiB", "runs/r-2")
}

func TestAServerCertificateFromAnotherAuthoritySaysWhatToTrust(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	other, _, err := pki.EnsureCA(filepath.Join(t.TempDir(), "pki"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, stderr, err := osvcctl(t, f.addr, "--ca-file", other.CertPath, "image", "list")
	if err == nil {
		t.Fatal("image list trusting another authority succeeded")
	}
	for _, want := range []string{"presented a certificate this client does not trust", "x509: certificate signed by unknown authority", "--ca-file"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr = %q, want it to say %q", stderr, want)
		}
	}
}

func TestBadRequestPrintsTheFieldViolations(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	_, stderr, err := osvcctl(t, f.addr, "image", "get", "Bad_Name")
	if err == nil {
		t.Fatal("image get Bad_Name succeeded, want an error")
	}
	want := "error: invalid name \"images/Bad_Name\"\n" +
		"  name: use images/ID with ID of lower-case letters, digits and '-', starting with a letter\n"
	if stderr != want {
		t.Errorf("stderr =\n%s\nwant\n%s", stderr, want)
	}
}

func TestStatusMessagesAndLocalMistakesAreRendered(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"a NotFound prints the server's message and where to look", []string{"run", "get", "r-404"}, "error: run runs/r-404 not found ('osvcctl run list' lists the runs)\n"},
		{"a missing image points at the image list", []string{"image", "get", "win10"}, "error: image images/win10 not found ('osvcctl image list' lists the images)\n"},
		{"a bad output format names the choices", []string{"image", "list", "-o", "yaml"}, `error: --output "yaml": use table or json` + "\n"},
		{"a schedule needs a choice of updates", []string{"schedule", "create", "win11"}, "error: choose the updates: give --update ID (repeatable), --all-applicable, --classification or --title; 'osvcctl update list --applicable-to win11' lists them\n"},
		{"a schedule takes listed updates or all applicable ones, not both", []string{"schedule", "create", "win11", "--all-applicable", "--update", "kb1"}, "error: give --update ID, or choose by rule (--all-applicable, --classification, --title), not both\n"},
		{"a bad start time shows the format", []string{"schedule", "create", "win11", "--all-applicable", "--start-time", "tonight"}, "give an RFC 3339 time"},
		{"a missing argument shows the usage line", []string{"image", "get"}, "error: osvcctl image get takes 1 argument(s), got 0\nusage: osvcctl image get IMAGE [flags]\n"},
		{"an unknown flag shows the usage line", []string{"run", "list", "--bogus"}, "usage: osvcctl run list [flags]\n"},
		{"a missing image file is named before any upload", []string{"image", "import", "missing.wim", "--site", "PS1"}, "error: file missing.wim does not exist\n"},
		{"a folder without sources/install.wim is no upgrade package", []string{"image", "import", ".", "--site", "PS1", "--id", "here"},
			"error: . is no OS upgrade package osvc can import: the tree has no sources/install.wim (the image it upgrades to); an OS upgrade package holds it: invalid package tree\n"},
		{"a folder is not an OS image", []string{"image", "import", ".", "--site", "PS1", "--id", "here", "--kind", "os-image"},
			"error: . is a folder: only an OS upgrade package is imported as a folder tree; use --kind os-upgrade-package, or give the WIM file alone\n"},
		{"a bad architecture lists the choices", []string{"update", "list", "--arch", "mips"}, `--arch "mips": use x86, x64, arm64 or all`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, stderr, err := osvcctl(t, f.addr, tt.args...)
			if err == nil || !strings.Contains(stderr, tt.want) {
				t.Errorf("osvcctl %s: err %v, stderr %q; want an error and %q", strings.Join(tt.args, " "), err, stderr, tt.want)
			}
		})
	}
}

func TestUnreachableServerSaysHowToPointAtIt(t *testing.T) {
	t.Parallel()
	// A port that was just free and is closed again: nothing listens there.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	_, stderr, err := osvcctl(t, addr, "image", "list")
	if err == nil {
		t.Fatal("image list against a closed port succeeded")
	}
	want := "error: cannot reach osvc-server at " + addr + ": is it running? (set --server or OSVC_SERVER)\n"
	if stderr != want {
		t.Errorf("stderr = %q, want %q", stderr, want)
	}
}

func TestUpdateListApplicableToAnImageSendsImageAndFilter(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "update", "list", "--applicable-to", "win11-23h2", "--arch", "x64", "--filter", "cumulative")
	assertContainsInOrder(t, out, "updates/kb5031354", "KB5031354", "Cumulative Update", "x64", "2026-11-14", "22621,22631", "dism,wimlib")
	reqs := requestsOf[*osvcv1.ListApplicableUpdatesRequest](f)
	if len(reqs) != 1 {
		t.Fatalf("ListApplicableUpdates called %d times, want 1", len(reqs))
	}
	want := &osvcv1.UpdateFilter{Text: "cumulative", Architecture: osvcv1.Architecture_ARCHITECTURE_X64}
	if reqs[0].GetImage() != "images/win11-23h2" || !proto.Equal(reqs[0].GetFilter(), want) {
		t.Errorf("request = %v, want image images/win11-23h2 and filter %v", reqs[0], want)
	}
	if n := len(requestsOf[*osvcv1.ListUpdatesRequest](f)); n != 0 {
		t.Errorf("ListUpdates called %d times, want 0 with --applicable-to", n)
	}
}

func TestScheduleCreateSendsTheOptionsAndPrintsTheRun(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "schedule", "create", "win11-23h2", "--update", "kb5031455", "--update", "updates/kb5031354",
		"--continue-on-error", "--remove-superseded", "--update-distribution-points", "--start-time", "2026-11-24T22:00:00Z")
	assertContainsInOrder(t, out, "Schedule: images/win11-23h2/schedules/s-9", "When:     once, 2026-11-24 22:00:00Z",
		"Run:      runs/r-9 (PENDING)", "Continue on error: yes, Remove superseded updates: yes, Update distribution points: yes",
		"updates/kb5031455", "updates/kb5031354")
	reqs := requestsOf[*osvcv1.CreateScheduleRequest](f)
	if len(reqs) != 1 {
		t.Fatalf("CreateSchedule called %d times, want 1", len(reqs))
	}
	want := &osvcv1.CreateScheduleRequest{Parent: "images/win11-23h2", Schedule: &osvcv1.Schedule{
		Updates:         []string{"updates/kb5031455", "updates/kb5031354"},
		StartTime:       timestamppb.New(time.Date(2026, 11, 24, 22, 0, 0, 0, time.UTC)),
		ContinueOnError: true, RemoveSuperseded: true, UpdateDistributionPoints: true,
	}}
	if !proto.Equal(reqs[0], want) {
		t.Errorf("request = %v, want %v", reqs[0], want)
	}
}

func TestScheduleCreateQuietPrintsOnlyTheRunName(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "schedule", "create", "win11-23h2", "--all-applicable", "-q")
	if out != "runs/r-9\n" {
		t.Errorf("output = %q, want the run name alone", out)
	}
}

func TestRunCancelSendsTheReason(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "run", "cancel", "r-1", "--reason", "wrong updates")
	if out != "runs/r-1: IN_PROCESS, cancel requested\n" {
		t.Errorf("output = %q", out)
	}
	reqs := requestsOf[*osvcv1.CancelRunRequest](f)
	if len(reqs) != 1 || reqs[0].GetName() != "runs/r-1" || reqs[0].GetReason() != "wrong updates" {
		t.Errorf("CancelRun requests = %v", reqs)
	}
}

func TestImageImportUploadsTheFileThenImportsItUnderTheDerivedID(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	wim := filepath.Join(t.TempDir(), "Win11 24H2.wim")
	data := bytes.Repeat([]byte("MSWIM\x00"), 1000)
	if err := os.WriteFile(wim, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, f.addr, "image", "import", wim, "--site", "PS1", "--name", "Windows 11 24H2")
	assertContainsInOrder(t, out, "imported images/win11-24h2", "Windows 11 24H2", "PS1")
	sum := sha256.Sum256(data)
	reqs := requestsOf[*osvcv1.ImportImageRequest](f)
	want := &osvcv1.ImportImageRequest{ImageId: "win11-24h2", DisplayName: "Windows 11 24H2", Kind: osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE,
		Site: "PS1", ContentSha256: hex.EncodeToString(sum[:])}
	if len(reqs) != 1 || !proto.Equal(reqs[0], want) {
		t.Errorf("ImportImage requests = %v, want %v", reqs, want)
	}
	if gets := requestsOf[*osvcv1.GetImageRequest](f); len(gets) != 1 || gets[0].GetName() != "images/win11-24h2" {
		t.Errorf("GetImage requests = %v, want one for images/win11-24h2 to check the ID is free", gets)
	}
}

func TestImageImportWithoutSiteIsRefusedBeforeUploading(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	wim := filepath.Join(t.TempDir(), "install.wim")
	if err := os.WriteFile(wim, []byte("MSWIM"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := osvcctl(t, f.addr, "image", "import", wim)
	if err == nil || !strings.Contains(stderr, "--site is required") {
		t.Errorf("err %v, stderr %q; want --site is required", err, stderr)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.blobs) != 0 {
		t.Errorf("%d blobs uploaded, want none", len(f.blobs))
	}
}

func TestUpdateImportUploadsEveryFileThenImportsThemAtOnce(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	dir := t.TempDir()
	files := map[string]string{"windows11.0-kb5031354-x64.cab": "MSCF one", "ssu-kb5031455.cab": "MSCF two"}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "subdir"), 0o700); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, f.addr, "update", "import", dir)
	assertContainsInOrder(t, out, "NAME", "ssu-kb5031455.cab")
	assertContainsInOrder(t, out, "NAME", "windows11.0-kb5031354-x64.cab")
	reqs := requestsOf[*osvcv1.ImportUpdatesRequest](f)
	if len(reqs) != 1 || len(reqs[0].GetFiles()) != len(files) {
		t.Fatalf("ImportUpdates requests = %v, want one with %d files", reqs, len(files))
	}
	for _, file := range reqs[0].GetFiles() {
		sum := sha256.Sum256([]byte(files[file.GetFileName()]))
		if file.GetSha256() != hex.EncodeToString(sum[:]) || file.GetSizeBytes() != int64(len(files[file.GetFileName()])) {
			t.Errorf("file %v: want sha256 %x and size %d", file, sum, len(files[file.GetFileName()]))
		}
	}
}

// watchScript is a run progressing from PENDING through two updates on one
// index to the given end.
func watchScript(name string, end osvcv1.RunState) []*osvcv1.WatchRunResponse {
	at := func(sec int) *timestamppb.Timestamp {
		return timestamppb.New(created.AsTime().Add(time.Duration(sec) * time.Second))
	}
	line := func(seq int64, msg string) *osvcv1.LogLine {
		return &osvcv1.LogLine{Sequence: seq, Time: at(int(seq)), Level: "info", Message: msg}
	}
	base := func() *osvcv1.Run {
		return &osvcv1.Run{Name: name, Image: "images/win11-23h2", Updates: []string{"updates/kb5031455", "updates/kb5031354"},
			SourceSizeBytes: 4 << 30, Attempt: 1, Agent: "agents/ps1-a"}
	}
	result := func(update, kb string, state osvcv1.UpdateState, percent int32, msg string) *osvcv1.UpdateResult {
		return &osvcv1.UpdateResult{Update: update, Kb: kb, Index: 1, State: state, Percent: percent, Message: msg}
	}

	pending := base()
	pending.State, pending.Agent = osvcv1.RunState_RUN_STATE_PENDING, ""
	leased := base()
	leased.State = osvcv1.RunState_RUN_STATE_LEASED
	applying := base()
	applying.State, applying.Step, applying.Percent = osvcv1.RunState_RUN_STATE_IN_PROCESS, osvcv1.Step_STEP_APPLY, 40
	applying.Steps = []*osvcv1.StepRecord{
		{Step: osvcv1.Step_STEP_DRIVE, State: osvcv1.StepState_STEP_STATE_DONE, Detail: "/srv/OfflineImageServicing/r"},
		{Step: osvcv1.Step_STEP_APPLY, State: osvcv1.StepState_STEP_STATE_RUNNING},
	}
	applying.UpdateResults = []*osvcv1.UpdateResult{
		result("updates/kb5031455", "KB5031455", osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS, 40, ""),
		result("updates/kb5031354", "KB5031354", osvcv1.UpdateState_UPDATE_STATE_PENDING, 0, ""),
	}
	further := proto.Clone(applying).(*osvcv1.Run)
	further.UpdateResults[0].Percent = 80

	final := proto.Clone(applying).(*osvcv1.Run)
	final.State, final.Step, final.Agent = end, osvcv1.Step_STEP_REPORT, ""
	final.UpdateResults[0] = result("updates/kb5031455", "KB5031455", osvcv1.UpdateState_UPDATE_STATE_APPLIED, 100, "")
	if end == osvcv1.RunState_RUN_STATE_SUCCEEDED {
		final.Percent, final.ResultSizeBytes = 100, 3<<30
		final.Steps[1].State = osvcv1.StepState_STEP_STATE_DONE
		final.UpdateResults[1] = result("updates/kb5031354", "KB5031354", osvcv1.UpdateState_UPDATE_STATE_APPLIED, 100, "")
	} else {
		final.Steps[1].State = osvcv1.StepState_STEP_STATE_FAILED
		final.Error = "apply KB5031354 on index 1: 0x800f081f"
		final.UpdateResults[1] = result("updates/kb5031354", "KB5031354", osvcv1.UpdateState_UPDATE_STATE_FAILED, 10, "the source files could not be found")
	}
	return []*osvcv1.WatchRunResponse{
		{Run: pending},
		{Run: leased},
		{Run: applying, LogLines: []*osvcv1.LogLine{line(1, "mounting index 1"), line(2, "applying KB5031455")}},
		// The agent resent line 2: it must print once.
		{Run: further, LogLines: []*osvcv1.LogLine{line(2, "applying KB5031455"), line(3, "applying KB5031354")}},
		{Run: final, LogLines: []*osvcv1.LogLine{line(4, "done")}},
	}
}

func TestRunWatchPrintsPlainLinesThenTheResults(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	f.script("runs/r-ok", watchScript("runs/r-ok", osvcv1.RunState_RUN_STATE_SUCCEEDED))
	f.script("runs/r-bad", watchScript("runs/r-bad", osvcv1.RunState_RUN_STATE_FAILED))

	t.Run("a run that succeeds exits 0", func(t *testing.T) {
		t.Parallel()
		out := mustRun(t, f.addr, "run", "watch", "r-ok")
		assertContainsInOrder(t, out,
			"runs/r-ok: PENDING\n",
			"runs/r-ok: LEASED on agents/ps1-a (attempt 1)\n",
			"runs/r-ok: IN_PROCESS on agents/ps1-a (attempt 1)\n",
			"step DRIVE: DONE (/srv/OfflineImageServicing/r)\n",
			"step APPLY: RUNNING\n",
			"KB5031455 (index 1): IN_PROGRESS 40%\n",
			"KB5031354 (index 1): PENDING\n",
			"  | 09:30:01 INFO  mounting index 1\n",
			"  | 09:30:02 INFO  applying KB5031455\n",
			"KB5031455 (index 1): 80%\n",
			"  | 09:30:03 INFO  applying KB5031354\n",
			"runs/r-ok: SUCCEEDED\n",
			"step APPLY: DONE\n",
			"KB5031455 (index 1): APPLIED\n",
			"KB5031354 (index 1): APPLIED\n",
			"  | 09:30:04 INFO  done\n",
			"runs/r-ok SUCCEEDED\n",
			"UPDATE", "KB", "INDEX", "RESULT", "MESSAGE",
			"updates/kb5031455", "KB5031455", "1", "APPLIED",
			"updates/kb5031354", "KB5031354", "1", "APPLIED",
			"Image size: 4.0 GiB → 3.0 GiB (-25.0%)\n")
		if n := strings.Count(out, "applying KB5031455"); n != 1 {
			t.Errorf("the resent log line printed %d times, want once", n)
		}
		if strings.Contains(out, "\x1b[") {
			t.Errorf("plain output holds terminal escapes:\n%q", out)
		}
	})

	t.Run("a run that fails exits 5 with its error", func(t *testing.T) {
		t.Parallel()
		stdout, stderr, err := osvcctl(t, f.addr, "run", "watch", "runs/r-bad")
		var ended *runEndedError
		if !errors.As(err, &ended) || ended.state != osvcv1.RunState_RUN_STATE_FAILED {
			t.Fatalf("err = %v, want a runEndedError FAILED", err)
		}
		if code := exitCode(err); code != exitRunEnded {
			t.Errorf("exit code %d, want %d", code, exitRunEnded)
		}
		assertContainsInOrder(t, stdout,
			"KB5031354 (index 1): FAILED: the source files could not be found\n",
			"runs/r-bad FAILED\n",
			"updates/kb5031354", "KB5031354", "FAILED", "the source files could not be found",
			"Image size: 4.0 GiB (unchanged)\n")
		if want := "error: run runs/r-bad ended FAILED: apply KB5031354 on index 1: 0x800f081f\n"; stderr != want {
			t.Errorf("stderr = %q, want %q", stderr, want)
		}
	})

	t.Run("json prints the final run with every log line once", func(t *testing.T) {
		t.Parallel()
		out := mustRun(t, f.addr, "run", "watch", "r-ok", "-o", "json")
		var resp osvcv1.WatchRunResponse
		if err := protojson.Unmarshal([]byte(out), &resp); err != nil {
			t.Fatalf("output is not one WatchRunResponse: %v\n%s", err, out)
		}
		if resp.GetRun().GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || len(resp.GetLogLines()) != 4 {
			t.Errorf("run state %v with %d log lines, want SUCCEEDED with 4", resp.GetRun().GetState(), len(resp.GetLogLines()))
		}
	})
}

func TestScheduleCreateWatchFollowsTheNewRun(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	f.script("runs/r-9", watchScript("runs/r-9", osvcv1.RunState_RUN_STATE_SUCCEEDED))
	out := mustRun(t, f.addr, "schedule", "create", "win11-23h2", "--all-applicable", "--watch")
	assertContainsInOrder(t, out, "Run:      runs/r-9 (PENDING)", "runs/r-9: LEASED", "runs/r-9 SUCCEEDED", "Image size: 4.0 GiB → 3.0 GiB")
	if reqs := requestsOf[*osvcv1.CreateScheduleRequest](f); len(reqs) != 1 || !reqs[0].GetAllApplicable() {
		t.Errorf("CreateSchedule requests = %v, want one with all_applicable", reqs)
	}
}

func TestRunWatchResumesAfterTheLastLogLineWhenTheStreamBreaks(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	f.script("runs/r-flaky", watchScript("runs/r-flaky", osvcv1.RunState_RUN_STATE_SUCCEEDED))
	f.mu.Lock()
	f.breaks["runs/r-flaky"] = 3
	f.mu.Unlock()
	out := mustRun(t, f.addr, "run", "watch", "r-flaky")
	assertContainsInOrder(t, out, "mounting index 1", "applying KB5031455", "applying KB5031354", "done", "runs/r-flaky SUCCEEDED")
	if n := strings.Count(out, "applying KB5031455"); n != 1 {
		t.Errorf("a log line printed %d times across the reconnect, want once", n)
	}
	var after []int64
	for _, r := range requestsOf[*osvcv1.WatchRunRequest](f) {
		after = append(after, r.GetAfterSequence())
	}
	if len(after) != 2 || after[0] != 0 || after[1] != 2 {
		t.Errorf("WatchRun after_sequence per call = %v, want [0 2]", after)
	}
}

func TestAnEmptyListSaysSoInsteadOfAnEmptyTable(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	if out := mustRun(t, f.addr, "image", "list", "--site", "PS9"); out != "no images\n" {
		t.Errorf("image list of a site without images printed %q, want %q", out, "no images\n")
	}
}

func TestBarDisplayEndsWithEveryUpdateInItsFinalState(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	d := newBarDisplay(&out)
	script := watchScript("runs/r-bars", osvcv1.RunState_RUN_STATE_FAILED)
	for _, resp := range script {
		d.show(resp.GetRun(), resp.GetLogLines())
	}
	// Lines after every update has ended still show: go-pretty draws
	// nothing once no tracker is active, so the run's tracker stays active.
	deadline := time.Now().Add(10 * time.Second)
	for d.pw.LengthDone() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the ended updates were not drawn as done: %d done", d.pw.LengthDone())
		}
		<-time.After(5 * time.Millisecond)
	}
	d.show(script[len(script)-1].GetRun(), []*osvcv1.LogLine{{Sequence: 5, Level: "info", Message: "a late line"}})
	d.close(false)
	// close waited for the last render: out is no longer written to.
	got := out.String()
	for _, want := range []string{"KB5031455 (index 1) APPLIED", "KB5031354 (index 1) FAILED", "09:30:01 INFO  mounting index 1", "09:30:04 INFO  done", "INFO  a late line", "runs/r-bars FAILED"} {
		if !strings.Contains(got, want) {
			t.Errorf("bar display lacks %q:\n%s", want, got)
		}
	}
}

func TestUploadProgressBarsEndDoneOrFailed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"a finished upload ends done", nil, "done!"},
		{"a failed upload ends failed", errors.New("broken pipe"), "fail!"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			u := newUploadProgress(&out, "install.wim", 4<<20, true)
			u.update(1<<20, 4<<20)
			u.finish(tt.err)
			if got := out.String(); !strings.Contains(got, "upload install.wim") || !strings.Contains(got, tt.want) {
				t.Errorf("progress output lacks the file or %q:\n%s", tt.want, got)
			}
		})
	}
}

func TestUploadProgressPrintsQuarterLinesWithoutATerminal(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	u := newUploadProgress(&out, "install.wim", 4<<20, false)
	for done := int64(1 << 20); done <= 4<<20; done += 1 << 20 {
		u.update(done, 4<<20)
	}
	u.finish(nil)
	want := "uploading install.wim (4.0 MiB)\n" +
		"  install.wim: 25% of 4.0 MiB\n" +
		"  install.wim: 50% of 4.0 MiB\n" +
		"  install.wim: 75% of 4.0 MiB\n" +
		"  install.wim: uploaded\n"
	if got := out.String(); got != want {
		t.Errorf("output =\n%s\nwant\n%s", got, want)
	}
}

func TestAViolationTheMessageAlreadyStatesIsNotRepeated(t *testing.T) {
	t.Parallel()
	st, err := status.New(codes.InvalidArgument, "invalid argument: name: use images/ID").WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "name", Description: "use images/ID"},
			{Field: "site", Description: "use a site code such as PS1"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := renderError(st.Err(), "localhost:7300")
	want := "error: invalid argument: name: use images/ID\n  site: use a site code such as PS1\n"
	if got != want {
		t.Errorf("renderError =\n%s\nwant\n%s", got, want)
	}
}

func TestAStalledRunIsMarkedWhereverItsStateShows(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		run  *osvcv1.Run
		want string
	}{
		{"a run making progress shows its state", &osvcv1.Run{State: osvcv1.RunState_RUN_STATE_IN_PROCESS}, "IN_PROCESS"},
		{"a stalled run says so", &osvcv1.Run{State: osvcv1.RunState_RUN_STATE_IN_PROCESS, Stalled: true}, "IN_PROCESS (stalled)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := runStateLabel(tt.run); got != tt.want {
				t.Errorf("runStateLabel = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestImageImportRefusesATakenOrBadIDBeforeUploading(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, file string
		flags      []string
		want       string
	}{
		{"an ID derived from the file name that is taken", "Win11 23H2.wim", nil,
			"error: image images/win11-23h2 exists already: choose another --id, or see it with 'osvcctl image get win11-23h2'\n"},
		{"an ID given that is taken", "install.wim", []string{"--id", "server-2022"},
			"error: image images/server-2022 exists already: choose another --id"},
		{"an ID the server would refuse", "install.wim", []string{"--id", "Win11_Ent"},
			`error: --id: ID "Win11_Ent": use 1 to 63 lower-case letters, digits and '-', starting with a letter` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := startFake(t)
			wim := filepath.Join(t.TempDir(), tt.file)
			if err := os.WriteFile(wim, []byte("MSWIM"), 0o600); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"image", "import", wim, "--site", "PS1"}, tt.flags...)
			_, stderr, err := osvcctl(t, f.addr, args...)
			if err == nil || !strings.HasPrefix(stderr, tt.want) {
				t.Errorf("err %v, stderr %q; want an error starting %q", err, stderr, tt.want)
			}
			f.mu.Lock()
			uploaded := len(f.blobs)
			f.mu.Unlock()
			if uploaded != 0 {
				t.Errorf("%d blobs uploaded, want none", uploaded)
			}
			if n := len(requestsOf[*osvcv1.ImportImageRequest](f)); n != 0 {
				t.Errorf("ImportImage called %d times, want 0", n)
			}
		})
	}
}

func TestScheduleCreateRefusesQuietWithWatchBeforeQueuingARun(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	_, stderr, err := osvcctl(t, f.addr, "schedule", "create", "win11-23h2", "--all-applicable", "-q", "--watch")
	if err == nil || !strings.Contains(stderr, "use it without --watch") {
		t.Errorf("err %v, stderr %q; want --quiet with --watch refused", err, stderr)
	}
	if n := len(requestsOf[*osvcv1.CreateScheduleRequest](f)); n != 0 {
		t.Errorf("CreateSchedule called %d times, want 0: the refused command queued a run", n)
	}
}

func TestAnUnknownSubcommandFailsAndSuggestsTheNearestOne(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"a typo in a subcommand", []string{"run", "lsit"},
			"error: unknown command \"lsit\" for \"osvcctl run\": did you mean list?\nrun 'osvcctl run --help' for its commands\n"},
		{"a typo in a command", []string{"imgae", "list"},
			"error: unknown command \"imgae\" for \"osvcctl\": did you mean image?\nrun 'osvcctl --help' for its commands\n"},
		{"a word that resembles nothing", []string{"agent", "reboot"},
			"error: unknown command \"reboot\" for \"osvcctl agent\"\nrun 'osvcctl agent --help' for its commands\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stdout, stderr, err := osvcctl(t, f.addr, tt.args...)
			if err == nil || stderr != tt.want || stdout != "" {
				t.Errorf("osvcctl %s: err %v, stdout %q, stderr %q; want an error and stderr %q",
					strings.Join(tt.args, " "), err, stdout, stderr, tt.want)
			}
		})
	}
	t.Run("a command group alone shows its help", func(t *testing.T) {
		t.Parallel()
		out := mustRun(t, f.addr, "run")
		assertContainsInOrder(t, out, "Usage:", "osvcctl run [command]", "cancel", "get", "list", "watch")
	})
}

func TestFlagHelpNamesWhatEachFlagTakes(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "schedule", "create", "--help")
	for _, want := range []string{"--start-time TIME ", "--update ID ", "-o, --output FORMAT ", "--server HOST:PORT "} {
		if !strings.Contains(out, want) {
			t.Errorf("schedule create --help lacks %q:\n%s", want, out)
		}
	}
}

func TestUpdateGetLowerCasesTheIDAndSaysHowToFindAMissingOne(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "update", "get", "KB5031354")
	assertContainsInOrder(t, out, "Name:             updates/kb5031354", "KB:               KB5031354",
		"Products:         Windows 11", "OS builds:        22621,22631", "Engines:          dism,wimlib")
	if strings.Contains(out, "Unsupported:") {
		t.Errorf("update get of an update every engine applies says what is unsupported:\n%s", out)
	}
	_, stderr, err := osvcctl(t, f.addr, "update", "get", "kb5031354-x64")
	want := "error: update updates/kb5031354-x64 not found ('osvcctl update list --filter KB5031354' finds its ID)\n"
	if err == nil || stderr != want {
		t.Errorf("update get of a missing update: err %v, stderr %q; want %q", err, stderr, want)
	}
	var asked []string
	for _, r := range requestsOf[*osvcv1.GetUpdateRequest](f) {
		asked = append(asked, r.GetName())
	}
	if strings.Join(asked, " ") != "updates/kb5031354 updates/kb5031354-x64" {
		t.Errorf("GetUpdate asked for %q, want lower-case names", asked)
	}
}

func TestUpdateGetSaysWhichBuildsAndEnginesAndWhyAnEngineDoesNotApplyIt(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	// An update for a build and every build from another on, that only the dism engine applies.
	out := mustRun(t, f.addr, "update", "get", "kb5031455")
	assertContainsInOrder(t, out, "Products:         -", "OS builds:        19041,22621+", "Engines:          dism",
		"Unsupported:      the wimlib engine does not install it: update.mum installs packages of its own (2: Package_1_for_KB5005565, Package_2_for_KB5005565)")
	out = mustRun(t, f.addr, "update", "list")
	assertContainsInOrder(t, out, "ENGINES", "updates/kb5031354", "dism,wimlib", "updates/kb5031455", "19041,22621+", "dism")
}

func TestRunGetSaysWhyARunWaitsAndWhyItWasCanceledAndWhatItDidNotApply(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	held := mustRun(t, f.addr, "run", "get", "r-held")
	assertContainsInOrder(t, held, "State:    PENDING", "Start:    not before 2030-01-01 00:00:00Z")
	canceled := mustRun(t, f.addr, "run", "get", "r-canceled")
	assertContainsInOrder(t, canceled, "State:    CANCELED", "Reason:   scheduled by mistake",
		"updates/kb5031354", "KB5031354", "SKIPPED", "not applied: the run ended CANCELED")
	if strings.Contains(canceled, "Error:") || strings.Contains(canceled, "not before") {
		t.Errorf("a canceled run shows an error or a wait:\n%s", canceled)
	}
	done := mustRun(t, f.addr, "run", "get", "r-1")
	if strings.Contains(done, "not before") || strings.Contains(done, "Reason:") {
		t.Errorf("a succeeded run shows a wait or a cancel reason:\n%s", done)
	}
}

func TestSizesReadInBinaryUnits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, got, want string
	}{
		{"bytes stay bytes", sizeText(1000), "1000 B"},
		{"small sizes keep a decimal", sizeText(4 << 20), "4.0 MiB"},
		{"large sizes are whole", sizeText(73*(1<<30) + 300<<20), "73 GiB"},
		{"an unknown size is a dash", sizeText(-1), "-"},
		{"a smaller image shows the change", sizeChangeText(4<<30, 3<<30), "4.0 GiB → 3.0 GiB (-25.0%)"},
		{"an image of the same size is unchanged", sizeChangeText(4<<20, 4<<20), "4.0 MiB (unchanged)"},
		{"a run without a result is unchanged", sizeChangeText(4<<20, 0), "4.0 MiB (unchanged)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestScheduleCreateWarnsWhenNoAgentOfTheSiteIsConnected(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	tests := []struct {
		name, image, wantStderr string
	}{
		{"an image of a site without agents gets a note", "server-2022",
			"note: no agent of site PS2 is connected: the run waits until one is ('osvcctl agent list' shows the agents)\n"},
		{"an image of a site with a connected agent gets none", "win11-23h2", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stdout, stderr, err := osvcctl(t, f.addr, "schedule", "create", tt.image, "--all-applicable")
			if err != nil || stderr != tt.wantStderr {
				t.Errorf("err %v, stderr %q; want success and stderr %q", err, stderr, tt.wantStderr)
			}
			if !strings.Contains(stdout, "Run:      runs/r-9 (PENDING)") {
				t.Errorf("stdout lacks the run:\n%s", stdout)
			}
		})
	}
}

func TestExitCodesTellTheKindOfFailureApart(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	// Nothing listens on a port that was just closed.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := lis.Addr().String()
	lis.Close()
	tests := []struct {
		name string
		addr string
		args []string
		want int
	}{
		{"a command that works exits 0", f.addr, []string{"image", "list"}, exitOK},
		{"a missing argument is a usage error", f.addr, []string{"image", "get"}, exitUsage},
		{"an unknown flag is a usage error", f.addr, []string{"image", "list", "--colour"}, exitUsage},
		{"a typo in a command is a usage error", f.addr, []string{"run", "lsit"}, exitUsage},
		{"a name the server finds invalid is a usage error", f.addr, []string{"image", "get", "images/Bad_Name"}, exitUsage},
		{"an image that does not exist is not found", f.addr, []string{"image", "get", "nope"}, exitNotFound},
		{"a run that does not exist is not found", f.addr, []string{"run", "get", "r-nope"}, exitNotFound},
		{"a server that is not there is unreachable", down, []string{"image", "list"}, exitUnreachable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, stderr, err := osvcctl(t, tt.addr, tt.args...)
			if got := exitCode(err); got != tt.want {
				t.Errorf("exit code %d, want %d (err %v, stderr %q)", got, tt.want, err, stderr)
			}
		})
	}
}

func TestImageInspectQueuesAnInspectionOfTheCurrentVersion(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "image", "inspect", "win11-23h2")
	if !strings.Contains(out, "runs/r-inspect inspects images/win11-23h2 version 2") {
		t.Errorf("image inspect printed %q", out)
	}
	if reqs := requestsOf[*osvcv1.InspectImageRequest](f); len(reqs) != 1 || reqs[0].GetName() != "images/win11-23h2" {
		t.Errorf("InspectImage requests %v", reqs)
	}
	if _, _, err := osvcctl(t, f.addr, "image", "inspect", "nope"); exitCode(err) != exitNotFound {
		t.Errorf("image inspect of an unknown image: %v, want exit %d", err, exitNotFound)
	}
}

// TestAConfigFileSetsWhatTheEnvironmentDoesNot cannot be parallel: it sets
// the environment.
func TestAConfigFileSetsWhatTheEnvironmentDoesNot(t *testing.T) {
	f := startFake(t)
	config := filepath.Join(t.TempDir(), "osvcctl.yaml")
	settings := "server: 127.0.0.1:1\nca-file: " + testCAFile(t) + "\noutput: json\n"
	if err := os.WriteFile(config, []byte(settings), 0o600); err != nil {
		t.Fatal(err)
	}
	// The file names a server that is down; the environment, the fake.
	t.Setenv(serverEnv, f.addr)
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"--config", config, "agent", "list"}, &out, &errOut); err != nil {
		t.Fatalf("agent list with --config %s and %s=%s: %v\n%s", config, serverEnv, f.addr, err, errOut.String())
	}
	if !strings.HasPrefix(strings.TrimSpace(out.String()), "{") || !strings.Contains(out.String(), "agents/ps1-a") {
		t.Errorf("want the agents as JSON (output: json from the file):\n%s", out.String())
	}
	if err := os.WriteFile(config, []byte("token: secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	errOut.Reset()
	if err := run(t.Context(), []string{"--config", config, "agent", "list"}, &out, &errOut); err == nil || !strings.Contains(errOut.String(), `"token" names no flag`) {
		t.Errorf("a token in the config file: %v\n%s; want it refused (use token-file)", err, errOut.String())
	}
}

func TestVersionPrintsTheBuild(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := run(t.Context(), []string{"--version"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "osvcctl ") || !strings.Contains(out.String(), "go1.") {
		t.Errorf("--version printed %q", out.String())
	}
}

func TestTheExampleConfigHoldsOnlyGlobalFlags(t *testing.T) {
	t.Parallel()
	var errOut bytes.Buffer
	// Refused after the file is read: an output format osvcctl lacks.
	err := run(t.Context(), []string{"--config", filepath.Join("..", "..", "deploy", "config", "osvcctl.yaml"), "--output", "xml", "agent", "list"}, io.Discard, &errOut)
	if err == nil || !strings.Contains(errOut.String(), `--output "xml"`) {
		t.Fatalf("osvcctl with the example config = %v\n%s; want it read, then the output refused", err, errOut.String())
	}
}
