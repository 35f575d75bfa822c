package store_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

// increment adds one to the counter at key in a Txn, calling it again when
// it gives up as contended, as a caller is told to: a contended Txn wrote
// nothing, so the count stays exact either way.
func increment(ctx context.Context, s *store.Store, key string) error {
	for {
		err := incrementOnce(ctx, s, key)
		if !errors.Is(err, errdefs.ErrContended) {
			return err
		}
	}
}

func incrementOnce(ctx context.Context, s *store.Store, key string) error {
	_, err := s.Txn(ctx, "increment", func(tx *store.Tx) error {
		n, err := store.Load[*wrapperspb.Int64Value](tx, key)
		if errors.Is(err, errdefs.ErrNotFound) {
			n, err = wrapperspb.Int64(0), nil
		}
		if err != nil {
			return err
		}
		return tx.Put(key, wrapperspb.Int64(n.GetValue()+1))
	})
	return err
}

func TestConcurrentTxnsLoseNoWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := storetest.New(t)
	key := s.Prefix() + "counter"
	const writers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for range writers {
		wg.Go(func() {
			for range each {
				if err := increment(ctx, s, key); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("increment: %v", err)
	}
	got, _, err := store.Get[*wrapperspb.Int64Value](ctx, s, key)
	if err != nil {
		t.Fatal(err)
	}
	// The first increments race on an absent key: its compare
	// (CreateRevision = 0) is what keeps two of them from both writing 1.
	if got.GetValue() != writers*each {
		t.Fatalf("counter = %d after %d increments: the read set did not guard the writes", got.GetValue(), writers*each)
	}
}

func TestAChangeBetweenReadAndCommitMakesTheTxnReadAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var changed atomic.Bool
	var s *store.Store
	s = storetest.New(t, storetest.BeforeCommit(func(txn string) {
		if txn == "guarded" && changed.CompareAndSwap(false, true) {
			if _, err := s.Client().Put(ctx, s.Prefix()+"watched", "changed"); err != nil {
				t.Error(err)
			}
		}
	}))
	watched, other := s.Prefix()+"watched", s.Prefix()+"other"
	if _, err := s.Client().Put(ctx, watched, "before"); err != nil {
		t.Fatal(err)
	}
	var seen []string
	_, err := s.Txn(ctx, "guarded", func(tx *store.Tx) error {
		v, _, err := tx.Raw(watched)
		if err != nil {
			return err
		}
		seen = append(seen, string(v))
		tx.PutRaw(other, v)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 || seen[0] != "before" || seen[1] != "changed" {
		t.Fatalf("apply saw %q, want [before changed]: the commit did not compare what was read", seen)
	}
	resp, err := s.Client().Get(ctx, other)
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "changed" {
		t.Fatalf("other = %v (%v), want the value of the second attempt", resp, err)
	}
}

func TestAKeyReadAbsentIsGuardedToo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var once atomic.Bool
	var s *store.Store
	s = storetest.New(t, storetest.BeforeCommit(func(txn string) {
		if once.CompareAndSwap(false, true) {
			if _, err := s.Client().Put(ctx, s.Prefix()+"slot", "taken"); err != nil {
				t.Error(err)
			}
		}
	}))
	_, err := s.Txn(ctx, "claim", func(tx *store.Tx) error {
		if _, exists, err := tx.Raw(s.Prefix() + "slot"); err != nil {
			return err
		} else if exists {
			return errdefs.ErrConflict
		}
		tx.PutRaw(s.Prefix()+"slot", []byte("mine"))
		return nil
	})
	if !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("Txn = %v, want the ErrConflict of its second attempt", err)
	}
}

func TestATxnThatKeepsLosingIsContended(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var s *store.Store
	s = storetest.New(t, storetest.BeforeCommit(func(string) {
		if _, err := s.Client().Put(ctx, s.Prefix()+"hot", "again"); err != nil {
			t.Error(err)
		}
	}))
	attempts := 0
	_, err := s.Txn(ctx, "hot", func(tx *store.Tx) error {
		attempts++
		if _, _, err := tx.Raw(s.Prefix() + "hot"); err != nil {
			return err
		}
		tx.PutRaw(s.Prefix()+"out", []byte("x"))
		return nil
	})
	if !errors.Is(err, errdefs.ErrContended) {
		t.Fatalf("Txn = %v, want ErrContended", err)
	}
	if attempts != 32 {
		t.Errorf("apply ran %d times, want 32", attempts)
	}
}

func TestAReadOnlyTxnCommitsNothing(t *testing.T) {
	t.Parallel()
	var commits atomic.Int32
	s := storetest.New(t, storetest.BeforeCommit(func(string) { commits.Add(1) }))
	rev, err := s.Txn(context.Background(), "read", func(tx *store.Tx) error {
		_, _, err := tx.Raw(s.Prefix() + "x")
		return err
	})
	if err != nil || rev != 0 || commits.Load() != 0 {
		t.Fatalf("Txn = %d, %v with %d commits; want 0, nil, none", rev, err, commits.Load())
	}
}

func TestPutKeepsTheLeaseOfALeasedKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := storetest.New(t)
	g, err := s.Client().Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Client().Revoke(context.Background(), g.ID) })
	key := s.Prefix() + "leased"
	if _, err := s.Client().Put(ctx, key, "a", clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	_, err = s.Txn(ctx, "rewrite", func(tx *store.Tx) error {
		if _, err := tx.LeaseOf(key); err != nil {
			return err
		}
		tx.PutRaw(key, []byte("b"))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.Client().Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease != int64(g.ID) || string(resp.Kvs[0].Value) != "b" {
		t.Fatalf("after the rewrite: %v (%v), want value b on lease %d", resp.Kvs, err, g.ID)
	}
}

func TestAKeyAssumedAbsentIsNeverOverwritten(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := storetest.New(t)
	slot := s.Prefix() + "slot"
	if _, err := s.Client().Put(ctx, slot, "taken"); err != nil {
		t.Fatal(err)
	}
	attempts := 0
	_, err := s.Txn(ctx, "claim", func(tx *store.Tx) error {
		attempts++
		if !tx.AssumeAbsent(slot) {
			return errdefs.ErrConflict
		}
		tx.PutRaw(slot, []byte("mine"))
		return nil
	})
	if !errors.Is(err, errdefs.ErrConflict) || attempts != 2 {
		t.Fatalf("Txn = %v after %d attempts, want the ErrConflict of its second attempt", err, attempts)
	}
	resp, err := s.Client().Get(ctx, slot)
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "taken" {
		t.Fatalf("slot = %v (%v), want it untouched", resp.Kvs, err)
	}
}

func TestDeletePrefixRemovesEveryKeyUnderItAndNoOther(t *testing.T) {
	t.Parallel()
	s := storetest.New(t)
	ctx := context.Background()
	for _, k := range []string{"idx/a/1", "idx/a/2", "idx/ab/1", "keep"} {
		if _, err := s.Client().Put(ctx, s.Prefix()+k, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Txn(ctx, "delete idx/a/", func(tx *store.Tx) error {
		tx.DeletePrefix(s.Prefix() + "idx/a/")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Client().Get(ctx, s.Prefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, kv := range resp.Kvs {
		left = append(left, string(kv.Key)[len(s.Prefix()):])
	}
	if len(left) != 2 || left[0] != "idx/ab/1" || left[1] != "keep" {
		t.Fatalf("keys left %v; want idx/ab/1 and keep", left)
	}
}
