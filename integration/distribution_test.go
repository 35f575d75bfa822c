package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
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
	dirs := map[string]string{}
	startDP := func(name, site string, flag ...string) *proc {
		if dirs[name] == "" {
			dirs[name] = filepath.Join(t.TempDir(), name)
		}
		args := append(c.agentArgsAt(t, name, dirs[name], site), append([]string{"--dp-listen", freeAddr(t)}, flag...)...)
		p := start(t, "osvc-agent", args...)
		c.waitAgent(t, name, osvcv1.AgentState_AGENT_STATE_CONNECTED, time.Now())
		return p
	}
	startDP("dp-ps1", "PS1", "--distribution-point")
	// dp-ss1 serves HTTPS with a certificate of the site's own PKI.
	certFile, keyFile, roots := selfSigned(t)
	dpSS1 := startDP("dp-ss1", "SS1", "--dp-tls-cert", certFile, "--dp-tls-key", keyFile)

	// Large enough to be stored and sent as chunks.
	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir(), PayloadBytes: 12 << 20})
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

	// The server keeps both versions as chunks, those they share once.
	contents := osvcv1.NewContentServiceClient(dialToken(t, c.addr, c.caFile(), c.adminToken(t)))
	for _, v := range []string{img.GetVersions()[0].GetSha256(), run.GetResultSha256()} {
		resp, err := contents.GetContent(ctx, &osvcv1.GetContentRequest{Sha256: v})
		if err != nil || !resp.GetContent().GetStoredAsChunks() {
			t.Fatalf("the library's record of %s: %v, %v; want it stored as chunks", v, resp.GetContent(), err)
		}
	}

	got := c.image(t, img.GetName())
	if got.GetDistributionVersion() != 2 || len(got.GetDistributions()) != 2 {
		t.Fatalf("image: distribution version %d, %d distributions; want 2 and 2", got.GetDistributionVersion(), len(got.GetDistributions()))
	}
	want := run.GetResultSha256()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	for i, p := range points {
		url := strings.TrimSuffix(p.GetUrl(), "/") + "/" + img.GetName()
		if scheme := []string{"http://", "https://"}[i]; !strings.HasPrefix(url, scheme) {
			t.Fatalf("%s serves at %s, want %s", p.GetName(), url, scheme)
		}
		whole := httpGet(t, client, url, "")
		if sum := sha256.Sum256(whole); hex.EncodeToString(sum[:]) != want {
			t.Fatalf("GET %s: %d bytes that are not version 2", url, len(whole))
		}
		if part := httpGet(t, client, url, "bytes=100-4195"); string(part) != string(whole[100:4196]) {
			t.Fatalf("ranged GET %s: %d bytes, not the range asked", url, len(part))
		}
	}
	if out := c.osvcctl(t, "dp", "list"); !lineWith(out, "agents/dp-ss1", "SS1", "DISTRIBUTED", "version 2", "received") {
		t.Fatalf("osvcctl dp list:\n%s", out)
	}
	if out := c.osvcctl(t, "image", "get", img.GetName()); !lineWith(out, "agents/dp-ps1", "PS1", "DISTRIBUTED", "version 2") {
		t.Fatalf("osvcctl image get:\n%s", out)
	}

	// SS1 drops its distribution point while the agent is down: started
	// again, it serves what it kept until the server withdraws the image,
	// and then drops its file.
	dpSS1.stop(t)
	c.osvcctl(t, "site", "update", "SS1", "--distribution-point", "")
	eventually(t, time.Minute, "dp-ss1 to lose the role", func() bool {
		resp, err := dist.ListDistributionPoints(ctx, &osvcv1.ListDistributionPointsRequest{})
		return err == nil && len(resp.GetDistributionPoints()) == 1
	})
	stored := filepath.Join(dirs["dp-ss1"], "distribution", "store", want)
	if _, err := os.Stat(stored); err != nil {
		t.Fatalf("dp-ss1's copy of version 2 before it restarts: %v", err)
	}
	startDP("dp-ss1", "SS1", "--dp-tls-cert", certFile, "--dp-tls-key", keyFile)
	eventually(t, time.Minute, "dp-ss1 to drop the withdrawn image", func() bool {
		_, err := os.Stat(stored)
		return errors.Is(err, os.ErrNotExist)
	})
}

// httpGet GETs url, with a Range header when rng is set, and returns the body.
func httpGet(t *testing.T, client *http.Client, url, rng string) []byte {
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
	resp, err := client.Do(req)
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

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key,
// and returns them with a pool trusting the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "dp-ss1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "dp.crt"), filepath.Join(dir, "dp.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots
}
