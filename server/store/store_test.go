package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	os.Exit(code)
}

func TestGetOfAMissingKeyIsNotFound(t *testing.T) {
	t.Parallel()
	s := storetest.New(t)
	_, _, err := store.Get[*osvcv1.Content](context.Background(), s, s.ContentKey("nope"))
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get of a missing key: got %v, want errdefs.ErrNotFound", err)
	}
}

func TestCreateRefusesAnExistingKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := storetest.New(t)
	key := s.ImageKey("a")
	rev, err := s.Create(ctx, key, wrapperspb.String("first"))
	if err != nil {
		t.Fatalf("first Create: %v", err)
	}
	if _, err := s.Create(ctx, key, wrapperspb.String("second")); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("second Create: got %v, want errdefs.ErrConflict", err)
	}
	got, modRev, err := store.Get[*wrapperspb.StringValue](ctx, s, key)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got.GetValue() != "first" || modRev != rev {
		t.Fatalf("Get = %q at %d, want %q at %d", got.GetValue(), modRev, "first", rev)
	}
}

func TestDeleteRemovesAKeyOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := storetest.New(t)
	key := s.AgentKey("a")
	if _, err := s.Put(ctx, key, wrapperspb.String("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, key); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, _, err := store.Get[*wrapperspb.StringValue](ctx, s, key); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get after Delete: %v, want errdefs.ErrNotFound", err)
	}
	if _, err := s.Delete(ctx, key); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second Delete: %v, want errdefs.ErrNotFound", err)
	}
}

func TestUpdateLosesNoWriteUnderConcurrentWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := storetest.New(t)
	key := s.RunKey("counter")
	if _, err := s.Put(ctx, key, wrapperspb.Int64(0)); err != nil {
		t.Fatalf("Put: %v", err)
	}
	const writers, increments = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*increments)
	for range writers {
		wg.Go(func() {
			for range increments {
				_, _, err := store.Update(ctx, s, key, func(v *wrapperspb.Int64Value) error {
					v.Value++
					return nil
				})
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Update: %v", err)
	}
	got, _, err := store.Get[*wrapperspb.Int64Value](ctx, s, key)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got.GetValue() != writers*increments {
		t.Fatalf("counter = %d, want %d", got.GetValue(), writers*increments)
	}
}

func TestUpdate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := storetest.New(t)
	refused := errors.New("refused by mutate")

	t.Run("returns the stored value and its revision", func(t *testing.T) {
		key := s.ImageKey("u1")
		if _, err := s.Put(ctx, key, wrapperspb.String("a")); err != nil {
			t.Fatal(err)
		}
		v, rev, err := store.Update(ctx, s, key, func(v *wrapperspb.StringValue) error {
			v.Value += "b"
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		got, modRev, err := store.Get[*wrapperspb.StringValue](ctx, s, key)
		if err != nil {
			t.Fatal(err)
		}
		if v.GetValue() != "ab" || got.GetValue() != "ab" || modRev != rev {
			t.Fatalf("Update = %q at %d, stored %q at %d", v.GetValue(), rev, got.GetValue(), modRev)
		}
	})
	t.Run("aborts with mutate's error and writes nothing", func(t *testing.T) {
		key := s.ImageKey("u2")
		before, err := s.Put(ctx, key, wrapperspb.String("a"))
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = store.Update(ctx, s, key, func(v *wrapperspb.StringValue) error {
			v.Value = "changed"
			return refused
		})
		if !errors.Is(err, refused) {
			t.Fatalf("Update: got %v, want mutate's error", err)
		}
		got, modRev, err := store.Get[*wrapperspb.StringValue](ctx, s, key)
		if err != nil {
			t.Fatal(err)
		}
		if got.GetValue() != "a" || modRev != before {
			t.Fatalf("stored %q at %d, want %q at %d", got.GetValue(), modRev, "a", before)
		}
	})
	t.Run("of a missing key is not found", func(t *testing.T) {
		_, _, err := store.Update(ctx, s, s.ImageKey("missing"), func(*wrapperspb.StringValue) error { return nil })
		if !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("Update: got %v, want errdefs.ErrNotFound", err)
		}
	})
	t.Run("keeps the key's lease", func(t *testing.T) {
		key := s.PresenceKey("agent-1")
		lease, err := s.Client().Grant(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Client().Revoke(context.Background(), lease.ID) })
		if _, err := s.Put(ctx, key, wrapperspb.String("a"), clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := store.Update(ctx, s, key, func(v *wrapperspb.StringValue) error { v.Value = "b"; return nil }); err != nil {
			t.Fatal(err)
		}
		resp, err := s.Client().Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Kvs[0].Lease; got != int64(lease.ID) {
			t.Fatalf("lease after Update = %x, want %x", got, lease.ID)
		}
	})
}

func TestListPaginates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := storetest.New(t)
	const n = 7
	for i := range n {
		if _, err := s.Put(ctx, s.UpdateKey(fmt.Sprintf("u%02d", i)), wrapperspb.Int64(int64(i))); err != nil {
			t.Fatal(err)
		}
	}
	// A neighbour whose key shares the text prefix but not the folder must not leak in.
	if _, err := s.Put(ctx, s.UpdateIdentityKey("x"), wrapperspb.Int64(99)); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		pageSize int
		pages    []int
	}{
		{name: "pages of three end with a short page and no token", pageSize: 3, pages: []int{3, 3, 1}},
		{name: "a page size dividing the count ends with an empty token", pageSize: 7, pages: []int{7}},
		{name: "a zero page size means the default", pageSize: 0, pages: []int{7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []int64
			var sizes []int
			token := ""
			for {
				page, next, err := store.List[*wrapperspb.Int64Value](ctx, s, s.UpdatesPrefix(), tt.pageSize, token)
				if err != nil {
					t.Fatal(err)
				}
				sizes = append(sizes, len(page))
				for _, v := range page {
					got = append(got, v.GetValue())
				}
				if next == "" {
					break
				}
				if len(sizes) > n {
					t.Fatal("List never ends")
				}
				token = next
			}
			if fmt.Sprint(sizes) != fmt.Sprint(tt.pages) {
				t.Errorf("page sizes = %v, want %v", sizes, tt.pages)
			}
			if fmt.Sprint(got) != "[0 1 2 3 4 5 6]" {
				t.Errorf("values = %v, want 0..6 in key order", got)
			}
		})
	}
}

func TestListRefusesABadPageToken(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := storetest.New(t)
	for i := range 3 {
		if _, err := s.Put(ctx, s.ImageKey(fmt.Sprint(i)), wrapperspb.Int64(int64(i))); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Put(ctx, s.RunKey(fmt.Sprint(i)), wrapperspb.Int64(int64(i))); err != nil {
			t.Fatal(err)
		}
	}
	_, imagesToken, err := store.List[*wrapperspb.Int64Value](ctx, s, s.ImagesPrefix(), 1, "")
	if err != nil || imagesToken == "" {
		t.Fatalf("List images: token %q, err %v", imagesToken, err)
	}
	tests := []struct {
		name  string
		token string
	}{
		{name: "a damaged token", token: "%%%not-base64"},
		{name: "a token from another list", token: imagesToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := store.List[*wrapperspb.Int64Value](ctx, s, s.RunsPrefix(), 1, tt.token)
			var fv *errdefs.FieldViolation
			if !errors.As(err, &fv) || fv.Field != "page_token" || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("List: got %v, want InvalidArgument on page_token", err)
			}
		})
	}
}

func TestWritesRefuseValuesAboveTheSizeLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := storetest.New(t)
	big := wrapperspb.Bytes(make([]byte, store.MaxValueBytes))
	small := wrapperspb.Bytes([]byte("ok"))
	key := s.LogKey("run", 1)
	if _, err := s.Put(ctx, key, small); err != nil {
		t.Fatal(err)
	}

	writes := []struct {
		name  string
		write func() error
	}{
		{name: "Marshal", write: func() error { _, err := s.Marshal(big); return err }},
		{name: "Put", write: func() error { _, err := s.Put(ctx, key, big); return err }},
		{name: "Create", write: func() error { _, err := s.Create(ctx, s.LogKey("run", 2), big); return err }},
		{name: "Update", write: func() error {
			_, _, err := store.Update(ctx, s, key, func(v *wrapperspb.BytesValue) error { v.Value = big.Value; return nil })
			return err
		}},
	}
	for _, w := range writes {
		t.Run(w.name+" refuses it", func(t *testing.T) {
			if err := w.write(); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want errdefs.ErrInvalidArgument", err)
			}
		})
	}
	got, _, err := store.Get[*wrapperspb.BytesValue](ctx, s, key)
	if err != nil || string(got.GetValue()) != "ok" {
		t.Fatalf("stored value changed: %q, %v", got.GetValue(), err)
	}
	if _, _, err := store.Get[*wrapperspb.BytesValue](ctx, s, s.LogKey("run", 2)); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("refused Create left a key: %v", err)
	}
}

func TestUnmarshalDecodesWhatWasStored(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := storetest.New(t)
	want := &osvcv1.Content{Name: "contents/x", Sha256: "x", SizeBytes: 42, MediaType: "application/octet-stream"}
	key := s.ContentKey("x")
	if _, err := s.Put(ctx, key, want); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Client().Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := store.Unmarshal[*osvcv1.Content](resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("Unmarshal = %v, want %v", got, want)
	}
	if _, err := store.Unmarshal[*osvcv1.Content]([]byte{0xff, 0xff}); err == nil {
		t.Fatal("Unmarshal of garbage succeeded")
	}
}

func TestKeysLiveUnderThePrefix(t *testing.T) {
	t.Parallel()
	s := storetest.New(t)
	keys := []string{
		s.ImageKey("i"), s.ScheduleKey("i", "s"), s.UpdateKey("u"), s.UpdateIdentityKey("p"),
		s.RunKey("r"), s.ActiveRunKey("i"), s.AssignmentKey("r"), s.AgentKey("a"), s.PresenceKey("a"),
		s.LogKey("r", 1), s.ContentKey("c"), s.ElectionPrefix(),
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, s.Prefix()) {
			t.Errorf("key %q is outside prefix %q", k, s.Prefix())
		}
	}
	if a, b := s.LogKey("r", 9), s.LogKey("r", 10); a >= b {
		t.Errorf("log keys do not sort by sequence: %q >= %q", a, b)
	}
	if got := store.IDFromKey(s.RunKey("run-7")); got != "run-7" {
		t.Errorf("IDFromKey = %q, want run-7", got)
	}
}
