package winpath

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestClean(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, want string
		unsafe     bool
	}{
		{name: "update.mum", want: "update.mum"},
		{name: `amd64_x\file.dll`, want: "amd64_x/file.dll"},
		{name: `a\b/c`, want: "a/b/c"},
		{name: "a/./b//c", want: "a/b/c"},
		{name: "dir/", want: "dir"},
		{name: "..a/b..c/.d", want: "..a/b..c/.d"},
		{name: "ümlaut/日本.dll", want: "ümlaut/日本.dll"},
		{name: "console.dll", want: "console.dll"},
		{name: "com10.dll", want: "com10.dll"},
		{name: " leading space", want: " leading space"},
		{name: strings.Repeat("a", 255), want: strings.Repeat("a", 255)},
		{name: "", unsafe: true},
		{name: ".", unsafe: true},
		{name: "./", unsafe: true},
		{name: "..", unsafe: true},
		{name: "../evil", unsafe: true},
		{name: `..\evil`, unsafe: true},
		{name: "a/../../evil", unsafe: true},
		{name: "a/../b", unsafe: true},
		{name: `a\..//..\evil`, unsafe: true},
		{name: "/etc/passwd", unsafe: true},
		{name: `\Windows\System32\x.dll`, unsafe: true},
		{name: `C:\Windows\x.dll`, unsafe: true},
		{name: "C:evil", unsafe: true},
		{name: "c:/evil", unsafe: true},
		{name: "file.txt:stream", unsafe: true},
		{name: "a\x00b", unsafe: true},
		{name: "a\x01b", unsafe: true},
		{name: "a\nb", unsafe: true},
		{name: "a\u0085b", unsafe: true},
		{name: `\\server\share\x`, unsafe: true},
		{name: `\\?\C:\x`, unsafe: true},
		{name: `\\.\PhysicalDrive0`, unsafe: true},
		{name: "//server/share/x", unsafe: true},
		{name: "evil.dll.", unsafe: true},
		{name: "evil.dll ", unsafe: true},
		{name: "dir./x", unsafe: true},
		{name: "...", unsafe: true},
		{name: "CON", unsafe: true},
		{name: "aux.txt", unsafe: true},
		{name: "dir/Nul.tar.gz", unsafe: true},
		{name: "lpt1", unsafe: true},
		{name: "COM9.dll", unsafe: true},
		{name: "com¹", unsafe: true},
		{name: "CONIN$", unsafe: true},
		{name: "con .txt", unsafe: true},
		{name: "a<b", unsafe: true},
		{name: "a>b", unsafe: true},
		{name: `a"b`, unsafe: true},
		{name: "a|b", unsafe: true},
		{name: "a?b", unsafe: true},
		{name: "a*b", unsafe: true},
		{name: strings.Repeat("a", 256), unsafe: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Clean(tc.name)
			if tc.unsafe {
				if !errors.Is(err, ErrUnsafe) {
					t.Errorf("Clean(%q) = %q, %v; want ErrUnsafe", tc.name, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("Clean(%q) = %q, %v; want %q", tc.name, got, err, tc.want)
			}
		})
	}
}

func TestCleanSaysWhy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ path, want string }{
		{`\\host\share\x`, "UNC or device path"},
		{`\\?\C:\x`, "UNC or device path"},
		{`\x`, "absolute path"},
		{`C:x`, "drive letter"},
		{"a/../b", `contains ".."`},
		{"x.dll:s", "NTFS stream"},
		{"aux.txt", "Windows device (AUX)"},
		{"a.dll.", "ends in a dot or a space"},
		{"a\tb", "control character"},
	} {
		if _, err := Clean(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Clean(%q) = %v, want it to say %q", tc.path, err, tc.want)
		}
	}
}

func TestCheckNameRefusesPaths(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"a/b", `a\b`, "..", ".", ""} {
		if err := CheckName(name); !errors.Is(err, ErrUnsafe) {
			t.Errorf("CheckName(%q) = %v, want ErrUnsafe", name, err)
		}
	}
	if err := CheckName("Package_for_RollupFix~31bf3856ad364e35~amd64~~22621.2428.1.0.mum"); err != nil {
		t.Errorf("CheckName of a package file name: %v", err)
	}
}

func TestKeyComparesAsWindowsDoes(t *testing.T) {
	t.Parallel()
	a, _ := Clean("amd64_x/B.dll")
	b, _ := Clean(`AMD64_X\b.DLL`)
	if Key(a) != Key(b) {
		t.Errorf("Key(%q) = %q and Key(%q) = %q, want one key", a, Key(a), b, Key(b))
	}
	if Key("a.dll") == Key("b.dll") {
		t.Error("two names share a key")
	}
}

func FuzzClean(f *testing.F) {
	for _, s := range []string{"a/b", "../x", `C:\x`, "/abs", "a/../b", "...", "a\\..\\..\\b", "a:b", "aux", "a. ", `\\?\x`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		got, err := Clean(name)
		if err != nil {
			if !errors.Is(err, ErrUnsafe) {
				t.Fatalf("Clean(%q) error %v does not wrap ErrUnsafe", name, err)
			}
			return
		}
		if !filepath.IsLocal(filepath.FromSlash(got)) || strings.ContainsAny(got, `:\`) {
			t.Fatalf("Clean(%q) = %q, which is not a local path", name, got)
		}
		for _, elem := range strings.Split(got, "/") {
			if err := CheckName(elem); err != nil {
				t.Fatalf("Clean(%q) = %q has element %q: %v", name, got, elem, err)
			}
		}
		if again, err := Clean(got); err != nil || again != got {
			t.Fatalf("Clean(Clean(%q)) = %q, %v; want %q", name, again, err, got)
		}
	})
}
