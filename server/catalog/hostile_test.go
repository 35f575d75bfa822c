package catalog_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/updatepkg/updatepkgtest"
	"github.com/osvc/osvc/server/store"
)

// keys lists every key under the fixture's prefix with its revision, but
// content records with their value less the update time: an import claims
// the blobs it reads (the content collector's grace period restarts), and
// that alone is no change of the catalog.
func (f *fixture) keys(t *testing.T) string {
	t.Helper()
	resp, err := f.store.Client().Get(context.Background(), f.store.Prefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, kv := range resp.Kvs {
		if !strings.HasPrefix(string(kv.Key), f.store.ContentsPrefix()) {
			fmt.Fprintf(&b, "%s@%d\n", kv.Key, kv.ModRevision)
			continue
		}
		c, err := store.Unmarshal[*osvcv1.Content](kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		c.UpdateTime = nil
		data, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %x\n", kv.Key, data)
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
