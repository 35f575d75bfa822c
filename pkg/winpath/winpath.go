// Package winpath holds the one rule for the names an update package may
// give its files: the cabinet reader checks member paths with it before
// extracting, the package reader before it accepts a package, and the
// wimlib engine before it writes a file into an image. A name it refuses
// is refused everywhere, so the catalog never accepts a package the engine
// would refuse.
//
// A path is a sequence of names separated by '/' or '\' (Windows takes
// both). Clean accepts a path when it is relative and every name in it is a
// name Windows can hold:
//   - not absolute: no leading '/' or '\' (which also rules out UNC paths
//     \\host\share and device paths \\?\ and \\.\), no drive letter (C:\x,
//     C:x): no ':' anywhere, which is also an NTFS alternate data stream;
//   - no ".." element anywhere, even one that cleaning would cancel (a/../b):
//     a package has no reason to write one, and refusing it is simpler than
//     proving it harmless; "." elements and doubled separators are dropped;
//   - no control characters (U+0000 to U+001F, U+007F to U+009F) and none of
//     < > : " | ? * , which Windows does not allow in names;
//   - no name ending in '.' or ' ': Windows drops them, so "a.dll." and
//     "a.dll" would be one file there and two here;
//   - no reserved device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9, the
//     superscript COM¹²³ and LPT¹²³, CONIN$, CONOUT$), with or without an
//     extension, in any case: on Windows "aux.txt" opens the AUX device.
//     Windows 11 relaxed some of these in Win32 paths, but the images osvc
//     services are read by every Windows version and by DISM, so they are
//     refused;
//   - no name longer than 255 UTF-16 code units, Windows' limit.
//
// Key gives the form under which Windows compares two clean paths: NTFS
// compares names ignoring case, so "a/B.dll" and "A\b.dll" are one file.
package winpath

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf16"
)

// ErrUnsafe is wrapped by every refusal: the name would escape the folder
// it is written under, or could not exist on Windows.
var ErrUnsafe = errors.New("unsafe file name")

// maxNameUnits is the longest name Windows allows, in UTF-16 code units.
const maxNameUnits = 255

// reserved are the device names Windows keeps, lower case.
var reserved = func() map[string]bool {
	m := map[string]bool{"con": true, "prn": true, "aux": true, "nul": true, "conin$": true, "conout$": true}
	for _, d := range []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "¹", "²", "³"} {
		m["com"+d] = true
		m["lpt"+d] = true
	}
	return m
}()

// CheckName checks one name (a file or folder name, no separators) as Clean
// checks each element of a path.
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("an empty name: %w", ErrUnsafe)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a file name: %w", name, ErrUnsafe)
	case strings.ContainsAny(name, `/\`):
		return fmt.Errorf("%q holds a path separator where one name is expected: %w", name, ErrUnsafe)
	case strings.ContainsFunc(name, unicode.IsControl):
		return fmt.Errorf("%q holds a control character, which Windows does not allow in names: %w", name, ErrUnsafe)
	case strings.Contains(name, ":"):
		return fmt.Errorf("%q holds ':' (a drive letter or an NTFS stream), which Windows does not allow in names: %w", name, ErrUnsafe)
	case strings.ContainsAny(name, `<>"|?*`):
		return fmt.Errorf("%q holds one of < > \" | ? *, which Windows does not allow in names: %w", name, ErrUnsafe)
	case strings.HasSuffix(name, ".") || strings.HasSuffix(name, " "):
		return fmt.Errorf("%q ends in a dot or a space, which Windows drops: %w", name, ErrUnsafe)
	}
	base, _, _ := strings.Cut(name, ".")
	if reserved[strings.ToLower(strings.TrimRight(base, " "))] {
		return fmt.Errorf("%q is the name of a Windows device (%s): %w", name, strings.ToUpper(strings.TrimRight(base, " ")), ErrUnsafe)
	}
	if n := utf16Len(name); n > maxNameUnits {
		return fmt.Errorf("%q is %d characters long; Windows allows %d: %w", name, n, maxNameUnits, ErrUnsafe)
	}
	return nil
}

func utf16Len(s string) int {
	n := 0
	for _, r := range s {
		n += utf16.RuneLen(r)
	}
	return n
}

// Clean checks a relative path and returns it '/'-separated, without "."
// elements or doubled separators. Errors wrap ErrUnsafe and name the path.
func Clean(p string) (string, error) {
	n := strings.ReplaceAll(p, `\`, "/")
	switch {
	case n == "":
		return "", fmt.Errorf("an empty path: %w", ErrUnsafe)
	case strings.HasPrefix(n, "//"):
		return "", fmt.Errorf("%q is a UNC or device path (\\\\host\\share, \\\\?\\): %w", p, ErrUnsafe)
	case strings.HasPrefix(n, "/"):
		return "", fmt.Errorf("%q is an absolute path: %w", p, ErrUnsafe)
	case len(n) >= 2 && n[1] == ':' && (n[0] >= 'A' && n[0] <= 'Z' || n[0] >= 'a' && n[0] <= 'z'):
		return "", fmt.Errorf("%q starts with a drive letter: %w", p, ErrUnsafe)
	}
	var elems []string
	for _, e := range strings.Split(n, "/") {
		switch e {
		case "", ".":
			continue
		case "..":
			return "", fmt.Errorf("%q contains \"..\": %w", p, ErrUnsafe)
		}
		if err := CheckName(e); err != nil {
			return "", fmt.Errorf("path %q: %w", p, err)
		}
		elems = append(elems, e)
	}
	if len(elems) == 0 {
		return "", fmt.Errorf("%q names no file: %w", p, ErrUnsafe)
	}
	return strings.Join(elems, "/"), nil
}

// Key is the form of a clean path under which Windows compares it to
// another: two paths with the same key are the same file on Windows.
func Key(clean string) string { return strings.ToUpper(clean) }
