package cab

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/cab/cabtest"
)

// listTree returns every path under root, relative, '/'-separated.
func listTree(t testing.TB, root string) []string {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		paths = append(paths, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

func TestExtractAllRefusesUnsafeNamesBeforeWritingAnything(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"../evil.txt", `..\evil.txt`, "/tmp/evil.txt", `C:\evil.txt`, "ok/../../evil.txt", "x:y", "aux.txt", "evil.txt."} {
		t.Run(bad, func(t *testing.T) {
			t.Parallel()
			data := writeCab(t, []member{{"good.txt", []byte("good")}, {bad, []byte("evil")}})
			r, err := NewReader(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			root := t.TempDir()
			dest := filepath.Join(root, "dest")
			if err := r.ExtractAll(dest); !errors.Is(err, ErrUnsafePath) {
				t.Fatalf("ExtractAll = %v, want ErrUnsafePath", err)
			}
			if got := listTree(t, root); len(got) != 1 || got[0] != "." {
				t.Errorf("ExtractAll wrote %v", got)
			}
		})
	}
}

func TestExtractAllDoesNotFollowSymlinks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		member string
		link   string // created in dest, pointing outside
		target func(outside string) string
	}{
		{"through a linked folder", "link/evil.txt", "link", func(o string) string { return o }},
		{"onto a linked file", "file.txt", "file.txt", func(o string) string { return filepath.Join(o, "victim.txt") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			outside := filepath.Join(root, "outside")
			dest := filepath.Join(root, "dest")
			for _, d := range []string{outside, dest} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			victim := filepath.Join(outside, "victim.txt")
			if err := os.WriteFile(victim, []byte("original"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(tc.target(outside), filepath.Join(dest, tc.link)); err != nil {
				t.Fatal(err)
			}
			data := writeCab(t, []member{{tc.member, []byte("evil")}})
			r, err := NewReader(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			if err := r.ExtractAll(dest); !errors.Is(err, ErrUnsafePath) {
				t.Fatalf("ExtractAll = %v, want ErrUnsafePath", err)
			}
			if got := listTree(t, outside); len(got) != 2 {
				t.Errorf("outside folder now holds %v", got)
			}
			if b, _ := os.ReadFile(victim); string(b) != "original" {
				t.Errorf("victim file now holds %q", b)
			}
		})
	}
}

func FuzzReader(f *testing.F) {
	f.Add(writeCab(f, []member{{"update.mum", []byte("<assembly/>")}, {`dir\payload.dll`, textBytes(40_000)}}))
	f.Add(writeCab(f, []member{{"../evil", []byte("x")}}))
	f.Add(rawCab(f, rawOptions{headerReserve: 4, folderReserve: 1, dataReserve: 2},
		[]rawFolder{{compression: compressNone, data: []byte("stored data"), blockSize: 4}},
		[]rawFile{{name: "s.txt", size: 11, folder: 0}}))
	f.Add([]byte("MSCF"))
	lzx, err := cabtest.LZXCabinet([]cabtest.Member{{Name: "update.mum", Data: textBytes(3_000)}, {Name: "x.dll", Data: x86Bytes(8, 2_000)}},
		cabtest.LZXOptions{WindowBits: 16, E8Size: 12_000_000, BlockSize: 1_500,
			BlockTypes: []int{cabtest.BlockAligned, cabtest.BlockUncompressed, cabtest.BlockVerbatim}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(lzx)
	// And one packed by Debian's gcab, not by this package.
	dir := f.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "update.mum"), textBytes(2_000), 0o644); err != nil {
		f.Fatal(err)
	}
	cmd := exec.Command("gcab", "-c", "-z", "g.cab", "update.mum")
	cmd.Dir = dir
	if msg, err := cmd.CombinedOutput(); err != nil {
		f.Fatalf("gcab: %v: %s", err, msg)
	}
	gcab, err := os.ReadFile(filepath.Join(dir, "g.cab"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(gcab)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		for _, file := range r.Files() {
			rc, err := r.Open(file.Name)
			if err != nil {
				continue
			}
			n, _ := io.Copy(io.Discard, rc)
			if n > file.Size {
				t.Fatalf("%q: read %d bytes, more than its size %d", file.Name, n, file.Size)
			}
		}
		root := t.TempDir()
		dest := filepath.Join(root, "dest")
		_ = r.ExtractAll(dest)
		for _, p := range listTree(t, root) {
			if p != "." && p != "dest" && !strings.HasPrefix(p, "dest/") {
				t.Fatalf("ExtractAll wrote %q outside its folder", p)
			}
		}
	})
}
