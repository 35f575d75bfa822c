package auth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/store"
)

// DefaultAuditRetention is how long audit events are kept.
const DefaultAuditRetention = 90 * 24 * time.Hour

// auditPruneEvery is how often events past the retention are deleted.
const auditPruneEvery = time.Hour

// maxAuditScan bounds the events one ListAuditEvents reads while filtering.
const maxAuditScan = 10000

// Audit keeps the audit trail in etcd: one key per event under audit/,
// named by time so a range delete drops the expired ones.
type Audit struct {
	st        *store.Store
	logger    hclog.Logger
	retention time.Duration
	now       func() time.Time
}

// NewAudit returns the audit trail on st keeping events for retention
// (0: DefaultAuditRetention).
func NewAudit(st *store.Store, retention time.Duration, logger hclog.Logger) *Audit {
	if retention <= 0 {
		retention = DefaultAuditRetention
	}
	return &Audit{st: st, logger: logger, retention: retention, now: time.Now}
}

func (a *Audit) prefix() string { return a.st.Prefix() + "audit/" }

// key orders events by time: 20 digits of Unix nanoseconds, then a random
// suffix so two events in one nanosecond both stay.
func (a *Audit) key(t time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s%020d-%s", a.prefix(), t.UnixNano(), hex.EncodeToString(b[:]))
}

// Record stores ev, stamped now.
func (a *Audit) Record(ctx context.Context, ev *osvcv1.AuditEvent) error {
	now := a.now()
	ev.Time = timestamppb.New(now)
	_, err := a.st.Put(ctx, a.key(now), ev)
	return err
}

// List returns events newest first, at or after since and of principal
// when they are set.
func (a *Audit) List(ctx context.Context, since time.Time, principal string, pageSize int, pageToken string) ([]*osvcv1.AuditEvent, string, error) {
	if pageSize <= 0 || pageSize > 1000 {
		pageSize = 100
	}
	end := clientv3.GetPrefixRangeEnd(a.prefix())
	if pageToken != "" {
		if len(pageToken) > 64 {
			return nil, "", errdefs.InvalidArgument("page_token", "not a token this server returned")
		}
		end = a.prefix() + pageToken
	}
	start := a.prefix()
	if !since.IsZero() {
		start = fmt.Sprintf("%s%020d", a.prefix(), since.UnixNano())
	}
	var out []*osvcv1.AuditEvent
	scanned := 0
	for scanned < maxAuditScan {
		resp, err := a.st.Client().Get(ctx, start, clientv3.WithRange(end), clientv3.WithLimit(int64(pageSize)),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
		if err != nil {
			return nil, "", fmt.Errorf("list audit events: %w", err)
		}
		for i, kv := range resp.Kvs {
			scanned++
			end = string(kv.Key)
			ev, err := store.Unmarshal[*osvcv1.AuditEvent](kv.Value)
			if err != nil {
				continue
			}
			if principal == "" || ev.GetPrincipal() == principal {
				out = append(out, ev)
				if len(out) == pageSize {
					next := ""
					if resp.More || i < len(resp.Kvs)-1 {
						next = end[len(a.prefix()):]
					}
					return out, next, nil
				}
			}
		}
		if !resp.More {
			return out, "", nil
		}
	}
	return out, end[len(a.prefix()):], nil
}

// Prune deletes the events older than the retention.
func (a *Audit) Prune(ctx context.Context) (int64, error) {
	cutoff := fmt.Sprintf("%s%020d", a.prefix(), a.now().Add(-a.retention).UnixNano())
	resp, err := a.st.Client().Delete(ctx, a.prefix(), clientv3.WithRange(cutoff))
	if err != nil {
		return 0, fmt.Errorf("prune audit events: %w", err)
	}
	return resp.Deleted, nil
}

// Run prunes the trail every hour until ctx ends. Every replica may: a
// range delete twice does no harm.
func (a *Audit) Run(ctx context.Context) error {
	t := time.NewTicker(auditPruneEvery)
	defer t.Stop()
	for {
		if n, err := a.Prune(ctx); err != nil && ctx.Err() == nil {
			a.logger.Warn("pruning the audit trail failed; the next pass tries again", "error", err)
		} else if n > 0 {
			a.logger.Debug("pruned the audit trail", "events", n, "retention", a.retention)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
