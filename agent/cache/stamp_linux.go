package cache

import (
	"io/fs"
	"syscall"
)

// fileStamp returns the stamp of the file info describes.
func fileStamp(info fs.FileInfo) (stamp, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return stamp{}, false
	}
	return stamp{
		Dev:   uint64(st.Dev), // A uint32 on mips.
		Ino:   st.Ino,
		Size:  info.Size(),
		Mtime: st.Mtim.Nano(),
		Ctime: st.Ctim.Nano(),
	}, true
}
