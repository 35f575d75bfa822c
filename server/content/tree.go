package content

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/packagetree"
)

// ReadTree reads and checks the package tree manifest held as the blob sha
// (packagetree.Parse). A blob over packagetree.MaxManifestBytes is refused
// from its size, before any of it is read. errdefs.ErrNotFound
// when the library does not hold it; an error wrapping
// packagetree.ErrInvalid when it is no sound manifest.
func (l *Library) ReadTree(ctx context.Context, sha string) (*osvcv1.PackageTree, error) {
	f, err := l.Open(ctx, sha)
	if err != nil {
		return nil, fmt.Errorf("open content %s: %w", sha, err)
	}
	defer f.Close()
	if f.Size() > packagetree.MaxManifestBytes {
		return nil, fmt.Errorf("content %s is %d bytes, more than a package tree manifest's %d: %w",
			sha, f.Size(), packagetree.MaxManifestBytes, packagetree.ErrInvalid)
	}
	data := make([]byte, f.Size())
	if _, err := f.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read content %s: %w", sha, err)
	}
	t, err := packagetree.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("content %s: %w", sha, err)
	}
	return t, nil
}

// PutTree stores the manifest t as a blob (claimed, as by Claim) and
// returns the reference a version keeps.
func (l *Library) PutTree(ctx context.Context, t *osvcv1.PackageTree) (*osvcv1.PackageTreeRef, error) {
	data, err := packagetree.Marshal(t)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	if _, _, err := l.Write(ctx, WriteHeader{SHA256: sha, SizeBytes: int64(len(data)), MediaType: packagetree.MediaType}, bytes.NewReader(data)); err != nil {
		return nil, fmt.Errorf("store package tree manifest: %w", err)
	}
	return packagetree.Ref(sha, t), nil
}
