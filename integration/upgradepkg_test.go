package integration

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
)

// upgradePackage writes an OS upgrade package's folder tree as
// Configuration Manager keeps one around the sample's install.wim, and
// returns its files, path → content (install.wim excluded).
func upgradePackage(t *testing.T, dir, wim string) map[string]string {
	t.Helper()
	files := map[string]string{
		"setup.exe":                      "MZ the package's setup",
		"autorun.inf":                    "[AutoRun.Amd64]\r\nopen=setup.exe\r\n",
		"boot/bcd":                       strings.Repeat("boot configuration ", 300),
		"boot/fonts/segmono_boot.ttf":    "a font",
		"efi/microsoft/boot/bcd":         strings.Repeat("boot configuration ", 300),
		"sources/ei.cfg":                 "",
		"sources/setup.exe":              "MZ the inner setup",
		"sources/boot.wim":               strings.Repeat("not serviced: a WinPE image ", 1000),
		"sources/en-us/setup.exe.mui":    "resources",
		"support/logging/copylogs.cmd":   "@echo off\r\n",
		"sources/dlmanifests/x/dl.inf":   "[x]",
		"sources/sxs/microsoft-w.cab":    "MSCF features on demand",
		"sources/replacementmanifests/a": "a manifest",
	}
	for p, data := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(wim)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sources", "install.wim"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return files
}

// tarGz writes the tree under dir as a gzip-compressed tar, as
// `tar -C dir -czf file .` does, and extra entries after it.
func tarGz(t *testing.T, dir, file string, extra ...*tar.Header) {
	t.Helper()
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		name := "./" + filepath.ToSlash(rel)
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimSuffix(name, ".") + "/", Mode: 0o755})
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(data)), Mode: 0o644}); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range extra {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []interface{ Close() error }{tw, zw} {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// readFiles reads every file under dir, path → content.
func readFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		got[filepath.ToSlash(rel)] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// An OS upgrade package imported as a folder tree (and as a tar of it) is
// serviced for real on the wimlib engine: the new version's tree is the
// package with its sources/install.wim serviced, every other file byte for
// byte as imported, and both versions come back out as folders.
func TestAnUpgradePackageTreeIsServicedAndKeepsEveryOtherFile(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t)
	dpAddr := freeAddr(t)
	start(t, "osvc-agent", append(c.agentArgs(t, "dp-ps1", filepath.Join(t.TempDir(), "dp-ps1")), "--distribution-point", "--dp-listen", dpAddr)...)
	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir(), PayloadBytes: 512 << 10})
	if err != nil {
		t.Fatal(err)
	}
	updates := c.importUpdates(t, sample)
	pkg := filepath.Join(t.TempDir(), "Win11_23H2_upgrade")
	others := upgradePackage(t, pkg, sample.WIM)
	sourceSHA := fileSHA256(t, sample.WIM)

	out := c.osvcctl(t, "image", "import", pkg, "--site", "PS1", "--id", "win11-upgrade")
	if !strings.Contains(out, "Package tree:") || !strings.Contains(out, "Kind:             os-upgrade-package") {
		t.Errorf("import printed\n%s\nwant the upgrade package and its tree", out)
	}
	img := c.image(t, "images/win11-upgrade")
	v1 := version(img, 1)
	if v1.GetSha256() != sourceSHA || v1.GetTree().GetFileCount() != int32(len(others)+1) {
		t.Fatalf("version 1 is %v, want the package's install.wim %s in a tree of %d files", v1, sourceSHA, len(others)+1)
	}
	img = c.inspected(t, img.GetName(), v1.GetInspectionRun())

	t.Run("a tar of the same package is the same tree", func(t *testing.T) {
		tarFile := filepath.Join(t.TempDir(), "win11-upgrade-tar.tar.gz")
		tarGz(t, pkg, tarFile)
		c.osvcctl(t, "image", "import", tarFile, "--site", "PS1")
		fromTar := version(c.image(t, "images/win11-upgrade-tar"), 1)
		if fromTar.GetTree().GetSha256() != v1.GetTree().GetSha256() || fromTar.GetSha256() != sourceSHA {
			t.Errorf("the tar's version 1 is %v, want the folder's tree %s", fromTar, v1.GetTree().GetSha256())
		}
	})

	t.Run("a tar holding a link is refused, naming it", func(t *testing.T) {
		tarFile := filepath.Join(t.TempDir(), "hostile.tar.gz")
		tarGz(t, pkg, tarFile, &tar.Header{Typeflag: tar.TypeSymlink, Name: "./sources/passwd", Linkname: "/etc/passwd"})
		out, err := c.osvcctlCmd("image", "import", tarFile, "--site", "PS1", "--id", "hostile").CombinedOutput()
		if err == nil || !strings.Contains(string(out), `tar entry "./sources/passwd"`) || !strings.Contains(string(out), "symbolic link") {
			t.Errorf("import of a tar with a link: %v\n%s", err, out)
		}
	})

	t.Run("an image without a tree is exported as its WIM", func(t *testing.T) {
		c.osvcctl(t, "image", "import", sample.WIM, "--site", "PS1", "--id", "win11-plain")
		dir := filepath.Join(t.TempDir(), "plain")
		c.osvcctl(t, "image", "export", "win11-plain", "--to", dir)
		if sha := fileSHA256(t, filepath.Join(dir, "install.wim")); sha != sourceSHA {
			t.Errorf("exported %s, want the imported WIM %s", sha, sourceSHA)
		}
	})

	var names []string
	for _, u := range updates {
		names = append(names, u.GetName())
	}
	created, err := c.svc.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: img.GetName(),
		Schedule: &osvcv1.Schedule{Updates: names, ContinueOnError: true, RemoveSuperseded: true, UpdateDistributionPoints: true}})
	if err != nil {
		t.Fatal(err)
	}
	run, _ := c.watch(t, created.GetRun().GetName())
	if run.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || run.GetResultVersion() != 2 {
		t.Fatalf("run ended %v at version %d: %s", run.GetState(), run.GetResultVersion(), run.GetError())
	}
	v2 := version(c.image(t, img.GetName()), 2)
	if v2.GetSha256() != run.GetResultSha256() || v2.GetTree() == nil || v2.GetTree().GetFileCount() != v1.GetTree().GetFileCount() {
		t.Fatalf("version 2 is %v, want the run's result %s in a tree of %d files", v2, run.GetResultSha256(), v1.GetTree().GetFileCount())
	}

	t.Run("version 2 is the package with its install.wim serviced", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "v2")
		c.osvcctl(t, "image", "export", "win11-upgrade", "--to", dir)
		got := readFiles(t, dir)
		for p, data := range others {
			if got[p] != data {
				t.Errorf("%s differs from the imported package's", p)
			}
		}
		if len(got) != len(others)+1 {
			t.Errorf("%d files, want %d", len(got), len(others)+1)
		}
		wim := filepath.Join(dir, "sources", "install.wim")
		if sha := fileSHA256(t, wim); sha != run.GetResultSha256() || sha == sourceSHA {
			t.Errorf("install.wim is %s, want the serviced %s", sha, run.GetResultSha256())
		}
		if info := wimlib(t, "info", wim); !strings.Contains(info, "Windows 11") {
			t.Errorf("wimlib-imagex info of the exported install.wim:\n%s", info)
		}
	})

	t.Run("version 1 comes out as imported", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "v1")
		c.osvcctl(t, "image", "export", "win11-upgrade", "--version", "1", "--to", dir)
		want := readFiles(t, pkg)
		got := readFiles(t, dir)
		if len(got) != len(want) {
			t.Errorf("%d files, want %d", len(got), len(want))
		}
		for p, data := range want {
			if got[p] != data {
				t.Errorf("%s differs from the imported package's", p)
			}
		}
	})

	t.Run("the distribution point serves version 2's whole tree", func(t *testing.T) {
		eventually(t, 2*time.Minute, "version 2 to be distributed", func() bool {
			ds := c.image(t, img.GetName()).GetDistributions()
			return len(ds) == 1 && ds[0].GetState() == osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED && ds[0].GetDistributedVersion() == 2
		})
		base := "http://" + dpAddr + "/images/win11-upgrade/"
		for p, data := range others {
			if got := httpGet(t, http.DefaultClient, base+p, ""); string(got) != data {
				t.Errorf("GET %s: %d bytes, not the package's", base+p, len(got))
			}
		}
		wim := httpGet(t, http.DefaultClient, base+"Sources/Install.wim", "")
		if sum := sha256.Sum256(wim); hex.EncodeToString(sum[:]) != run.GetResultSha256() {
			t.Errorf("GET %sSources/Install.wim: not the serviced install.wim", base)
		}
	})

	t.Run("image get shows both trees", func(t *testing.T) {
		out := c.osvcctl(t, "image", "get", "win11-upgrade")
		if !strings.Contains(out, "Package tree:") || strings.Count(out, "14 files") < 3 {
			t.Errorf("image get:\n%s", out)
		}
	})
}
