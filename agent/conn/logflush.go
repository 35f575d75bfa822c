package conn

import (
	"context"
	"errors"
	"fmt"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

// inFlight is a log batch sent and not acknowledged yet.
type inFlight struct {
	batch *osvcv1.LogBatch
	ack   <-chan *osvcv1.Ack
}

// flushLogs sends queued log lines until ctx ends, stream after stream.
// Lines leave the queue only once acknowledged, so batches cut by a
// disconnection or refused for a reason that may pass go again.
func (c *Conn) flushLogs(ctx context.Context) {
	for {
		s, err := c.current(ctx)
		if err != nil {
			return
		}
		c.flushSession(ctx, s)
		if ctx.Err() != nil {
			return
		}
	}
}

// flushSession sends log batches on session s, up to logBatchesInFlight of
// them before the first is acknowledged (the server takes a stream's
// reports in order, so Acks come in order), from the oldest line not
// acknowledged on. It returns when the session ends, when ctx does, or, after
// a pause, once a batch failed and every batch sent after it was answered:
// the caller starts again from the oldest line not acknowledged. Each batch
// names the line it follows, so the server refuses, rather than stores past
// a gap, a batch sent after one that failed.
func (c *Conn) flushSession(ctx context.Context, s *session) {
	c.logs.rewind()
	var (
		sent   []inFlight
		failed error
		// lingered fires at due, when the first lingering batch is.
		lingered <-chan time.Time
		due      time.Time
	)
	for {
		if failed != nil && len(sent) == 0 {
			t := time.NewTimer(c.cfg.InitialBackoff)
			select {
			case <-ctx.Done():
			case <-s.done:
			case <-t.C:
			}
			t.Stop()
			return
		}
		// New lines or a flush matter only while another batch may go.
		wake := c.logs.wake
		if failed != nil || len(sent) >= logBatchesInFlight {
			wake = nil
			if failed == nil && c.logWindowFull != nil {
				c.logWindowFull()
			}
		} else {
			b, next := c.logs.next()
			if b != nil {
				ack, err := c.post(ctx, s, &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_LogBatch{LogBatch: b}})
				if err != nil {
					return // the session or ctx ended
				}
				sent = append(sent, inFlight{batch: b, ack: ack})
				continue
			}
			if !next.Equal(due) {
				due, lingered = next, nil
				if !due.IsZero() {
					lingered = c.after(due.Sub(c.logs.now()))
				}
			}
		}
		var oldest <-chan *osvcv1.Ack
		if len(sent) > 0 {
			oldest = sent[0].ack
		}
		select {
		case <-ctx.Done():
			return
		case <-s.done:
			return
		case <-wake:
		case <-lingered:
			due, lingered = time.Time{}, nil
		case a := <-oldest:
			b := sent[0].batch
			sent = sent[1:]
			if err := c.loggedAck(b, ackError(a)); err != nil && failed == nil {
				failed = err
			}
		}
	}
}

// loggedAck settles batch b as its Ack says: acknowledged lines leave the
// queue; a run the server will never take lines of (no longer this agent's,
// gone, or lines it refuses) loses its queued lines; any other refusal is
// returned, and the lines stay to be sent again.
func (c *Conn) loggedAck(b *osvcv1.LogBatch, err error) error {
	switch {
	case err == nil:
		c.logs.acked(b)
		return nil
	case errors.Is(err, errdefs.ErrStaleLease) || errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, errdefs.ErrInvalidArgument):
		c.logger.Warn("server refused log lines, dropping the run's queued lines", "run", b.GetRun(), "error", err)
		c.logs.drop(b.GetRun(), b.GetFencingToken())
		return nil
	case errors.Is(err, errdefs.ErrOutOfRange):
		// It follows a batch that failed: that failure says why.
		return err
	default:
		c.logger.Warn("sending log lines failed, will retry", "run", b.GetRun(), "error", err)
		return err
	}
}

// WaitLogRoom waits until n more log lines fit in the queue without
// dropping any (or the queue is empty, for n past its bound): for a producer
// that would rather wait than lose lines, which SendLogs never does. ctx
// bounds the wait.
func (c *Conn) WaitLogRoom(ctx context.Context, n int) error {
	return c.awaitLogs(ctx, func() (bool, <-chan struct{}) { return c.logs.room(n) }, "wait for room in the log queue")
}

// awaitLogs waits until done says so; done also returns a channel closed
// when its answer may have changed. what names the wait in errors.
func (c *Conn) awaitLogs(ctx context.Context, done func() (bool, <-chan struct{}), what string) error {
	for {
		ok, changed := done()
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-c.stopped:
			return ErrClosed
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, context.Cause(ctx))
		}
	}
}
