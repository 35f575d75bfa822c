package wimlib

import (
	"regexp"
	"strconv"

	"github.com/osvc/osvc/agent/engine"
)

// archiveRE is wimlib-imagex's progress line while it writes file data (an
// export, a capture): "Archiving file data: 12 MiB of 28 MiB (42%) done".
// Its unit is the one that suits the total: bytes, KiB, MiB, GiB or TiB.
var archiveRE = regexp.MustCompile(`(\d+) (bytes|KiB|MiB|GiB|TiB) of (\d+) (bytes|KiB|MiB|GiB|TiB) \(\d+%\) done`)

var unitShift = map[string]uint{"bytes": 0, "KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}

// archiveProgress receives wimlib-imagex's stdout as it is written and tells
// report each new byte count of its progress line, which wimlib-imagex
// redraws in place with '\r'.
type archiveProgress struct {
	report      engine.BytesFunc
	partial     []byte
	done, total int64
}

func newArchiveProgress(report engine.BytesFunc) *archiveProgress {
	return &archiveProgress{report: report, done: -1}
}

func (w *archiveProgress) Write(p []byte) (int, error) {
	for _, b := range p {
		if b == '\r' || b == '\n' {
			w.segment()
			continue
		}
		w.partial = append(w.partial, b)
	}
	// A line is whole once it says "done": no need to wait for its '\r'.
	if len(w.partial) >= 4 && string(w.partial[len(w.partial)-4:]) == "done" {
		w.segment()
	}
	return len(p), nil
}

// segment reads the byte counts of the text gathered since the last break.
func (w *archiveProgress) segment() {
	m := archiveRE.FindSubmatch(w.partial)
	w.partial = w.partial[:0]
	if m == nil {
		return
	}
	done, err1 := strconv.ParseInt(string(m[1]), 10, 64)
	total, err2 := strconv.ParseInt(string(m[3]), 10, 64)
	dShift, tShift := unitShift[string(m[2])], unitShift[string(m[4])]
	if err1 != nil || err2 != nil || done > 1<<(62-dShift) || total > 1<<(62-tShift) {
		return // not a size wimlib-imagex prints
	}
	done <<= dShift
	total <<= tShift
	if done == w.done && total == w.total {
		return
	}
	w.done, w.total = done, total
	w.report(done, total)
}
