package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
)

// TestAServicedVersionReachesTheDistributionPointsOfTheSiteAndTheSitesBelow
// runs PS1 with a servicing agent and a distribution point that asked for
// the role itself, and SS1 below it whose setting names its distribution
// point. The sample is serviced by a schedule that updates the distribution
// points: both fetch version 2, report it DISTRIBUTED, and serve it over
// HTTP with range requests; version 1, never distributed, went nowhere.
func TestAServicedVersionReachesTheDistributionPointsOfTheSiteAndTheSitesBelow(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t)
	if out := c.osvcctl(t, "site", "create", "SS1", "--parent", "PS1", "--distribution-point", "dp-ss1"); !strings.Contains(out, "created sites/SS1") {
		t.Fatalf("osvcctl site create SS1 printed %q", out)
	}
	c.sites["SS1"] = true
	startDP := func(name, site string, flag ...string) {
		dir := filepath.Join(t.TempDir(), name)
		args := append(c.agentArgsAt(t, name, dir, site), append([]string{"--dp-listen", freeAddr(t)}, flag...)...)
		start(t, "osvc-agent", args...)
		c.waitAgent(t, name, osvcv1.AgentState_AGENT_STATE_CONNECTED, time.Time{})
	}
	startDP("dp-ps1", "PS1", "--distribution-point")
	startDP("dp-ss1", "SS1")

	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir(), PayloadBytes: 512 << 10})
	if err != nil {
		t.Fatal(err)
	}
	img, updates := c.importSample(t, sample)
	var names []string
	for _, u := range updates {
		names = append(names, u.GetName())
	}
	created, err := c.svc.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{
		Parent: img.GetName(), Schedule: &osvcv1.Schedule{Updates: names, ContinueOnError: true, UpdateDistributionPoints: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	run, _ := c.watch(t, created.GetRun().GetName())
	if run.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || run.GetResultVersion() != 2 {
		t.Fatalf("run ended %s at version %d: %s", run.GetState(), run.GetResultVersion(), run.GetError())
	}

	dist := osvcv1.NewDistributionServiceClient(dialToken(t, c.addr, c.caFile(), c.adminToken(t)))
	var points []*osvcv1.DistributionPoint
	eventually(t, 2*time.Minute, "version 2 to be distributed to dp-ps1 and dp-ss1", func() bool {
		resp, err := dist.ListDistributionPoints(ctx, &osvcv1.ListDistributionPointsRequest{})
		if err != nil {
			return false
		}
		points = resp.GetDistributionPoints()
		done := 0
		for _, p := range points {
			for _, d := range p.GetDistributions() {
				if d.GetState() == osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED && d.GetDistributedVersion() == 2 {
					done++
				}
			}
		}
		return done == 2
	})
	if len(points) != 2 || points[0].GetName() != "agents/dp-ps1" || points[0].GetRoleFrom()[0] != "agent" ||
		points[1].GetName() != "agents/dp-ss1" || points[1].GetRoleFrom()[0] != "site" {
		t.Fatalf("distribution points: %v", points)
	}

	got := c.image(t, img.GetName())
	if got.GetDistributionVersion() != 2 || len(got.GetDistributions()) != 2 {
		t.Fatalf("image: distribution version %d, %d distributions; want 2 and 2", got.GetDistributionVersion(), len(got.GetDistributions()))
	}
	want := run.GetResultSha256()
	for _, p := range points {
		url := strings.TrimSuffix(p.GetUrl(), "/") + "/" + img.GetName()
		whole := httpGet(t, url, "")
		if sum := sha256.Sum256(whole); hex.EncodeToString(sum[:]) != want {
			t.Fatalf("GET %s: %d bytes that are not version 2", url, len(whole))
		}
		if part := httpGet(t, url, "bytes=100-4195"); string(part) != string(whole[100:4196]) {
			t.Fatalf("ranged GET %s: %d bytes, not the range asked", url, len(part))
		}
	}
	if out := c.osvcctl(t, "dp", "list"); !lineWith(out, "agents/dp-ss1", "SS1", "DISTRIBUTED", "version 2") {
		t.Fatalf("osvcctl dp list:\n%s", out)
	}
	if out := c.osvcctl(t, "image", "get", img.GetName()); !lineWith(out, "agents/dp-ps1", "PS1", "DISTRIBUTED", "version 2") {
		t.Fatalf("osvcctl image get:\n%s", out)
	}
}

// httpGet GETs url, with a Range header when rng is set, and returns the body.
func httpGet(t *testing.T, url, rng string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := http.StatusOK
	if rng != "" {
		req.Header.Set("Range", rng)
		want = http.StatusPartialContent
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != want {
		t.Fatalf("GET %s (%s): %s %s", url, rng, resp.Status, body)
	}
	return body
}
