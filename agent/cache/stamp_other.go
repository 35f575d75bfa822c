//go:build !linux

package cache

import "io/fs"

// fileStamp gives no stamp on systems other than Linux, so every file is
// hashed each time it is served, as before stamps. On Windows, os.Stat
// tells no change time, and size and modification time alone do not prove
// a file unchanged (a writer can set the time back); the other Unixes name
// the change time's field each their own way, and no agent runs there.
func fileStamp(fs.FileInfo) (stamp, bool) { return stamp{}, false }
