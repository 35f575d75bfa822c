// Package packagetree reads, checks and lays out the folder trees of OS
// upgrade packages, kept as Configuration Manager keeps them: a folder
// (setup.exe, boot/, efi/, sources/ …) whose sources/install.wim is the
// image serviced. A tree is described by a manifest, an osvc.v1.PackageTree:
// every file's path, sha256 and size; the files themselves are blobs of the
// content library. osvcctl builds a manifest from a folder (FromDir) or a
// tar file (ExtractTar, then FromDir), the server checks it (Parse) and
// derives the manifest of a serviced version (WithInstallImage), and
// osvcctl and distribution points lay a tree out as a folder (Materialize).
//
// Manifests and tar files are outside input. Check refuses, naming the
// file and what is wrong:
//   - a path that is not a clean relative path of names Windows can hold
//     (winpath.Clean: absolute, a drive letter, "..", ':' or a control
//     character such as NUL, reserved device names …), or that is not in
//     its clean form ('/'-separated: no '\', no "." element, no doubled or
//     trailing '/'), or longer than MaxPathBytes;
//   - two files whose paths are one on Windows (the same but for case), or a
//     file whose path is the folder of another;
//   - files not in path order (the manifest's bytes are then one per tree);
//   - a sha256 that is not 64 lower-case hex digits, a size below zero or
//     above MaxFileBytes, an empty file not named by the empty sha256;
//   - more than MaxFiles files, more than MaxTotalBytes together, a manifest
//     over MaxManifestBytes;
//   - no sources/install.wim (compared ignoring case, as on Windows).
//
// ExtractTar also refuses links, devices and any entry other than files and
// folders, and writes nothing outside its folder (through an os.Root).
package packagetree

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/osvc/osvc/pkg/transfer"

	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/winpath"
)

// InstallImage is the path of the image a tree's servicing works on.
const InstallImage = "sources/install.wim"

// MediaType is recorded with a manifest's blob in the content library.
const MediaType = "application/vnd.osvc.package-tree+protobuf"

// EmptySHA256 is the sha256 of no bytes: an empty file's. Empty files have
// no blob of their own; they are written without fetching anything.
const EmptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// Limits. Windows' installation media hold about a thousand files, 5 to 10
// GiB in all, install.wim most of it; these leave room for language packs,
// drivers and features on demand added to a package, and bound what a
// hostile manifest costs the server to check: a manifest of MaxFiles files
// with paths of MaxPathBytes is about MaxManifestBytes.
const (
	MaxManifestBytes = 16 << 20
	MaxFiles         = 50_000
	// MaxPathBytes bounds a path; each name in it is also at most 255
	// UTF-16 code units, Windows' limit (winpath).
	MaxPathBytes  = 320
	MaxFileBytes  = 64 << 30
	MaxTotalBytes = 256 << 30
)

// ErrInvalid is wrapped by every refusal of a manifest or tar file.
var ErrInvalid = errors.New("invalid package tree")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrInvalid)
}

// CleanPath checks one path of a tree as it may appear in a manifest: clean,
// relative, '/'-separated, at most MaxPathBytes. It returns it unchanged.
func CleanPath(p string) (string, error) {
	if len(p) > MaxPathBytes {
		return "", invalidf("path %.64q… is %d bytes long; a package tree's paths are at most %d", p, len(p), MaxPathBytes)
	}
	if strings.Contains(p, `\`) {
		return "", invalidf("path %q holds a backslash; separate names with '/'", p)
	}
	clean, err := winpath.Clean(p)
	if err != nil {
		return "", fmt.Errorf("%w: %w", err, ErrInvalid)
	}
	if clean != p {
		return "", invalidf("path %q is not in its clean form %q (no \".\" names, doubled or trailing '/')", p, clean)
	}
	return p, nil
}

// Check checks a manifest against every rule of the package's doc comment.
func Check(t *osvcv1.PackageTree) error {
	files := t.GetFiles()
	switch {
	case len(files) == 0:
		return invalidf("the tree has no file; it needs at least %s", InstallImage)
	case len(files) > MaxFiles:
		return invalidf("the tree has %d files; a package tree has at most %d", len(files), MaxFiles)
	}
	byKey := map[string]string{} // Windows key → path
	var total int64
	for i, f := range files {
		p := f.GetPath()
		if _, err := CleanPath(p); err != nil {
			return fmt.Errorf("file %d: %w", i, err)
		}
		if i > 0 && files[i-1].GetPath() >= p {
			return invalidf("file %d, %q, comes after %q: list files in path order, each once", i, p, files[i-1].GetPath())
		}
		key := winpath.Key(p)
		if other, ok := byKey[key]; ok {
			return invalidf("files %q and %q are one file on Windows, which ignores case", other, p)
		}
		byKey[key] = p
		if err := checkBlob(f); err != nil {
			return fmt.Errorf("file %q: %w", p, err)
		}
		total += f.GetSizeBytes()
		if total > MaxTotalBytes {
			return invalidf("the tree's files pass %d bytes together, the most a package tree holds", int64(MaxTotalBytes))
		}
	}
	// A file cannot also be a folder: "a" and "a/b" cannot both be files.
	for _, f := range files {
		key := winpath.Key(f.GetPath())
		for i := strings.IndexByte(key, '/'); i >= 0; i = next(key, i) {
			if other, ok := byKey[key[:i]]; ok {
				return invalidf("%q is a file, so %q cannot be in a folder of that name", other, f.GetPath())
			}
		}
	}
	if Install(t) == nil {
		return invalidf("the tree has no %s (the image it upgrades to); an OS upgrade package holds it", InstallImage)
	}
	return nil
}

// next returns the index of the '/' after i in key, or -1.
func next(key string, i int) int {
	j := strings.IndexByte(key[i+1:], '/')
	if j < 0 {
		return -1
	}
	return i + 1 + j
}

func checkBlob(f *osvcv1.PackageFile) error {
	sha, size := f.GetSha256(), f.GetSizeBytes()
	if !transfer.ValidSHA256(sha) {
		return invalidf("sha256 %.80q is not 64 lower-case hex digits", sha)
	}
	switch {
	case size < 0:
		return invalidf("size %d is negative", size)
	case size > MaxFileBytes:
		return invalidf("size %d is more than the %d bytes a file of a package tree may have", size, int64(MaxFileBytes))
	case size == 0 && sha != EmptySHA256:
		return invalidf("an empty file whose sha256 is %s, not that of no bytes", sha)
	case size != 0 && sha == EmptySHA256:
		return invalidf("%d bytes whose sha256 is that of no bytes", size)
	}
	return nil
}

// Install returns the tree's sources/install.wim, nil when it has none.
func Install(t *osvcv1.PackageTree) *osvcv1.PackageFile {
	want := winpath.Key(InstallImage)
	for _, f := range t.GetFiles() {
		if winpath.Key(f.GetPath()) == want {
			return f
		}
	}
	return nil
}

// Parse reads and checks a manifest's bytes.
func Parse(b []byte) (*osvcv1.PackageTree, error) {
	if len(b) > MaxManifestBytes {
		return nil, invalidf("the manifest is %d bytes; a package tree's is at most %d", len(b), MaxManifestBytes)
	}
	t := &osvcv1.PackageTree{}
	if err := proto.Unmarshal(b, t); err != nil {
		return nil, invalidf("not a package tree manifest (%v)", err)
	}
	if err := Check(t); err != nil {
		return nil, err
	}
	return t, nil
}

// Marshal checks a manifest and serializes it deterministically: one tree,
// one sequence of bytes, so one blob in the content library.
func Marshal(t *osvcv1.PackageTree) ([]byte, error) {
	if err := Check(t); err != nil {
		return nil, err
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(t)
}

// Sort puts a manifest's files in path order, as Check wants them.
func Sort(t *osvcv1.PackageTree) {
	slices.SortFunc(t.Files, func(a, b *osvcv1.PackageFile) int { return strings.Compare(a.GetPath(), b.GetPath()) })
}

// WithInstallImage returns a copy of t whose sources/install.wim is the
// blob sha256 of size bytes, every other file as it was: the tree of a
// serviced version.
func WithInstallImage(t *osvcv1.PackageTree, sha256 string, size int64) (*osvcv1.PackageTree, error) {
	out := proto.Clone(t).(*osvcv1.PackageTree)
	f := Install(out)
	if f == nil {
		return nil, invalidf("the tree has no %s to replace", InstallImage)
	}
	f.Sha256, f.SizeBytes = sha256, size
	if err := Check(out); err != nil {
		return nil, err
	}
	return out, nil
}

// Blobs returns the files of t with distinct contents, the first of each,
// in path order: the blobs a copy of the tree needs. Empty files have no
// blob and are left out.
func Blobs(t *osvcv1.PackageTree) []*osvcv1.PackageFile {
	seen := map[string]bool{}
	var out []*osvcv1.PackageFile
	for _, f := range t.GetFiles() {
		if f.GetSizeBytes() == 0 || seen[f.GetSha256()] {
			continue
		}
		seen[f.GetSha256()] = true
		out = append(out, f)
	}
	return out
}

// Ref describes the manifest whose blob is sha256 for an image version.
func Ref(sha256 string, t *osvcv1.PackageTree) *osvcv1.PackageTreeRef {
	var total int64
	for _, f := range t.GetFiles() {
		total += f.GetSizeBytes()
	}
	return &osvcv1.PackageTreeRef{Sha256: sha256, FileCount: int32(len(t.GetFiles())), SizeBytes: total}
}
