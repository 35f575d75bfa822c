// Package runlogs names the log files an agent keeps of a run and uploads to
// the content library when the run ends (the run's artifacts), and bounds
// them: the agent writes by these rules and the server refuses what breaks
// them, since what an agent reports is outside input to the server.
package runlogs

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

const (
	// ServicingLog is the agent's own log of the run: every line the run
	// streamed to the server, with the engine's commands and output.
	ServicingLog = "OfflineServicingMgr.log"
	// EngineLog is the engine's log: DISM's /LogPath on Windows; on Linux,
	// the wimlib engine's commands, their output and its package work.
	EngineLog = "dism.log"
	// MaxBytes bounds one uploaded log file. DISM's log of a run applying a
	// cumulative update is a few MiB; past the limit the agent uploads the
	// end of the file (where a failure is told) under a line saying how much
	// of the start was left out.
	MaxBytes = 64 << 20
	// MediaType is the media type of the uploaded log files.
	MediaType = "text/plain"
)

// Names are the files a run may have, in upload order: the engine's log
// first, so the run's own log, uploaded last, tells how that went.
var Names = []string{EngineLog, ServicingLog}

// CheckName refuses a name that is not one of Names: an artifact name is
// never a path.
func CheckName(name string) error {
	for _, n := range Names {
		if name == n {
			return nil
		}
	}
	return fmt.Errorf("%q is not a run log file: want %s", truncate(name, 80), strings.Join(Names, " or "))
}

// truncate keeps a hostile name short in messages, on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
