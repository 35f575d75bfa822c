package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// electionRetryDelay spaces campaigns after a lost session or an error, so a
// broken cluster is not hammered.
const electionRetryDelay = time.Second

// Election is one kind of work a single replica does at a time.
type Election struct {
	// Prefix is where the replicas campaign; one per kind of work, and no
	// prefix of another's.
	Prefix string
	// ID names this replica among the candidates.
	ID string
	// TTL is the election session's: how long a dead leader blocks the others.
	TTL time.Duration
	// Logger says when this replica is elected and when it campaigns again.
	Logger hclog.Logger
}

// RunElected campaigns in e until ctx ends; while this replica leads, it
// runs lead with a context that ends when the session expires (another
// replica may then lead) or ctx ends. When lead returns or leadership is
// lost, it resigns and campaigns again after a short delay. It returns nil
// once ctx ends.
func (s *Store) RunElected(ctx context.Context, e Election, lead func(ctx context.Context) error) error {
	for {
		err := s.leadOnce(ctx, e, lead)
		if ctx.Err() != nil {
			return nil
		}
		e.Logger.Warn("lost leadership or etcd; campaigning again", "election", e.Prefix, "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(electionRetryDelay):
		}
	}
}

// leadOnce wins the election and runs lead until the session or ctx ends.
func (s *Store) leadOnce(ctx context.Context, e Election, lead func(ctx context.Context) error) error {
	session, err := concurrency.NewSession(s.client, concurrency.WithTTL(int(e.TTL/time.Second)), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("election session: %w", err)
	}
	defer session.Close()
	// Campaign does not return when its session expires: run it, and the
	// leader's work, under a ctx canceled by session.Done().
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-session.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	election := concurrency.NewElection(session, e.Prefix)
	if err := election.Campaign(ctx, e.ID); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	e.Logger.Info("elected", "election", e.Prefix, "server", e.ID)
	defer func() {
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		defer rcancel()
		_ = election.Resign(rctx)
	}()
	err = lead(ctx)
	select {
	case <-session.Done():
		return errors.New("election session expired")
	default:
		return err
	}
}
