package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/pki"
)

// fakeOsvc serves the osvc API from canned in-memory data on a real loopback
// listener, and records what osvcctl asked of it.
type fakeOsvc struct {
	addr string

	mu       sync.Mutex
	requests []proto.Message
	blobs    map[string][]byte
	// watches scripts WatchRun per run name: the snapshots sent in order.
	watches map[string][]*osvcv1.WatchRunResponse
	// breaks makes the first WatchRun of a run fail Unavailable after this
	// many snapshots, as a restarting server would.
	breaks map[string]int
	// runs are served by GetRun beside the canned ones.
	runs map[string]*osvcv1.Run
	// damaged blobs are served with their last byte changed.
	damaged map[string]bool
	// holds keeps a WatchRun of the run open after its script, as a run
	// that goes on does, closing the channel once the script is sent.
	holds map[string]chan struct{}
}

// testPKI is the authority the fakes' certificates come from, made once in
// a folder TestMain removes; osvcctl trusts it through --ca-file.
var testPKI struct {
	once sync.Once
	dir  string
	ca   *pki.CA
	cert tls.Certificate
	err  error
}

// fakeCredentials are the fakes' TLS credentials, from testPKI.
func fakeCredentials(t *testing.T) credentials.TransportCredentials {
	t.Helper()
	testPKI.once.Do(func() {
		if testPKI.dir, testPKI.err = os.MkdirTemp("", "osvcctl-test-pki-"); testPKI.err != nil {
			return
		}
		if testPKI.ca, _, testPKI.err = pki.EnsureCA(filepath.Join(testPKI.dir, "pki"), time.Now()); testPKI.err != nil {
			return
		}
		testPKI.cert, testPKI.err = testPKI.ca.ServerCertificate(pki.ServerHosts("127.0.0.1:0", nil), time.Now())
	})
	if testPKI.err != nil {
		t.Fatal(testPKI.err)
	}
	return credentials.NewTLS(pki.ServerConfig(testPKI.cert))
}

// testCAFile is the file osvcctl is given to trust the fakes.
func testCAFile(t *testing.T) string {
	t.Helper()
	fakeCredentials(t)
	return testPKI.ca.CertPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testPKI.dir != "" {
		os.RemoveAll(testPKI.dir)
	}
	os.Exit(code)
}

// startFake serves a fresh fake on 127.0.0.1, over TLS, until the test ends.
func startFake(t *testing.T) *fakeOsvc {
	t.Helper()
	creds := fakeCredentials(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	f := &fakeOsvc{addr: lis.Addr().String(), blobs: map[string][]byte{}, watches: map[string][]*osvcv1.WatchRunResponse{}, breaks: map[string]int{},
		runs: map[string]*osvcv1.Run{}, damaged: map[string]bool{}, holds: map[string]chan struct{}{}}
	s := grpc.NewServer(grpc.Creds(creds))
	osvcv1.RegisterSiteServiceServer(s, &fakeSites{f: f})
	osvcv1.RegisterImageServiceServer(s, &fakeImages{f: f})
	osvcv1.RegisterUpdateServiceServer(s, &fakeUpdates{f: f})
	osvcv1.RegisterServicingServiceServer(s, &fakeServicing{f: f})
	osvcv1.RegisterAgentServiceServer(s, &fakeAgents{f: f})
	osvcv1.RegisterContentServiceServer(s, &fakeContent{f: f})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return f
}

func (f *fakeOsvc) record(m proto.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, proto.Clone(m))
}

// script sets the snapshots WatchRun sends for run name.
func (f *fakeOsvc) script(name string, snapshots []*osvcv1.WatchRunResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.watches[name] = snapshots
}

// requestsOf returns the recorded requests of type T, in arrival order.
func requestsOf[T proto.Message](f *fakeOsvc) []T {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []T
	for _, r := range f.requests {
		if m, ok := r.(T); ok {
			out = append(out, m)
		}
	}
	return out
}

// Canned catalog.
var (
	created = timestamppb.New(time.Date(2026, 11, 14, 9, 30, 0, 0, time.UTC))

	cannedImages = []*osvcv1.Image{
		{
			Name: "images/server-2022", DisplayName: "Windows Server 2022", Kind: osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE,
			Site: "PS2", CurrentVersion: 1,
			Versions: []*osvcv1.ImageVersion{{Version: 1, Sha256: "aa11bb22cc33dd44ee55ff66", SizeBytes: 5 << 30, CreateTime: created}},
			Indexes: []*osvcv1.ImageIndex{
				{Index: 1, Name: "Windows Server 2022 Standard", Edition: "ServerStandard", Architecture: osvcv1.Architecture_ARCHITECTURE_X64, Version: "10.0.20348.2031", Build: 20348, TotalBytes: 9 << 30},
			},
			ServicingStatus: osvcv1.ServicingStatus_SERVICING_STATUS_NONE,
		},
		{
			Name: "images/win11-23h2", DisplayName: "Windows 11 23H2", Kind: osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE,
			Site: "PS1", CurrentVersion: 2,
			Versions: []*osvcv1.ImageVersion{
				{Version: 1, Sha256: "0123456789abcdef0123", SizeBytes: 4 << 30, CreateTime: created},
				{Version: 2, Sha256: "fedcba9876543210fedc", SizeBytes: 3 << 30, CreatedByRun: "runs/r-1", CreateTime: created},
			},
			Indexes: []*osvcv1.ImageIndex{
				{Index: 1, Name: "Windows 11 Enterprise", Edition: "Enterprise", Architecture: osvcv1.Architecture_ARCHITECTURE_X64, Version: "10.0.22631.2428", Build: 22631, TotalBytes: 16 << 30,
					InstalledUpdates: []*osvcv1.InstalledUpdate{{PackageIdentity: "Package_for_RollupFix~31bf3856ad364e35~amd64~~22631.2428.1.0", Kb: "5031354", Update: "updates/kb5031354", State: "Installed"}}},
				{Index: 2, Name: "Windows 11 Pro", Edition: "Professional", Architecture: osvcv1.Architecture_ARCHITECTURE_X64, Version: "10.0.22631.2428", Build: 22631, TotalBytes: 15 << 30},
			},
			ServicingStatus: osvcv1.ServicingStatus_SERVICING_STATUS_SUCCEEDED,
			LastRun:         "runs/r-1",
		},
	}

	cannedUpdates = []*osvcv1.Update{
		{Name: "updates/kb5031354", Kb: "KB5031354", Title: "2023-10 Cumulative Update for Windows 11 Version 23H2 for x64-based Systems",
			Classification: osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, Architecture: osvcv1.Architecture_ARCHITECTURE_X64,
			ApplicableBuilds: []uint32{22631, 22621}, ReleaseTime: created, Products: []string{"Windows 11"}, Engines: []string{"dism", "wimlib"}},
		{Name: "updates/kb5031455", Kb: "KB5031455", Title: "Servicing Stack Update for Windows 11 Version 23H2",
			Classification: osvcv1.Classification_CLASSIFICATION_SERVICING_STACK, Architecture: osvcv1.Architecture_ARCHITECTURE_X64,
			ApplicableBuilds: []uint32{19041}, MinBuild: 22621, Engines: []string{"dism"},
			UnsupportedReason: "the wimlib engine does not install it: update.mum installs packages of its own (2: Package_1_for_KB5005565, Package_2_for_KB5005565)"},
	}

	cannedRun = &osvcv1.Run{
		Name: "runs/r-1", Image: "images/win11-23h2", Schedule: "images/win11-23h2/schedules/s-1",
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, Attempt: 1, Step: osvcv1.Step_STEP_REPORT, Percent: 100,
		Updates: []string{"updates/kb5031455", "updates/kb5031354"}, SourceVersion: 1,
		SourceSizeBytes: 4 << 30, ResultSizeBytes: 3 << 30, CreateTime: created,
	}

	// cannedHeldRun waits for its schedule's start time.
	cannedHeldRun = &osvcv1.Run{
		Name: "runs/r-held", Image: "images/win11-23h2", State: osvcv1.RunState_RUN_STATE_PENDING,
		Updates: []string{"updates/kb5031354"}, SourceVersion: 2, CreateTime: created,
		NotBefore: timestamppb.New(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)),
	}

	// cannedCanceledRun was canceled before it started; its error is the reason.
	cannedCanceledRun = &osvcv1.Run{
		Name: "runs/r-canceled", Image: "images/win11-23h2", State: osvcv1.RunState_RUN_STATE_CANCELED,
		Updates: []string{"updates/kb5031354"}, SourceVersion: 2, CreateTime: created, EndTime: created,
		Error: "scheduled by mistake",
		UpdateResults: []*osvcv1.UpdateResult{{Update: "updates/kb5031354", Kb: "KB5031354", Index: 1,
			State: osvcv1.UpdateState_UPDATE_STATE_SKIPPED, Message: "not applied: the run ended CANCELED"}},
	}

	cannedSites = []*osvcv1.Site{
		{Name: "sites/CAS", Code: "CAS", Description: "central site", OfflineServicingDrive: "Automatic", CreateTime: created, UpdateTime: created},
		{Name: "sites/PS1", Code: "PS1", ParentSite: "CAS", Description: "London primary site", OfflineServicingDrive: "D:",
			DistributionPoints: []string{"dp-1", "dp-2"}, CreateTime: created, UpdateTime: created},
		{Name: "sites/PS2", Code: "PS2", ParentSite: "CAS", OfflineServicingDrive: "Automatic", CreateTime: created, UpdateTime: created},
	}

	cannedAgents = []*osvcv1.Agent{
		{Name: "agents/ps1-a", Site: "PS1", Host: "siteserver1", Version: "0.1.0", Engines: []string{"wimlib"}, Capacity: 1,
			State: osvcv1.AgentState_AGENT_STATE_CONNECTED, Drives: []*osvcv1.Drive{{Path: "/srv", FreeBytes: 100 << 30, TotalBytes: 200 << 30}},
			Runs: []string{"runs/r-2"}, LastSeenTime: created},
	}
)

// badNameError is what the server answers for a name it cannot parse.
func badNameError(name string) error {
	st, err := status.New(codes.InvalidArgument, fmt.Sprintf("invalid name %q", name)).WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{
			Field:       "name",
			Description: "use images/ID with ID of lower-case letters, digits and '-', starting with a letter",
		}},
	})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// page serves items one per page, so every list exercises next_page_token.
func page[T any](items []T, token string) ([]T, string, error) {
	i := 0
	if token != "" {
		var err error
		if i, err = strconv.Atoi(token); err != nil || i < 0 || i >= len(items) {
			return nil, "", status.Errorf(codes.InvalidArgument, "bad page token %q", token)
		}
	}
	if i >= len(items) {
		return nil, "", nil
	}
	next := ""
	if i+1 < len(items) {
		next = strconv.Itoa(i + 1)
	}
	return items[i : i+1], next, nil
}

type fakeImages struct {
	osvcv1.UnimplementedImageServiceServer
	f *fakeOsvc
}

func (s *fakeImages) ImportImage(_ context.Context, req *osvcv1.ImportImageRequest) (*osvcv1.ImportImageResponse, error) {
	s.f.record(req)
	s.f.mu.Lock()
	blob, ok := s.f.blobs[req.GetContentSha256()]
	s.f.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "content %s was not uploaded", req.GetContentSha256())
	}
	return &osvcv1.ImportImageResponse{Image: &osvcv1.Image{
		Name: "images/" + req.GetImageId(), DisplayName: req.GetDisplayName(), Kind: req.GetKind(), Site: req.GetSite(), CurrentVersion: 1,
		Versions: []*osvcv1.ImageVersion{{Version: 1, Sha256: req.GetContentSha256(), SizeBytes: int64(len(blob))}},
	}}, nil
}

func (s *fakeImages) GetImage(_ context.Context, req *osvcv1.GetImageRequest) (*osvcv1.GetImageResponse, error) {
	s.f.record(req)
	for _, img := range cannedImages {
		if img.GetName() == req.GetName() {
			return &osvcv1.GetImageResponse{Image: img}, nil
		}
	}
	if req.GetName() == "images/Bad_Name" {
		return nil, badNameError(req.GetName())
	}
	return nil, status.Errorf(codes.NotFound, "image %s not found", req.GetName())
}

func (s *fakeImages) InspectImage(_ context.Context, req *osvcv1.InspectImageRequest) (*osvcv1.InspectImageResponse, error) {
	s.f.record(req)
	for _, img := range cannedImages {
		if img.GetName() == req.GetName() {
			return &osvcv1.InspectImageResponse{Image: img, InspectionRun: "runs/r-inspect"}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "image %s not found", req.GetName())
}

func (s *fakeImages) ListImages(_ context.Context, req *osvcv1.ListImagesRequest) (*osvcv1.ListImagesResponse, error) {
	s.f.record(req)
	var matching []*osvcv1.Image
	for _, img := range cannedImages {
		if req.GetSite() == "" || img.GetSite() == req.GetSite() {
			matching = append(matching, img)
		}
	}
	images, next, err := page(matching, req.GetPageToken())
	return &osvcv1.ListImagesResponse{Images: images, NextPageToken: next}, err
}

type fakeSites struct {
	osvcv1.UnimplementedSiteServiceServer
	f *fakeOsvc
}

func cannedSite(name string) *osvcv1.Site {
	for _, s := range cannedSites {
		if s.GetName() == name {
			return s
		}
	}
	return nil
}

func (s *fakeSites) CreateSite(_ context.Context, req *osvcv1.CreateSiteRequest) (*osvcv1.CreateSiteResponse, error) {
	s.f.record(req)
	site := proto.Clone(req.GetSite()).(*osvcv1.Site)
	site.Name = "sites/" + site.GetCode()
	if cannedSite(site.GetName()) != nil {
		return nil, status.Errorf(codes.AlreadyExists, "site %s already exists", site.GetCode())
	}
	if site.GetOfflineServicingDrive() == "" {
		site.OfflineServicingDrive = "Automatic"
	}
	return &osvcv1.CreateSiteResponse{Site: site}, nil
}

func (s *fakeSites) GetSite(_ context.Context, req *osvcv1.GetSiteRequest) (*osvcv1.GetSiteResponse, error) {
	s.f.record(req)
	if site := cannedSite(req.GetName()); site != nil {
		return &osvcv1.GetSiteResponse{Site: site}, nil
	}
	return nil, status.Errorf(codes.NotFound, "site %s does not exist", req.GetName())
}

func (s *fakeSites) ListSites(_ context.Context, req *osvcv1.ListSitesRequest) (*osvcv1.ListSitesResponse, error) {
	s.f.record(req)
	sites, next, err := page(cannedSites, req.GetPageToken())
	return &osvcv1.ListSitesResponse{Sites: sites, NextPageToken: next}, err
}

// UpdateSite applies the mask to the canned site.
func (s *fakeSites) UpdateSite(_ context.Context, req *osvcv1.UpdateSiteRequest) (*osvcv1.UpdateSiteResponse, error) {
	s.f.record(req)
	old := cannedSite(req.GetSite().GetName())
	if old == nil {
		return nil, status.Errorf(codes.NotFound, "site %s does not exist", req.GetSite().GetName())
	}
	site := proto.Clone(old).(*osvcv1.Site)
	in := req.GetSite()
	for _, p := range req.GetUpdateMask().GetPaths() {
		switch p {
		case "parent_site":
			site.ParentSite = in.GetParentSite()
		case "description":
			site.Description = in.GetDescription()
		case "offline_servicing_drive":
			site.OfflineServicingDrive = in.GetOfflineServicingDrive()
		case "distribution_points":
			site.DistributionPoints = in.GetDistributionPoints()
		}
	}
	return &osvcv1.UpdateSiteResponse{Site: site}, nil
}

// DeleteSite refuses the canned sites, which images or children name.
func (s *fakeSites) DeleteSite(_ context.Context, req *osvcv1.DeleteSiteRequest) (*osvcv1.DeleteSiteResponse, error) {
	s.f.record(req)
	if cannedSite(req.GetName()) != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "site %s cannot be deleted: 1 image (images/win11-23h2) name it", req.GetName())
	}
	return &osvcv1.DeleteSiteResponse{}, nil
}

type fakeUpdates struct {
	osvcv1.UnimplementedUpdateServiceServer
	f *fakeOsvc
}

func (s *fakeUpdates) ImportUpdates(_ context.Context, req *osvcv1.ImportUpdatesRequest) (*osvcv1.ImportUpdatesResponse, error) {
	s.f.record(req)
	resp := &osvcv1.ImportUpdatesResponse{}
	for _, file := range req.GetFiles() {
		s.f.mu.Lock()
		_, ok := s.f.blobs[file.GetSha256()]
		s.f.mu.Unlock()
		if !ok {
			return nil, status.Errorf(codes.FailedPrecondition, "content %s was not uploaded", file.GetSha256())
		}
		resp.Updates = append(resp.Updates, &osvcv1.Update{Name: "updates/" + file.GetSha256()[:8], Title: file.GetFileName(), Files: []*osvcv1.UpdateFile{file}})
	}
	return resp, nil
}

func (s *fakeUpdates) GetUpdate(_ context.Context, req *osvcv1.GetUpdateRequest) (*osvcv1.GetUpdateResponse, error) {
	s.f.record(req)
	for _, u := range cannedUpdates {
		if u.GetName() == req.GetName() {
			return &osvcv1.GetUpdateResponse{Update: u}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "update %s not found", req.GetName())
}

func (s *fakeUpdates) ListUpdates(_ context.Context, req *osvcv1.ListUpdatesRequest) (*osvcv1.ListUpdatesResponse, error) {
	s.f.record(req)
	updates, next, err := page(cannedUpdates, req.GetPageToken())
	return &osvcv1.ListUpdatesResponse{Updates: updates, NextPageToken: next}, err
}

func (s *fakeUpdates) ListApplicableUpdates(_ context.Context, req *osvcv1.ListApplicableUpdatesRequest) (*osvcv1.ListApplicableUpdatesResponse, error) {
	s.f.record(req)
	updates, next, err := page(cannedUpdates[:1], req.GetPageToken())
	return &osvcv1.ListApplicableUpdatesResponse{Updates: updates, NextPageToken: next}, err
}

type fakeServicing struct {
	osvcv1.UnimplementedServicingServiceServer
	f *fakeOsvc
}

func (s *fakeServicing) CreateSchedule(_ context.Context, req *osvcv1.CreateScheduleRequest) (*osvcv1.CreateScheduleResponse, error) {
	s.f.record(req)
	schedule := proto.Clone(req.GetSchedule()).(*osvcv1.Schedule)
	schedule.Name = req.GetParent() + "/schedules/s-9"
	return &osvcv1.CreateScheduleResponse{Schedule: schedule, Run: &osvcv1.Run{
		Name: "runs/r-9", Image: req.GetParent(), Schedule: schedule.GetName(), State: osvcv1.RunState_RUN_STATE_PENDING,
		Updates: schedule.GetUpdates(),
	}}, nil
}

func (s *fakeServicing) GetRun(_ context.Context, req *osvcv1.GetRunRequest) (*osvcv1.GetRunResponse, error) {
	s.f.record(req)
	for _, r := range []*osvcv1.Run{cannedRun, cannedHeldRun, cannedCanceledRun} {
		if r.GetName() == req.GetName() {
			return &osvcv1.GetRunResponse{Run: r}, nil
		}
	}
	s.f.mu.Lock()
	r, ok := s.f.runs[req.GetName()]
	s.f.mu.Unlock()
	if ok {
		return &osvcv1.GetRunResponse{Run: r}, nil
	}
	return nil, status.Errorf(codes.NotFound, "run %s not found", req.GetName())
}

func (s *fakeServicing) ListRuns(_ context.Context, req *osvcv1.ListRunsRequest) (*osvcv1.ListRunsResponse, error) {
	s.f.record(req)
	return &osvcv1.ListRunsResponse{Runs: []*osvcv1.Run{cannedRun}}, nil
}

func (s *fakeServicing) WatchRun(req *osvcv1.WatchRunRequest, stream grpc.ServerStreamingServer[osvcv1.WatchRunResponse]) error {
	s.f.record(req)
	s.f.mu.Lock()
	script, ok := s.f.watches[req.GetName()]
	breakAfter, breaks := s.f.breaks[req.GetName()]
	delete(s.f.breaks, req.GetName())
	s.f.mu.Unlock()
	if !ok {
		return status.Errorf(codes.NotFound, "run %s not found", req.GetName())
	}
	if breaks {
		for _, resp := range script[:breakAfter] {
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
		return status.Error(codes.Unavailable, "server shutting down")
	}
	// A watch resumed after a log line starts at the snapshot that follows it.
	for len(script) > 0 && req.GetAfterSequence() > 0 && !hasLinesAfter(script[0], req.GetAfterSequence()) {
		script = script[1:]
	}
	// A snapshot is the run as it is now, the script's first message: the
	// lines in it come in two messages, as a long log does.
	if req.GetSnapshotOnly() && len(script) > 0 {
		first := script[0]
		half := len(first.GetLogLines()) / 2
		script = []*osvcv1.WatchRunResponse{
			{Run: first.GetRun(), LogLines: first.GetLogLines()[:half]},
			{Run: first.GetRun(), LogLines: first.GetLogLines()[half:]},
		}
	}
	for _, resp := range script {
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	s.f.mu.Lock()
	held := s.f.holds[req.GetName()]
	delete(s.f.holds, req.GetName())
	s.f.mu.Unlock()
	if held != nil {
		close(held)
		<-stream.Context().Done()
	}
	return nil
}

func hasLinesAfter(resp *osvcv1.WatchRunResponse, seq int64) bool {
	for _, l := range resp.GetLogLines() {
		if l.GetSequence() > seq {
			return true
		}
	}
	return false
}

func (s *fakeServicing) CancelRun(_ context.Context, req *osvcv1.CancelRunRequest) (*osvcv1.CancelRunResponse, error) {
	s.f.record(req)
	run := proto.Clone(cannedRun).(*osvcv1.Run)
	run.Name, run.State, run.CancelRequested = req.GetName(), osvcv1.RunState_RUN_STATE_IN_PROCESS, true
	return &osvcv1.CancelRunResponse{Run: run}, nil
}

type fakeAgents struct {
	osvcv1.UnimplementedAgentServiceServer
	f *fakeOsvc
}

func (s *fakeAgents) ListAgents(_ context.Context, req *osvcv1.ListAgentsRequest) (*osvcv1.ListAgentsResponse, error) {
	s.f.record(req)
	return &osvcv1.ListAgentsResponse{Agents: cannedAgents}, nil
}

// fakeContent keeps uploaded blobs in memory, checking the sha256 the client
// announced against the data it sent.
type fakeContent struct {
	osvcv1.UnimplementedContentServiceServer
	f *fakeOsvc
}

func (s *fakeContent) GetContent(_ context.Context, req *osvcv1.GetContentRequest) (*osvcv1.GetContentResponse, error) {
	s.f.mu.Lock()
	blob, ok := s.f.blobs[req.GetSha256()]
	s.f.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.NotFound, "content %s not found", req.GetSha256())
	}
	return &osvcv1.GetContentResponse{Content: &osvcv1.Content{
		Name: "contents/" + req.GetSha256(), Sha256: req.GetSha256(), SizeBytes: int64(len(blob))}}, nil
}

// Read serves a blob in chunks of 4 bytes, so a file comes in several.
func (s *fakeContent) Read(req *osvcv1.ReadRequest, stream grpc.ServerStreamingServer[osvcv1.ReadResponse]) error {
	s.f.mu.Lock()
	blob, ok := s.f.blobs[req.GetSha256()]
	if ok && s.f.damaged[req.GetSha256()] {
		blob = append(slices.Clone(blob[:len(blob)-1]), blob[len(blob)-1]^1)
	}
	s.f.mu.Unlock()
	if !ok {
		return status.Errorf(codes.NotFound, "content %s not found", req.GetSha256())
	}
	for off := int(req.GetOffset()); off < len(blob) || off == 0; off += 4 {
		resp := &osvcv1.ReadResponse{Offset: int64(off), Data: blob[off:min(off+4, len(blob))]}
		if off == int(req.GetOffset()) {
			resp.SizeBytes = int64(len(blob))
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		if len(blob) == 0 {
			break
		}
	}
	return nil
}

func (s *fakeContent) Write(stream grpc.ClientStreamingServer[osvcv1.WriteRequest, osvcv1.WriteResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	header := first.GetHeader()
	if header == nil {
		return status.Error(codes.InvalidArgument, "the first message must be the header")
	}
	if header.GetSha256() != "" {
		s.f.mu.Lock()
		blob, ok := s.f.blobs[header.GetSha256()]
		s.f.mu.Unlock()
		if ok {
			return stream.SendAndClose(&osvcv1.WriteResponse{Existed: true, Content: &osvcv1.Content{
				Name: "contents/" + header.GetSha256(), Sha256: header.GetSha256(), SizeBytes: int64(len(blob)), MediaType: header.GetMediaType()}})
		}
	}
	var data []byte
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		data = append(data, req.GetData()...)
	}
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	if header.GetSha256() != "" && header.GetSha256() != sha {
		return status.Errorf(codes.InvalidArgument, "sha256 %s announced, %s received", header.GetSha256(), sha)
	}
	s.f.mu.Lock()
	s.f.blobs[sha] = data
	s.f.mu.Unlock()
	return stream.SendAndClose(&osvcv1.WriteResponse{Content: &osvcv1.Content{
		Name: "contents/" + sha, Sha256: sha, SizeBytes: int64(len(data)), MediaType: header.GetMediaType()}})
}
