package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/updatepkg/updatepkgtest"
)

// osvcctlCmd is osvcctl against the cluster's server, with its admin token.
func (c *cluster) osvcctlCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(binDir, "osvcctl"), append([]string{"--server", c.addr, "--ca-file", c.caFile()}, args...)...)
	cmd.Env = append(os.Environ(), "OSVC_TOKEN_FILE="+c.adminTokenFile())
	return cmd
}

// osvcctl runs osvcctl against the cluster's server and returns its output.
func (c *cluster) osvcctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.osvcctlCmd(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("osvcctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// An administrator imports update files as Microsoft ships them (built
// from their public structure, see updatepkgtest's windows.go) and sees
// what was read: osvcctl update import lists them, update get shows each.
func TestUpdateImportOfMicrosoftFilesShowsTheirMetadata(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	dir := t.TempDir()
	lcu, ssu := updatepkgtest.KB5005565(), updatepkgtest.ServicingStack19041()
	files := map[string][]byte{
		// A combined MSU: servicing stack and cumulative update, Windows
		// Update metadata, properties and unattend files.
		"windows10.0-kb5005565-x64_2b4b6f3f1c7d8e9a.msu": updatepkgtest.WindowsMSUFile(t, updatepkgtest.WindowsMSU{
			Packages: []updatepkgtest.WindowsPackage{ssu, lcu}, Main: lcu, Properties: true, Unattend: true, WindowsUpdate: true}),
		// Windows 11, version 24H2: an MSU that is a WIM archive.
		"windows11.0-kb5043080-x64_953449672073f8fb99badb4cc6d5d7849b9c83e8.msu": append([]byte("MSWIM\x00\x00\x00"), make([]byte, 200)...),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := c.osvcctl(t, "update", "import", dir)
	for _, row := range [][]string{
		{"updates/kb5005565-x64", "KB5005565", "Security Update for Windows 10 (KB5005565)", "x64", "2021-09-03", "19041", "dism"},
		{"updates/kb5043080-x64", "KB5043080", "windows11.0-kb5043080-x64_953449672073f8fb99badb4cc6d5d7849b9c83e8.msu", "x64", "any", "dism"},
	} {
		if !lineWith(out, row...) {
			t.Errorf("update import does not show a row with %q:\n%s", row, out)
		}
	}
	get := c.osvcctl(t, "update", "get", "kb5005565-x64")
	for _, want := range []string{
		"KB:               KB5005565",
		"Title:            Security Update for Windows 10 (KB5005565)",
		"Classification:   Cumulative Update",
		"Architecture:     x64",
		"Package identity: Package_for_RollupFix~31bf3856ad364e35~amd64~~19041.1237.1.4",
		"Products:         Windows 10",
		"OS builds:        19041",
		"Engines:          dism",
		"Unsupported:      the wimlib engine does not install it: SSU-19041.1161-x64.cab: it is signed with Windows' catalogs",
		"windows10.0-kb5005565-x64_2b4b6f3f1c7d8e9a.msu",
	} {
		if !strings.Contains(get, want) {
			t.Errorf("update get does not show %q:\n%s", want, get)
		}
	}
}

// lineWith tells whether one line of out holds every word, in order.
func lineWith(out string, words ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		rest, ok := line, true
		for _, w := range words {
			i := strings.Index(rest, w)
			if i < 0 {
				ok = false
				break
			}
			rest = rest[i+len(w):]
		}
		if ok {
			return true
		}
	}
	return false
}
