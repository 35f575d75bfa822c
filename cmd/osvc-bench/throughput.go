package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// throughputRounds is how often the throughput benchmarks alternate their
// sides, so drift in the machine's load hits both alike; each round gives one
// sample of each figure.
const throughputRounds = 3

// roundSizes splits n operations into throughputRounds rounds (fewer when n
// is smaller).
func roundSizes(n int) []int { return split(n, min(throughputRounds, n)) }

// split divides n into parts sizes that differ by at most one, the larger first.
func split(n, parts int) []int {
	out := make([]int, parts)
	for i := range out {
		out[i] = n / parts
		if i < n%parts {
			out[i]++
		}
	}
	return out
}

// workerTotals is how many operations each worker does over all rounds of n
// operations, as measure hands them out.
func workerTotals(n, workers int) []int {
	totals := make([]int, workers)
	for _, r := range roundSizes(n) {
		for w, ops := range split(r, workers) {
			totals[w] += ops
		}
	}
	return totals
}

// load is what one round of concurrent workers did.
type load struct {
	ops       int
	elapsed   time.Duration
	latencies []time.Duration
}

func (l load) rate() float64 { return float64(l.ops) / l.elapsed.Seconds() }

// workFunc does ops operations as worker and returns each one's latency.
type workFunc func(ctx context.Context, worker, ops int) ([]time.Duration, error)

// measure runs n operations spread over workers concurrent workers and times
// the whole. The first error stops the other workers.
func measure(ctx context.Context, workers, n int, work workFunc) (load, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	shares := split(n, workers)
	lats := make([][]time.Duration, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w, ops := range shares {
		if ops == 0 {
			continue
		}
		wg.Go(func() {
			l, err := work(ctx, w, ops)
			if err != nil {
				cancel(fmt.Errorf("worker %d: %w", w, err))
				return
			}
			lats[w] = l
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := context.Cause(ctx); err != nil {
		return load{}, err
	}
	return load{ops: n, elapsed: elapsed, latencies: slices.Concat(lats...)}, nil
}

// perOp makes a workFunc of one operation at a time, timing each; i counts
// the worker's operations in this round.
func perOp(op func(ctx context.Context, worker, i int) error) workFunc {
	return func(ctx context.Context, worker, ops int) ([]time.Duration, error) {
		lats := make([]time.Duration, 0, ops)
		for i := range ops {
			start := time.Now()
			if err := op(ctx, worker, i); err != nil {
				return nil, err
			}
			lats = append(lats, time.Since(start))
		}
		return lats, nil
	}
}

// series collects the rounds of one throughput figure.
type series struct {
	name, unit string
	samples    []float64
	latencies  []time.Duration
}

func (s *series) add(l load) {
	s.samples = append(s.samples, l.rate())
	s.latencies = append(s.latencies, l.latencies...)
}

// figure is the median rate of the rounds, with latencies over all of them.
func (s *series) figure() Figure {
	return Figure{
		Name: s.name, Unit: s.unit, Value: median(s.samples), Samples: s.samples,
		P50Ms: millis(percentile(s.latencies, 0.50)), P99Ms: millis(percentile(s.latencies, 0.99)),
	}
}

// percentile p (0 < p ≤ 1) of lats by the nearest-rank method; lats is not modified.
func percentile(lats []time.Duration, p float64) time.Duration {
	if len(lats) == 0 {
		return 0
	}
	s := slices.Clone(lats)
	slices.Sort(s)
	rank := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(rank, 0)]
}

// roundLine prints one round of one figure to the summary.
func roundLine(cfg benchConfig, bench string, round, rounds int, s *series, l load) {
	fmt.Fprintf(cfg.Out, "%s %d/%d: %s %.0f %s (%d in %s, p50 %s, p99 %s)\n", bench, round+1, rounds, s.name, l.rate(), s.unit,
		l.ops, l.elapsed.Round(time.Millisecond), percentile(l.latencies, 0.50).Round(time.Microsecond),
		percentile(l.latencies, 0.99).Round(time.Microsecond))
}
