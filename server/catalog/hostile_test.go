package catalog_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/updatepkg/updatepkgtest"
)

// keys lists every key under the fixture's prefix with its revision.
func (f *fixture) keys(t *testing.T) string {
	t.Helper()
	resp, err := f.store.Client().Get(context.Background(), f.store.Prefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, kv := range resp.Kvs {
		fmt.Fprintf(&b, "%s@%d\n", kv.Key, kv.ModRevision)
	}
	return b.String()
}

func TestImportRefusesEveryHostilePackageAndStoresNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	good := f.file(t, "windows11.0-kb5099009-x64.cab", updatepkgtest.Package(t, "KB5099009", "amd64"))
	for _, tc := range updatepkgtest.Hostile(t) {
		t.Run(tc.Name, func(t *testing.T) {
			bad := f.file(t, tc.File, tc.Data)
			before := f.keys(t)
			// A good file first: the bad one must stop the whole request.
			_, err := f.cat.ImportUpdates(context.Background(), []*osvcv1.UpdateFile{good, bad})
			if !errors.Is(err, errdefs.ErrInvalidArgument) || fieldOf(err) != "files[1]" {
				t.Fatalf("ImportUpdates = %v, want InvalidArgument on files[1]", err)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.File+": ") || !strings.Contains(msg, tc.Want) {
				t.Errorf("error %q does not name %s and say %q", msg, tc.File, tc.Want)
			}
			if after := f.keys(t); after != before {
				t.Errorf("the refused import changed etcd:\nbefore\n%safter\n%s", before, after)
			}
		})
	}
	if n := f.countUpdates(t); n != 0 {
		t.Errorf("%d updates in the catalog, want none", n)
	}
}
