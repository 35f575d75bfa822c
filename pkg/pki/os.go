package pki

import "runtime"

// windows reports whether file modes mean nothing here: Windows keeps a
// file private by its ACL, which the data directory's location decides.
func windows() bool { return runtime.GOOS == "windows" }
