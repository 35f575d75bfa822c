package mountinfo

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestParseReadsMountPointsAndTypes(t *testing.T) {
	t.Parallel()
	table := `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
41 22 0:38 / /srv/work\040folder/r-1/mount rw,nosuid,nodev,relatime shared:20 - fuse.wimfs wimfs rw,user_id=0,group_id=0
42 22 0:39 / /tmp rw - tmpfs tmpfs rw

short line
`
	got := parse(table)
	want := []Mount{{"/", "ext4"}, {"/srv/work folder/r-1/mount", "fuse.wimfs"}, {"/tmp", "tmpfs"}}
	if !slices.Equal(got, want) {
		t.Errorf("parse = %v, want %v", got, want)
	}
}

func TestUnescapeUndoesTheKernelsOctalEscapes(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{`/tmp/a\040b`, "/tmp/a b"},
		{`/plain`, "/plain"},
		{`/tab\011here`, "/tab\there"},
		{`/trailing\04`, `/trailing\04`},
	}
	for _, tt := range tests {
		if got := unescape(tt.in); got != tt.want {
			t.Errorf("unescape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestTheRootIsAMountPointAndAFolderIsNot(t *testing.T) {
	t.Parallel()
	if !IsMountPoint("/") {
		t.Error("IsMountPoint(/) = false")
	}
	dir := t.TempDir()
	if IsMountPoint(dir) {
		t.Errorf("IsMountPoint(%s) = true for a plain folder", dir)
	}
	mounts, err := Under(dir)
	if err != nil || len(mounts) != 0 {
		t.Errorf("Under(%s) = %v, %v; want no mounts", dir, mounts, err)
	}
}

func TestAPathThroughASymlinkIsComparedAsTheKernelListsIt(t *testing.T) {
	t.Parallel()
	link := filepath.Join(t.TempDir(), "root-link")
	if err := os.Symlink("/", link); err != nil {
		t.Fatal(err)
	}
	// link/proc resolves to /proc, which the kernel lists as a mount point.
	if !IsMountPoint(filepath.Join(link, "proc")) {
		t.Errorf("IsMountPoint(%s/proc) = false, want the mount of /proc found through the symlink", link)
	}
}
