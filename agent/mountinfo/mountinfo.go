// Package mountinfo reads the kernel's table of this process's mounts
// (/proc/self/mountinfo): which folders are mount points, and of what type.
// The engine asks it whether its mount folder is still mounted; the pipeline
// asks it which mounts a crashed run left in a work folder.
package mountinfo

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// table is where the kernel lists this process's mounts.
const table = "/proc/self/mountinfo"

// Mount is one mount point.
type Mount struct {
	Dir string
	// FSType is the file system type, e.g. fuse.wimfs for wimlib-imagex.
	FSType string
}

// IsMountPoint reports whether dir is a mount point. Where the table cannot
// be read, dir is taken as not mounted.
func IsMountPoint(dir string) bool {
	mounts, err := read()
	if err != nil {
		return false
	}
	dir = real(dir)
	for _, m := range mounts {
		if m.Dir == dir {
			return true
		}
	}
	return false
}

// Under lists the mount points at or below dir, deepest first, so that
// nested mounts come off before the ones holding them.
func Under(dir string) ([]Mount, error) {
	mounts, err := read()
	if err != nil {
		return nil, fmt.Errorf("list the mounts to tell whether %s holds one: %w", dir, err)
	}
	dir = real(dir)
	var out []Mount
	for _, m := range mounts {
		if m.Dir == dir || strings.HasPrefix(m.Dir, dir+string(filepath.Separator)) {
			out = append(out, m)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return len(out[i].Dir) > len(out[j].Dir) })
	return out, nil
}

// real is dir as the kernel lists it. A drive is often reached through a
// symlink (/srv -> /data), so the parent's symlinks are resolved; dir itself
// is not, since resolving a mount point fails once its FUSE daemon is gone.
func real(dir string) string {
	dir = filepath.Clean(dir)
	if parent, err := filepath.EvalSymlinks(filepath.Dir(dir)); err == nil {
		return filepath.Join(parent, filepath.Base(dir))
	}
	return dir
}

func read() ([]Mount, error) {
	data, err := os.ReadFile(table)
	if err != nil {
		return nil, err
	}
	return parse(string(data)), nil
}

// parse reads mountinfo lines: the mount point is the fifth field and the
// file system type follows the " - " separator.
func parse(data string) []Mount {
	var out []Mount
	for line := range strings.SplitSeq(data, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		m := Mount{Dir: unescape(fields[4])}
		for i := 5; i+1 < len(fields); i++ {
			if fields[i] == "-" {
				m.FSType = fields[i+1]
				break
			}
		}
		out = append(out, m)
	}
	return out
}

// unescape undoes the kernel's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
