package wimlib

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/updatepkg/updatepkgtest"
)

// tree describes every file and folder under root: path, type, size and
// modification time, so that any write shows.
func tree(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fmt.Fprintf(&b, "%s %s %d %d\n", rel, info.Mode(), info.Size(), info.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestAddPackageRefusesEveryHostilePackageAndWritesNothing(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	m := mount(t, e, copyWIM(t))
	t.Cleanup(func() { _ = e.Unmount(context.Background(), m, false) })
	// The mount folder's parent holds the staging folders; the files
	// come from a folder of their own beside it.
	work := filepath.Dir(m.Dir)
	files := t.TempDir()
	for i, tc := range updatepkgtest.Hostile(t) {
		t.Run(tc.Name, func(t *testing.T) {
			dir := filepath.Join(files, fmt.Sprintf("%02d", i))
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, tc.File)
			if err := os.WriteFile(path, tc.Data, 0o644); err != nil {
				t.Fatal(err)
			}
			image, around, beside := tree(t, m.Dir), tree(t, work), tree(t, dir)
			outcome, err := e.AddPackage(context.Background(), m, path, nil)
			if err == nil {
				t.Fatalf("AddPackage = %s, want it refused", outcome)
			}
			if !strings.Contains(err.Error(), tc.File) || !strings.Contains(err.Error(), tc.Want) {
				t.Errorf("error %q does not name %s and say %q", err, tc.File, tc.Want)
			}
			if got := tree(t, m.Dir); got != image {
				t.Errorf("the image changed:\nbefore\n%safter\n%s", image, got)
			}
			if got := tree(t, work); got != around {
				t.Errorf("the work folder changed:\nbefore\n%safter\n%s", around, got)
			}
			if got := tree(t, dir); got != beside {
				t.Errorf("the package's folder changed:\nbefore\n%safter\n%s", beside, got)
			}
		})
	}
}
