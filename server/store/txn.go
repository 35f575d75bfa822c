package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/osvc/osvc/pkg/errdefs"
)

// txnAttempts bounds Txn's compare-and-swap loop: past it the keys are too
// contended and the caller gets errdefs.ErrContended to retry at its level.
const txnAttempts = 32

// Txn runs apply as one read-modify-write transaction, in the manner of
// etcd's concurrency.STM: every key apply reads through the *Tx joins its
// read set, and the writes apply asks for are committed only if no key of
// the read set changed since it was read (ModRevision compared; a key read
// absent must still be absent). A compare that fails means someone wrote
// in between: Txn runs apply again on fresh values, after a short random
// pause, up to 32 times, then gives up with errdefs.ErrContended. This is
// the one retry and backoff policy of every read-modify-write of osvc.
//
// Fencing follows from it: an agent's report reads the run's assignment key
// and checks its ModRevision against the report's fencing token, so the
// commit compares it too, and a lease that ends between the read and the
// commit makes the commit fail and the next attempt see the key gone.
//
// apply must not keep state across attempts other than through the *Tx; an
// error it returns aborts the transaction and is returned as is. A
// transaction that wrote nothing commits nothing. name says in errors and
// commit hooks which transaction it is. The returned revision is that of the
// commit (0 when nothing was written).
func (s *Store) Txn(ctx context.Context, name string, apply func(tx *Tx) error, opts ...TxnOption) (int64, error) {
	tx := &Tx{s: s, ctx: ctx, reads: map[string]*read{}}
	for _, o := range opts {
		o(tx)
	}
	if len(tx.prefetch) > 0 {
		if err := tx.fetch(tx.prefetch); err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
	}
	for attempt := 0; attempt < txnAttempts; attempt++ {
		tx.writes, tx.order = map[string]clientv3.Op{}, nil
		if err := apply(tx); err != nil {
			return 0, err
		}
		if len(tx.writes) == 0 {
			return 0, nil
		}
		if s.beforeCommit != nil {
			s.beforeCommit(name)
		}
		rev, ok, err := tx.commit()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		if ok {
			return rev, nil
		}
		s.logger.Trace("concurrent change, retrying", "txn", name, "attempt", attempt+1)
		if err := pause(ctx, attempt); err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
	}
	return 0, errdefs.Newf(errdefs.ErrContended, "%s: what it reads kept changing after %d attempts; try again", name, txnAttempts)
}

// TxnOption tunes a Txn.
type TxnOption func(*Tx)

// Prefetch reads keys in one round trip before the first attempt, so a
// transaction that reads several keys does not pay one round trip each.
func Prefetch(keys ...string) TxnOption {
	return func(tx *Tx) { tx.prefetch = append(tx.prefetch, keys...) }
}

// Seed puts key in the read set as having value at modRev on etcd lease
// lease, without reading it: for a caller that knows it from its own
// commit. The commit still compares modRev, so a wrong seed costs an
// attempt, never a wrong write.
func Seed(key string, value []byte, modRev, lease int64) TxnOption {
	return func(tx *Tx) { tx.reads[key] = &read{value: value, modRev: modRev, lease: lease} }
}

// Tx is one attempt of a Txn: reads joined to its read set, writes to
// commit.
type Tx struct {
	s        *Store
	ctx      context.Context
	prefetch []string
	reads    map[string]*read
	writes   map[string]clientv3.Op
	order    []string
}

// read is a key as the transaction read it; modRev 0 means absent.
type read struct {
	value  []byte
	modRev int64
	lease  int64
}

// Context returns the transaction's context.
func (tx *Tx) Context() context.Context { return tx.ctx }

// Store returns the store, for its key functions.
func (tx *Tx) Store() *Store { return tx.s }

// get reads key into the read set unless it is there already.
func (tx *Tx) get(key string) (*read, error) {
	if r, ok := tx.reads[key]; ok {
		return r, nil
	}
	if err := tx.fetch([]string{key}); err != nil {
		return nil, err
	}
	return tx.reads[key], nil
}

// fetch reads keys in one etcd transaction (one consistent revision).
func (tx *Tx) fetch(keys []string) error {
	ops := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		ops[i] = clientv3.OpGet(k)
	}
	resp, err := tx.s.client.Txn(tx.ctx).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("read %s: %w", keys[0], err)
	}
	for i, k := range keys {
		tx.reads[k] = readFrom(resp.Responses[i].GetResponseRange().GetKvs())
	}
	return nil
}

func readFrom(kvs []*mvccpb.KeyValue) *read {
	if len(kvs) == 0 {
		return &read{}
	}
	return &read{value: kvs[0].Value, modRev: kvs[0].ModRevision, lease: kvs[0].Lease}
}

// Revision returns the ModRevision of key as the transaction reads it, 0
// when the key is absent. The key joins the read set.
func (tx *Tx) Revision(key string) (int64, error) {
	r, err := tx.get(key)
	if err != nil {
		return 0, err
	}
	return r.modRev, nil
}

// Raw returns key's value and whether it exists. The key joins the read set.
func (tx *Tx) Raw(key string) ([]byte, bool, error) {
	r, err := tx.get(key)
	if err != nil {
		return nil, false, err
	}
	return r.value, r.modRev != 0, nil
}

// AssumeAbsent tells whether key is absent without a round trip when the
// transaction has not read it yet: the key then joins the read set as
// absent. For keys the caller has every reason to believe new (a log chunk
// past the lines a run counts): the commit compares them absent, so one
// that exists after all fails the commit, the read set is refreshed, and the
// next attempt is told the truth. A wrong guess costs an attempt, never an
// overwrite.
func (tx *Tx) AssumeAbsent(key string) bool {
	r, ok := tx.reads[key]
	if !ok {
		r = &read{}
		tx.reads[key] = r
	}
	return r.modRev == 0
}

// LeaseOf returns the etcd lease key is attached to (0 for none or absent).
// The key joins the read set: the commit fails if it was rewritten since.
func (tx *Tx) LeaseOf(key string) (int64, error) {
	r, err := tx.get(key)
	if err != nil {
		return 0, err
	}
	return r.lease, nil
}

// Load reads key into a new T within tx; errdefs.ErrNotFound when absent.
// Either way the key joins the read set, so "absent" is guarded too.
func Load[T proto.Message](tx *Tx, key string) (T, error) {
	var zero T
	data, ok, err := tx.Raw(key)
	if err != nil {
		return zero, err
	}
	if !ok {
		return zero, fmt.Errorf("%s: %w", key, errdefs.ErrNotFound)
	}
	m, err := Unmarshal[T](data)
	if err != nil {
		return zero, fmt.Errorf("%s: %w", key, err)
	}
	return m, nil
}

// Put writes m at key when the transaction commits. A key that is attached
// to an etcd lease keeps it unless opts name another (clientv3.WithLease).
func (tx *Tx) Put(key string, m proto.Message, opts ...clientv3.OpOption) error {
	data, err := tx.s.Marshal(m)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	tx.PutRaw(key, data, opts...)
	return nil
}

// PutRaw writes data at key when the transaction commits, keeping the key's
// lease unless opts name one.
func (tx *Tx) PutRaw(key string, data []byte, opts ...clientv3.OpOption) {
	if len(opts) == 0 {
		if r, ok := tx.reads[key]; ok && r.lease != 0 {
			opts = []clientv3.OpOption{clientv3.WithIgnoreLease()}
		}
	}
	tx.write(key, clientv3.OpPut(key, string(data), opts...))
}

// Delete removes key when the transaction commits.
func (tx *Tx) Delete(key string) { tx.write(key, clientv3.OpDelete(key)) }

// DeletePrefix removes every key under prefix when the transaction
// commits: one operation however many keys. The keys do not join the read
// set, so it is for keys that belong to what the transaction deletes (an
// image's run index) and that nothing writes without reading that first.
func (tx *Tx) DeletePrefix(prefix string) {
	tx.write(prefix, clientv3.OpDelete(prefix, clientv3.WithPrefix()))
}

func (tx *Tx) write(key string, op clientv3.Op) {
	if _, ok := tx.writes[key]; !ok {
		tx.order = append(tx.order, key)
	}
	tx.writes[key] = op
}

// commit writes the attempt's writes guarded by its read set; on a failed
// compare it refreshes the read set from the same etcd transaction.
func (tx *Tx) commit() (int64, bool, error) {
	keys := make([]string, 0, len(tx.reads))
	for k := range tx.reads {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	cmps := make([]clientv3.Cmp, 0, len(keys))
	refresh := make([]clientv3.Op, 0, len(keys))
	for _, k := range keys {
		if r := tx.reads[k]; r.modRev == 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		} else {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", r.modRev))
		}
		refresh = append(refresh, clientv3.OpGet(k))
	}
	ops := make([]clientv3.Op, 0, len(tx.order))
	for _, k := range tx.order {
		ops = append(ops, tx.writes[k])
	}
	resp, err := tx.s.client.Txn(tx.ctx).If(cmps...).Then(ops...).Else(refresh...).Commit()
	if err != nil {
		return 0, false, err
	}
	if resp.Succeeded {
		return resp.Header.Revision, true, nil
	}
	for i, k := range keys {
		tx.reads[k] = readFrom(resp.Responses[i].GetResponseRange().GetKvs())
	}
	return 0, false, nil
}

// pause waits before attempt+2: a random pause of up to 1 ms doubled per
// attempt, capped at 128 ms, so writers that keep colliding spread out.
func pause(ctx context.Context, attempt int) error {
	ceiling := time.Millisecond << min(attempt, 7)
	t := time.NewTimer(time.Duration(rand.Int64N(int64(ceiling))))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
