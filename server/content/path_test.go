package content

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzPath checks that a sha256 from a client never names a path outside the
// library's directory: it is a blob path inside it, or "".
func FuzzPath(f *testing.F) {
	f.Add(strings.Repeat("a", 64))
	f.Add("../../etc/passwd")
	f.Add(strings.Repeat("A", 64))
	f.Add("")
	dir := filepath.Join(f.TempDir(), "library")
	d := &dirStore{dir: dir}
	f.Fuzz(func(t *testing.T, sha string) {
		p := d.path(sha)
		if p == "" {
			if ValidSHA256(sha) {
				t.Fatalf("Path(%q) is empty for a valid sha256", sha)
			}
			return
		}
		if want := filepath.Join(dir, sha[:2], sha); p != want {
			t.Fatalf("Path(%q) = %q, want %q", sha, p, want)
		}
		if rel, err := filepath.Rel(dir, p); err != nil || strings.HasPrefix(rel, "..") {
			t.Fatalf("Path(%q) = %q escapes %q", sha, p, dir)
		}
	})
}
