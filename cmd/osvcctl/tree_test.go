package main

import (
	"archive/tar"
	"os"
	"path/filepath"
	"strings"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/packagetree"
)

// upgradeFiles is a small OS upgrade package.
var upgradeFiles = map[string]string{
	"setup.exe":           "MZ setup",
	"boot/bcd":            "boot configuration",
	"efi/boot/bcd":        "boot configuration",
	"sources/ei.cfg":      "",
	"sources/install.wim": "MSWIM\x00 the image",
}

func writeUpgrade(t *testing.T, dir string) {
	t.Helper()
	for p, data := range upgradeFiles {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// checkTreeImport checks the one ImportImage request f got: an upgrade
// package under id whose manifest and files were uploaded.
func checkTreeImport(t *testing.T, f *fakeOsvc, id string) {
	t.Helper()
	reqs := requestsOf[*osvcv1.ImportImageRequest](f)
	if len(reqs) != 1 {
		t.Fatalf("ImportImage requests = %v", reqs)
	}
	req := reqs[0]
	if req.GetImageId() != id || req.GetKind() != osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE || req.GetTreeSha256() == "" {
		t.Fatalf("ImportImage request %v, want an upgrade package %s with its tree", req, id)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	tree, err := packagetree.Parse(f.blobs[req.GetTreeSha256()])
	if err != nil {
		t.Fatalf("the uploaded manifest: %v", err)
	}
	if len(tree.GetFiles()) != len(upgradeFiles) || packagetree.Install(tree).GetSha256() != req.GetContentSha256() {
		t.Errorf("manifest %v, request %v", tree, req)
	}
	for _, file := range tree.GetFiles() {
		if want := upgradeFiles[file.GetPath()]; want != "" && string(f.blobs[file.GetSha256()]) != want {
			t.Errorf("%s: blob %q, want %q", file.GetPath(), f.blobs[file.GetSha256()], want)
		}
	}
	// Each content once, the empty file none: the manifest, and four blobs for five files.
	if len(f.blobs) != 4 {
		t.Errorf("%d blobs uploaded, want the manifest and 3 files", len(f.blobs))
	}
}

func TestImageImportOfAFolderUploadsItsTreeAsAnUpgradePackage(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	dir := filepath.Join(t.TempDir(), "Win11 upgrade")
	writeUpgrade(t, dir)
	out := mustRun(t, f.addr, "image", "import", dir, "--site", "PS1")
	assertContainsInOrder(t, out, "imported images/win11-upgrade")
	checkTreeImport(t, f, "win11-upgrade")
}

func TestImageImportOfATarUploadsItsTree(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "win11-upgrade.tar")
	out, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(out)
	for p, data := range upgradeFiles {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Size: int64(len(data)), Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	out.Close()
	staging := t.TempDir()
	mustRun(t, f.addr, "image", "import", file, "--site", "PS1", "--staging-dir", staging)
	checkTreeImport(t, f, "win11-upgrade")
	if names, _ := os.ReadDir(staging); len(names) != 0 {
		t.Errorf("the staging folder keeps %v after the import", names)
	}
}

func TestImageImportOfAHostileTarIsRefusedBeforeAnyUpload(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	file := filepath.Join(t.TempDir(), "evil.tar")
	out, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(out)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "../../escaped", Size: 1, Mode: 0o644})
	tw.Write([]byte("x"))
	tw.Close()
	out.Close()
	_, stderr, err := osvcctl(t, f.addr, "image", "import", file, "--site", "PS1", "--staging-dir", t.TempDir())
	if err == nil || !strings.Contains(stderr, `tar entry "../../escaped"`) || !strings.Contains(stderr, `".."`) {
		t.Errorf("err %v, stderr %q; want the entry named", err, stderr)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.blobs) != 0 {
		t.Errorf("%d blobs uploaded, want none", len(f.blobs))
	}
}
