package updatepkg_test

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/updatepkg"
	"github.com/osvc/osvc/pkg/updatepkg/updatepkgtest"
)

func TestOpenRefusesEveryHostilePackage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range updatepkgtest.Hostile(t) {
		t.Run(tc.Name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), tc.File)
			if err := os.WriteFile(path, tc.Data, 0o644); err != nil {
				t.Fatal(err)
			}
			p, err := updatepkg.OpenAs(path, tc.File)
			if err == nil {
				_, serr := p.Stage(filepath.Join(dir, "stage"))
				t.Fatalf("Open accepted it (Stage: %v)", serr)
			}
			if !errors.Is(err, updatepkg.ErrInvalid) {
				t.Errorf("Open = %v, want ErrInvalid", err)
			}
			if !strings.HasPrefix(err.Error(), tc.File+": ") || !strings.Contains(err.Error(), tc.Want) {
				t.Errorf("Open = %q, want it to start with the file name and say %q", err, tc.Want)
			}
		})
	}
}

// Headers that claim gigabytes must not make the reader allocate them:
// memory follows the data, not the claims.
func TestLyingSizesCostNoMemory(t *testing.T) {
	for _, tc := range updatepkgtest.Hostile(t) {
		if tc.Claims == 0 {
			continue
		}
		t.Run(tc.Name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tc.File)
			if err := os.WriteFile(path, tc.Data, 0o644); err != nil {
				t.Fatal(err)
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err := updatepkg.Open(path)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, updatepkg.ErrInvalid) {
				t.Fatalf("Open = %v, want ErrInvalid", err)
			}
			if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(16<<20); got > limit {
				t.Errorf("Open allocated %d bytes for a file of %d claiming %d; want under %d", got, len(tc.Data), tc.Claims, limit)
			}
		})
	}
}

func TestOpenAcceptsTheComponentArchitecturesWindowsInstalls(t *testing.T) {
	t.Parallel()
	for arch, comps := range map[string][]string{
		"amd64":   {"amd64", "wow64", "x86", "msil", "neutral"},
		"arm64":   {"arm64", "wow64", "x86", "amd64", "msil", "neutral"},
		"x86":     {"x86", "msil", "neutral"},
		"neutral": {"msil", "neutral"},
	} {
		path := filepath.Join(t.TempDir(), "kb-"+arch+".cab")
		if err := os.WriteFile(path, updatepkgtest.PackageWith(t, "KB5099003", arch, comps...), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := updatepkg.Open(path); err != nil {
			t.Errorf("a %s package of %v components: %v", arch, comps, err)
		}
	}
}
