//go:build unix

package packagetree_test

import (
	"path/filepath"
	"syscall"
	"testing"
)

func TestFromDirRefusesANamedPipe(t *testing.T) {
	t.Parallel()
	testFromDirRefuses(t, []fromDirCase{
		{"a named pipe", func(dir string) error { return syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644) }, "not a regular file"},
	})
}
