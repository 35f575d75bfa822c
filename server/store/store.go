// Package store is osvc's access to etcd: keys, protobuf values, compare-and-swap
// transactions and paginated lists, all under one key prefix.
package store

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/osvc/osvc/pkg/errdefs"
)

// MaxValueBytes is the largest value the store writes; bigger values are refused
// with errdefs.ErrInvalidArgument before the write (etcd's request limit is 1.5 MiB).
const MaxValueBytes = 1 << 20

// DefaultPrefix is the key prefix when Config.Prefix is empty.
const DefaultPrefix = "/osvc/"

const (
	defaultPageSize = 50
	maxPageSize     = 1000
)

// Config configures a Store.
type Config struct {
	// Client is a connected etcd client; the Store does not close it.
	Client *clientv3.Client
	// Prefix is put before every key; DefaultPrefix when empty. A missing
	// trailing "/" is added.
	Prefix string
	Logger hclog.Logger
	// BeforeCommit, when set, is called by every Txn after its reads and
	// before its commit, with the transaction's name: tests use it to change
	// the world between the two (end an agent's lease, say) and prove the
	// commit's compares refuse what they must.
	BeforeCommit func(txn string)
}

// Store reads and writes protobuf values in etcd under one prefix.
type Store struct {
	client       *clientv3.Client
	prefix       string
	logger       hclog.Logger
	beforeCommit func(txn string)
}

// New validates cfg and returns a Store.
func New(cfg Config) (*Store, error) {
	if cfg.Client == nil {
		return nil, errors.New("store: Config.Client is required")
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Store{client: cfg.Client, prefix: prefix, logger: logger.Named("store"), beforeCommit: cfg.BeforeCommit}, nil
}

// Client returns the etcd client, for watches, leases and transactions built by hand.
func (s *Store) Client() *clientv3.Client { return s.client }

// Prefix returns the key prefix, ending in "/".
func (s *Store) Prefix() string { return s.prefix }

// Marshal encodes m and refuses values larger than MaxValueBytes, so an
// oversized value fails here with a clear error instead of in etcd.
func (s *Store) Marshal(m proto.Message) ([]byte, error) {
	data, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	if len(data) > MaxValueBytes {
		return nil, fmt.Errorf("%s of %d bytes is above the store's limit of %d bytes: %w",
			m.ProtoReflect().Descriptor().FullName(), len(data), MaxValueBytes, errdefs.ErrInvalidArgument)
	}
	return data, nil
}

// Unmarshal decodes a value read by hand (from a watch or a Txn response).
func Unmarshal[T proto.Message](data []byte) (T, error) {
	m := newMessage[T]()
	if err := proto.Unmarshal(data, m); err != nil {
		var zero T
		return zero, fmt.Errorf("decode %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return m, nil
}

// newMessage returns an empty, usable T (a typed nil pointer would not be).
func newMessage[T proto.Message]() T {
	var zero T
	return zero.ProtoReflect().Type().New().Interface().(T)
}

// Get reads key into a new T and returns it with its ModRevision; errdefs.ErrNotFound when absent.
func Get[T proto.Message](ctx context.Context, s *Store, key string) (T, int64, error) {
	var zero T
	resp, err := s.client.Get(ctx, key)
	if err != nil {
		return zero, 0, fmt.Errorf("get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return zero, 0, fmt.Errorf("%s: %w", key, errdefs.ErrNotFound)
	}
	kv := resp.Kvs[0]
	m, err := Unmarshal[T](kv.Value)
	if err != nil {
		return zero, 0, fmt.Errorf("get %s: %w", key, err)
	}
	return m, kv.ModRevision, nil
}

// Create writes m at key only when the key does not exist (ErrConflict otherwise)
// and returns the revision of the write. opts apply to the put (e.g. WithLease).
func (s *Store) Create(ctx context.Context, key string, m proto.Message, opts ...clientv3.OpOption) (int64, error) {
	return s.Txn(ctx, "create "+key, func(tx *Tx) error {
		if _, exists, err := tx.Raw(key); err != nil {
			return err
		} else if exists {
			return fmt.Errorf("create %s: already exists: %w", key, errdefs.ErrConflict)
		}
		return tx.Put(key, m, opts...)
	})
}

// Put writes m at key unconditionally and returns the revision of the write.
func (s *Store) Put(ctx context.Context, key string, m proto.Message, opts ...clientv3.OpOption) (int64, error) {
	data, err := s.Marshal(m)
	if err != nil {
		return 0, fmt.Errorf("put %s: %w", key, err)
	}
	resp, err := s.client.Put(ctx, key, string(data), opts...)
	if err != nil {
		return 0, fmt.Errorf("put %s: %w", key, err)
	}
	return resp.Header.Revision, nil
}

// Delete removes key and returns the revision of the delete; errdefs.ErrNotFound when
// the key holds nothing.
func (s *Store) Delete(ctx context.Context, key string) (int64, error) {
	resp, err := s.client.Delete(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("delete %s: %w", key, err)
	}
	if resp.Deleted == 0 {
		return 0, fmt.Errorf("%s: %w", key, errdefs.ErrNotFound)
	}
	return resp.Header.Revision, nil
}

// Update reads key into a fresh T, calls mutate, and writes it back in a Txn
// (so a concurrent change makes it read and mutate again). mutate returning
// an error aborts with that error. A missing key is ErrNotFound. Returns the
// stored value and its new revision. The key keeps its lease, if it had one.
func Update[T proto.Message](ctx context.Context, s *Store, key string, mutate func(T) error) (T, int64, error) {
	var out T
	rev, err := s.Txn(ctx, "update "+key, func(tx *Tx) error {
		m, err := Load[T](tx, key)
		if err != nil {
			return fmt.Errorf("update %s: %w", key, err)
		}
		if err := mutate(m); err != nil {
			return err
		}
		out = m
		return tx.Put(key, m)
	})
	if err != nil {
		var zero T
		return zero, 0, err
	}
	return out, rev, nil
}

// List returns up to pageSize values under prefix in key order, and a token for
// the next page ("" at the end). pageSize <= 0 means 50; above 1000 is capped.
// A token from another prefix or a damaged one is errdefs.InvalidArgument("page_token").
func List[T proto.Message](ctx context.Context, s *Store, prefix string, pageSize int, pageToken string) ([]T, string, error) {
	if pageSize <= 0 {
		pageSize = defaultPageSize
	}
	if pageSize > maxPageSize {
		pageSize = maxPageSize
	}
	start := prefix
	if pageToken != "" {
		after, err := decodePageToken(prefix, pageToken)
		if err != nil {
			return nil, "", err
		}
		// The smallest key after the last one returned.
		start = after + "\x00"
	}
	resp, err := s.client.Get(ctx, start,
		clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)),
		clientv3.WithLimit(int64(pageSize)),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, "", fmt.Errorf("list %s: %w", prefix, err)
	}
	out := make([]T, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		m, err := Unmarshal[T](kv.Value)
		if err != nil {
			return nil, "", fmt.Errorf("list %s: key %s: %w", prefix, kv.Key, err)
		}
		out = append(out, m)
	}
	next := ""
	if resp.More && len(resp.Kvs) > 0 {
		next = encodePageToken(string(resp.Kvs[len(resp.Kvs)-1].Key))
	}
	return out, next, nil
}

// A page token is the last key returned, base64url-encoded: opaque to clients,
// and checked against the listed prefix so it cannot read outside it.
func encodePageToken(lastKey string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(lastKey))
}

func decodePageToken(prefix, token string) (string, error) {
	raw, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil {
		return "", errdefs.InvalidArgument("page_token", "not a token returned by this list; start again without one")
	}
	key := string(raw)
	if !strings.HasPrefix(key, prefix) || key == prefix {
		return "", errdefs.InvalidArgument("page_token", "the token belongs to another list; start again without one")
	}
	return key, nil
}

// opsPerTxn keeps a read transaction under etcd's default limit of 128
// operations.
const opsPerTxn = 100

// GetManyRaw reads keys, a hundred per round trip, in their order; a
// missing key gives nil.
func GetManyRaw(ctx context.Context, s *Store, keys []string) ([]*mvccpb.KeyValue, error) {
	out := make([]*mvccpb.KeyValue, 0, len(keys))
	for len(keys) > 0 {
		n := min(len(keys), opsPerTxn)
		ops := make([]clientv3.Op, n)
		for i, k := range keys[:n] {
			ops[i] = clientv3.OpGet(k)
		}
		resp, err := s.client.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", keys[0], err)
		}
		for _, r := range resp.Responses {
			var kv *mvccpb.KeyValue
			if kvs := r.GetResponseRange().GetKvs(); len(kvs) > 0 {
				kv = kvs[0]
			}
			out = append(out, kv)
		}
		keys = keys[n:]
	}
	return out, nil
}

// GetMany reads keys into Ts, a hundred per round trip, in their order,
// with their ModRevisions; a missing key gives a nil T and revision 0.
func GetMany[T proto.Message](ctx context.Context, s *Store, keys []string) ([]T, []int64, error) {
	kvs, err := GetManyRaw(ctx, s, keys)
	if err != nil {
		return nil, nil, err
	}
	out, revs := make([]T, len(kvs)), make([]int64, len(kvs))
	for i, kv := range kvs {
		if kv == nil {
			continue
		}
		m, err := Unmarshal[T](kv.Value)
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", keys[i], err)
		}
		out[i], revs[i] = m, kv.ModRevision
	}
	return out, revs, nil
}

// ListKeys returns up to pageSize keys under prefix in key order, without
// their values, and a token for the next page ("" at the end); tokens as List's.
func ListKeys(ctx context.Context, s *Store, prefix string, pageSize int, pageToken string) ([]string, string, error) {
	if pageSize <= 0 {
		pageSize = defaultPageSize
	}
	pageSize = min(pageSize, maxPageSize)
	start := prefix
	if pageToken != "" {
		after, err := decodePageToken(prefix, pageToken)
		if err != nil {
			return nil, "", err
		}
		start = after + "\x00"
	}
	resp, err := s.client.Get(ctx, start, clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithKeysOnly(),
		clientv3.WithLimit(int64(pageSize)), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, "", fmt.Errorf("list %s: %w", prefix, err)
	}
	keys := make([]string, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		keys[i] = string(kv.Key)
	}
	next := ""
	if resp.More && len(keys) > 0 {
		next = encodePageToken(keys[len(keys)-1])
	}
	return keys, next, nil
}
