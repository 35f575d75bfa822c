package main

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// cpuProfile writes the CPU profile of chosen stretches of a benchmark, one
// file per stretch (FILE.1, FILE.2, …; go tool pprof merges them), so that
// the set-up around them stays out of it. The zero value profiles nothing.
type cpuProfile struct {
	path string
	n    int
	f    *os.File
}

// startProfile returns a profile writing to path.N, or none when path is empty.
func startProfile(path string) (*cpuProfile, error) {
	if path == "" {
		return &cpuProfile{}, nil
	}
	f, err := os.Create(path + ".check")
	if err != nil {
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	f.Close()
	os.Remove(f.Name())
	return &cpuProfile{path: path}, nil
}

// resume starts profiling the next stretch.
func (p *cpuProfile) resume() {
	if p.path == "" || p.f != nil {
		return
	}
	p.n++
	f, err := os.Create(fmt.Sprintf("%s.%d", p.path, p.n))
	if err != nil {
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return
	}
	p.f = f
}

// pause ends the stretch being profiled.
func (p *cpuProfile) pause() {
	if p.f == nil {
		return
	}
	pprof.StopCPUProfile()
	p.f.Close()
	p.f = nil
}

// stop ends profiling.
func (p *cpuProfile) stop() { p.pause() }
