package pipeline

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// progressPump sends Progress reports from its own goroutine: the engine's
// progress callback only records the latest value, so a slow or disconnected
// server never stalls the engine. Reports are throttled to one per
// progressEvery (each is a write of the run in etcd); the last value is
// always sent when the pump stops.
type progressPump struct {
	r    *run
	ctx  context.Context
	wake chan struct{}
	quit chan struct{}
	wg   sync.WaitGroup

	mu    sync.Mutex
	cur   *osvcv1.Progress
	dirty bool
}

func (r *run) startProgress(ctx context.Context) *progressPump {
	p := &progressPump{r: r, ctx: ctx, wake: make(chan struct{}, 1), quit: make(chan struct{}), cur: &osvcv1.Progress{}}
	p.wg.Go(p.loop)
	return p
}

// set records the run's percent and, when u is not nil, the update's; it
// never blocks.
func (p *progressPump) set(percent int32, u *osvcv1.UpdateResult) {
	p.put(&osvcv1.Progress{Percent: percent, Update: u})
}

// setBytes records the run's percent and how many bytes the running step
// has moved; it never blocks.
func (p *progressPump) setBytes(percent int32, step osvcv1.Step, done, total int64) {
	p.put(&osvcv1.Progress{Percent: percent, Step: step, BytesDone: done, BytesTotal: total})
}

func (p *progressPump) put(next *osvcv1.Progress) {
	p.mu.Lock()
	if proto.Equal(next, p.cur) {
		p.mu.Unlock()
		return
	}
	p.cur, p.dirty = next, true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// stop sends the last value if it was not sent and waits for the goroutine.
func (p *progressPump) stop() {
	close(p.quit)
	p.wg.Wait()
}

func (p *progressPump) loop() {
	var last time.Time
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.quit:
			p.send()
			return
		case <-p.wake:
		}
		if wait := progressEvery - time.Since(last); !last.IsZero() && wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-p.ctx.Done():
				t.Stop()
				return
			case <-p.quit:
				t.Stop()
				p.send()
				return
			case <-t.C:
			}
		}
		p.send()
		last = time.Now()
	}
}

func (p *progressPump) send() {
	p.mu.Lock()
	if !p.dirty {
		p.mu.Unlock()
		return
	}
	m := p.cur
	p.dirty = false
	p.mu.Unlock()
	if p.ctx.Err() != nil {
		return
	}
	if err := p.r.report(p.r.rep.Progress(p.ctx, m)); err != nil {
		p.r.log.Warn("progress report failed", "error", err)
	}
}
