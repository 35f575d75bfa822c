package pipeline

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// maxLineBytes bounds one log line sent to the server.
const maxLineBytes = 8 << 10

// newLogger makes the run's logger: its lines go to the run's
// OfflineServicingMgr.log, to the server as LogBatch lines and to the agent's
// own log.
func (r *run) newLogger() hclog.Logger {
	level := r.cfg.Logger.GetLevel()
	if level == hclog.NoLevel || level > hclog.Debug {
		// The run log always has the story, whatever the agent's own
		// level, down to the engine's command lines at debug: 'osvcctl
		// run watch' shows info and up unless told --log-level debug.
		level = hclog.Debug
	}
	l := hclog.NewInterceptLogger(&hclog.LoggerOptions{
		Name:       "run",
		Level:      level,
		Output:     r.logOut,
		TimeFormat: "2006-01-02 15:04:05.000Z07:00",
	})
	l.RegisterSink(&serverSink{r: r, level: level})
	l.RegisterSink(&forwardSink{to: r.cfg.Logger.With("run", r.a.GetRun().GetName()), level: level})
	return l
}

// serverSink turns log lines into numbered LogLines for the server.
type serverSink struct {
	r     *run
	level hclog.Level
	seq   atomic.Int64
}

func (s *serverSink) Accept(name string, level hclog.Level, msg string, args ...any) {
	if level < s.level {
		return
	}
	text := formatLine(name, msg, args)
	if len(text) > maxLineBytes {
		text = text[:maxLineBytes] + "…"
	}
	s.r.rep.Logs([]*osvcv1.LogLine{{
		Sequence: s.seq.Add(1),
		Time:     timestamppb.Now(),
		Level:    strings.ToUpper(level.String()),
		Message:  text,
	}})
}

// forwardSink copies run log lines into the agent's log.
type forwardSink struct {
	to    hclog.Logger
	level hclog.Level
}

func (f *forwardSink) Accept(name string, level hclog.Level, msg string, args ...any) {
	if level < f.level {
		return
	}
	f.to.Log(level, name+": "+msg, args...)
}

// formatLine renders "name: msg: key=value ..." the way hclog does.
func formatLine(name, msg string, args []any) string {
	var b strings.Builder
	if name != "" {
		b.WriteString(name)
		b.WriteString(": ")
	}
	b.WriteString(msg)
	for i := 0; i < len(args); i += 2 {
		b.WriteByte(' ')
		b.WriteString(fmt.Sprint(args[i]))
		b.WriteByte('=')
		if i+1 < len(args) {
			v := fmt.Sprint(args[i+1])
			if strings.ContainsAny(v, " \t\n\"") {
				v = fmt.Sprintf("%q", v)
			}
			b.WriteString(v)
		} else {
			b.WriteString("<missing>")
		}
	}
	return b.String()
}

// lazyFile buffers what is written until the log file can be opened (the work
// folder is created by the DRIVE step, after the first lines are logged).
type lazyFile struct {
	mu  sync.Mutex
	buf bytes.Buffer
	f   *os.File
}

func (l *lazyFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		return l.f.Write(p)
	}
	return l.buf.Write(p)
}

// Open appends the buffered lines and everything after to path.
func (l *lazyFile) Open(path string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(l.buf.Bytes()); err != nil {
		f.Close()
		return err
	}
	l.buf.Reset()
	l.f = f
	return nil
}

// opened tells whether the log file was opened: the run's work folder was
// set up by this attempt.
func (l *lazyFile) opened() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f != nil
}

func (l *lazyFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
