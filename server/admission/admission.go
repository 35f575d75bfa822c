// Package admission bounds how many calls of one kind do their costly part
// at once (imports reading files, uploads receiving data). A call past the
// bound waits for its turn for as long as its context lives: a burst of
// honest calls (an agent's result upload while an administrator imports a
// month of updates) then succeeds a little later instead of failing, and
// only a call whose deadline passes while it waits is refused, with
// errdefs.ErrResourceExhausted naming the setting that bounds it.
package admission

import (
	"context"
	"errors"
	"fmt"

	"github.com/osvc/osvc/pkg/errdefs"
)

// Config configures a Gate.
type Config struct {
	// Limit is how many calls may be inside at once; at least 1.
	Limit int
	// What names the calls in errors, e.g. "imports".
	What string
	// Setting names what sets Limit, e.g. "osvc-server --max-concurrent-imports".
	Setting string
}

// Gate lets at most Limit calls in at once.
type Gate struct {
	slots chan struct{}
	what  string
	set   string
}

// New validates cfg and returns a Gate.
func New(cfg Config) (*Gate, error) {
	if cfg.Limit < 1 {
		return nil, fmt.Errorf("admission: %s limit %d: allow at least 1 at a time (%s)", cfg.What, cfg.Limit, cfg.Setting)
	}
	if cfg.What == "" || cfg.Setting == "" {
		return nil, errors.New("admission: Config.What and Config.Setting are required: errors name them")
	}
	return &Gate{slots: make(chan struct{}, cfg.Limit), what: cfg.What, set: cfg.Setting}, nil
}

// Limit is how many calls may be inside at once.
func (g *Gate) Limit() int { return cap(g.slots) }

// Enter waits until the call may go in and returns the function that lets
// the next one in; call it exactly once. When ctx ends first, the error
// wraps errdefs.ErrResourceExhausted and ctx's error.
func (g *Gate) Enter(ctx context.Context) (release func(), err error) {
	// A free slot wins over an ended context.
	select {
	case g.slots <- struct{}{}:
		return func() { <-g.slots }, nil
	default:
	}
	select {
	case g.slots <- struct{}{}:
		return func() { <-g.slots }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %d %s are running, the most %s allows, and the call ended waiting for its turn (%w); try again later or raise the limit",
			errdefs.ErrResourceExhausted, cap(g.slots), g.what, g.set, context.Cause(ctx))
	}
}
