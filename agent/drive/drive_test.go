package drive_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/osvc/osvc/agent/drive"
)

func TestSpaceOfAFolderIsItsVolumes(t *testing.T) {
	t.Parallel()
	s, err := drive.SpaceOf(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if s.Total <= 0 || s.Free < 0 || s.Free > s.Total {
		t.Errorf("space = %+v, want 0 <= free <= total and total > 0", s)
	}
	if _, err := drive.SpaceOf(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("SpaceOf of a missing folder succeeded")
	}
}

func TestALockIsHeldUntilUnlocked(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "lock")
	unlock, err := drive.Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := drive.Lock(path); !errors.Is(err, drive.ErrLocked) {
		t.Fatalf("second Lock = %v, want ErrLocked", err)
	}
	unlock()
	again, err := drive.Lock(path)
	if err != nil {
		t.Fatalf("Lock after unlock = %v", err)
	}
	again()
}
