//go:build unix

package content

import (
	"io/fs"
	"syscall"
)

// linkCount returns how many names the file has.
func linkCount(info fs.FileInfo) (uint64, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return uint64(st.Nlink), true
}
