package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// fakeServices records what the service subcommand asks of the manager.
type fakeServices struct {
	calls   []string
	args    []string
	failing error
}

func (f *fakeServices) Install(args []string) error {
	f.calls, f.args = append(f.calls, "install"), args
	return f.failing
}

func (f *fakeServices) Uninstall(context.Context) error {
	f.calls = append(f.calls, "uninstall")
	return f.failing
}

func (f *fakeServices) Start(context.Context) error {
	f.calls = append(f.calls, "start")
	return f.failing
}

func (f *fakeServices) Stop(context.Context) error {
	f.calls = append(f.calls, "stop")
	return f.failing
}

func abs(t *testing.T, path string) string {
	t.Helper()
	p, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServiceInstallGivesTheServiceTheAgentsFlagsWithAbsolutePaths(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"flags in every form package flag reads", []string{"--site", "PS1", "-server", "osvc:7300", "--data-dir=" + data, "-capacity=2"},
			[]string{"--site=PS1", "--server=osvc:7300", "--data-dir=" + data, "--capacity=2"}},
		{"a relative data folder is made absolute", []string{"--site", "PS1", "--data-dir", "osvc-agent-data"},
			[]string{"--site=PS1", "--data-dir=" + abs(t, "osvc-agent-data")}},
		{"a relative authority file is made absolute", []string{"--site", "PS1", "--data-dir", data, "--ca-file", "ca.crt"},
			[]string{"--site=PS1", "--data-dir=" + data, "--ca-file=" + abs(t, "ca.crt")}},
		{"a relative join token file is made absolute", []string{"--site", "PS1", "--data-dir", data, "--join-token-file", "join.token"},
			[]string{"--site=PS1", "--data-dir=" + data, "--join-token-file=" + abs(t, "join.token")}},
		{"a drive stays a drive", []string{"--site", "PS1", "--data-dir", data, "--drive", "D:"},
			[]string{"--site=PS1", "--data-dir=" + data, "--drive=D:"}},
		{"a folder on a drive stays as it is", []string{"--site", "PS1", "--data-dir", data, "--drive", `d:\osvc`},
			[]string{"--site=PS1", "--data-dir=" + data, `--drive=d:\osvc`}},
		{"Automatic stays Automatic", []string{"--site", "PS1", "--data-dir", data, "--drive", "Automatic"},
			[]string{"--site=PS1", "--data-dir=" + data, "--drive=Automatic"}},
		{"a relative drive folder is made absolute", []string{"--site", "PS1", "--data-dir", data, "--drive", "work"},
			[]string{"--site=PS1", "--data-dir=" + data, "--drive=" + abs(t, "work")}},
		{"a relative tool path is made absolute, a name is looked up in PATH", []string{"--site", "PS1", "--data-dir", data, "--dism", "tools/dism.exe", "--wimlib-imagex", "wimlib-imagex"},
			[]string{"--site=PS1", "--data-dir=" + data, "--dism=" + abs(t, "tools/dism.exe"), "--wimlib-imagex=wimlib-imagex"}},
		{"a value that looks like a flag is a value", []string{"--site", "PS1", "--data-dir", data, "--name", "-x"},
			[]string{"--site=PS1", "--data-dir=" + data, "--name=-x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := &fakeServices{}
			var stdout, stderr bytes.Buffer
			if err := controlService(context.Background(), m, append([]string{"install"}, tt.args...), &stdout, &stderr); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(m.calls, []string{"install"}) || !slices.Equal(m.args, tt.want) {
				t.Errorf("manager asked %q with %q, want install with %q", m.calls, m.args, tt.want)
			}
			if !strings.Contains(stdout.String(), "osvc-agent service start") {
				t.Errorf("stdout = %q, want how to start the service", stdout.String())
			}
		})
	}
}

func TestServiceRefusesWhatTheServiceCouldNotRunWith(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"without an action", nil, "say install, uninstall, start or stop"},
		{"with an unknown action", []string{"restart"}, `service "restart": say install`},
		{"install without a site", []string{"install", "--data-dir", "D"}, "--site is required"},
		{"install with an empty site", []string{"install", "--site=", "--data-dir", "D"}, "--site is required"},
		{"install with a blank site", []string{"install", "--site", " ", "--data-dir", "D"}, "--site is required"},
		{"install whose last site is empty, as the agent would read it", []string{"install", "--site", "PS1", "--data-dir", "D", "--site="}, "--site is required"},
		{"install without a data folder", []string{"install", "--site", "PS1"}, "--data-dir is required"},
		{"install with a stray argument", []string{"install", "--site", "PS1", "--data-dir", "D", "now"}, `unexpected argument "now"`},
		{"install with a flag of three dashes", []string{"install", "---site", "PS1"}, `unexpected argument "---site"`},
		{"install with a lone dash", []string{"install", "-", "PS1"}, `unexpected argument "-"`},
		{"install with a flag of no name", []string{"install", "--=PS1"}, `unexpected argument "--=PS1"`},
		{"install after --", []string{"install", "--", "--site", "PS1"}, `unexpected argument "--"`},
		{"install with a flag lacking its value", []string{"install", "--site", "PS1", "--data-dir"}, "flag --data-dir needs a value"},
		{"uninstall with flags", []string{"uninstall", "--site", "PS1"}, "service uninstall takes no arguments"},
		{"stop with an argument", []string{"stop", "now"}, "service stop takes no arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := &fakeServices{}
			var stdout, stderr bytes.Buffer
			err := controlService(context.Background(), m, tt.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("service %q = %v, want an error mentioning %q", tt.args, err, tt.want)
			}
			if len(m.calls) > 0 {
				t.Errorf("the manager was asked %q", m.calls)
			}
		})
	}
}

func TestServiceHelpIsTheUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-h"}, {"--help"}, {"install", "--site", "PS1", "-h"}} {
		var stdout, stderr bytes.Buffer
		err := controlService(context.Background(), &fakeServices{}, args, &stdout, &stderr)
		if !errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr.String(), "osvc-agent service install --site CODE --data-dir FOLDER") {
			t.Errorf("service %q = %v, stderr %q; want ErrHelp and the usage", args, err, stderr.String())
		}
	}
}

func TestEachServiceActionAsksTheManager(t *testing.T) {
	t.Parallel()
	for _, action := range []string{"uninstall", "start", "stop"} {
		m := &fakeServices{}
		var stdout, stderr bytes.Buffer
		if err := controlService(context.Background(), m, []string{action}, &stdout, &stderr); err != nil {
			t.Fatalf("service %s: %v", action, err)
		}
		if !slices.Equal(m.calls, []string{action}) {
			t.Errorf("service %s asked the manager %q", action, m.calls)
		}
		m = &fakeServices{failing: errors.New("access is denied")}
		err := controlService(context.Background(), m, []string{action}, &stdout, &stderr)
		if err == nil || err.Error() != "service "+action+": access is denied" {
			t.Errorf("service %s with the manager failing = %v, want its error", action, err)
		}
	}
	m := &fakeServices{failing: errors.New("access is denied")}
	var stdout, stderr bytes.Buffer
	err := controlService(context.Background(), m, []string{"install", "--site", "PS1", "--data-dir", t.TempDir()}, &stdout, &stderr)
	if err == nil || err.Error() != "service install: access is denied" || stdout.Len() > 0 {
		t.Errorf("service install with the manager failing = %v, stdout %q; want its error alone", err, stdout.String())
	}
}

// recordedEvents is an event log kept in memory; the agent writes to it
// from its goroutines.
type recordedEvents struct {
	mu     sync.Mutex
	events []string
}

func (r *recordedEvents) add(kind string, eid uint32, msg string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%s %d %s", kind, eid, msg))
	return nil
}

func (r *recordedEvents) Info(eid uint32, msg string) error    { return r.add("info", eid, msg) }
func (r *recordedEvents) Warning(eid uint32, msg string) error { return r.add("warning", eid, msg) }
func (r *recordedEvents) Error(eid uint32, msg string) error   { return r.add("error", eid, msg) }

func (r *recordedEvents) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// kinds lists the events' kinds and ids, "info 1".
func (r *recordedEvents) kinds() []string {
	var out []string
	for _, e := range r.list() {
		kind, rest, _ := strings.Cut(e, " ")
		id, _, _ := strings.Cut(rest, " ")
		out = append(out, kind+" "+id)
	}
	return out
}

func TestTheServiceLogKeepsEveryLineAndSendsWarningsAndErrorsToTheEventLog(t *testing.T) {
	t.Parallel()
	var file bytes.Buffer
	events := &recordedEvents{}
	out := &serviceLog{file: &file, events: events}
	logger := hclog.New(&hclog.LoggerOptions{Name: "osvc-agent", Level: hclog.Debug, Output: out})
	logger.Debug("looking")
	logger.Info("agent starting", "site", "PS1")
	logger.Warn("drive not on this server", "setting", "E:")
	logger.Error("run failed", "run", "runs/r1")
	fmt.Fprintln(out, "osvc-agent dev: site PS1")

	for _, line := range []string{"[DEBUG] osvc-agent: looking", "[INFO]  osvc-agent: agent starting: site=PS1",
		"[WARN]  osvc-agent: drive not on this server: setting=E:", "[ERROR] osvc-agent: run failed: run=runs/r1", "osvc-agent dev: site PS1\n"} {
		if !strings.Contains(file.String(), line) {
			t.Errorf("the log file lacks %q:\n%s", line, file.String())
		}
	}
	got := events.list()
	if len(got) != 2 || !strings.HasPrefix(got[0], "warning 3 ") || !strings.HasSuffix(got[0], "[WARN]  osvc-agent: drive not on this server: setting=E:") ||
		!strings.HasPrefix(got[1], "error 4 ") || !strings.HasSuffix(got[1], "[ERROR] osvc-agent: run failed: run=runs/r1") {
		t.Errorf("events = %q, want the warning and the error, one line each", got)
	}
}

func TestTheServiceRunsTheAgentUntilStoppedLoggingToItsDataFolder(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	events := &recordedEvents{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the Service Control Manager's Stop
	// No server listens: the agent retries until its context ends.
	args := []string{"--site", "PS1", "--server", "127.0.0.1:1", "--data-dir=" + data, "--drive", filepath.Join(data, "no-such-drive")}
	if err := runService(ctx, args, events); err != nil {
		t.Fatalf("runService = %v, want nil once stopped", err)
	}
	log, err := os.ReadFile(filepath.Join(data, "osvc-agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"site PS1", "[INFO]  osvc-agent.agent: agent starting", "[WARN]  osvc-agent.agent: the offline servicing drive is not on this server"} {
		if !strings.Contains(string(log), line) {
			t.Errorf("osvc-agent.log lacks %q:\n%s", line, log)
		}
	}
	// Not enrolled and without a join token, the agent says so too.
	if got := events.kinds(); !slices.Equal(got, []string{"info 1", "warning 3", "warning 3", "info 2"}) ||
		!strings.Contains(events.list()[2], "not enrolled") {
		t.Errorf("events %q, want started, the drive's warning, the enrollment's, stopped", events.list())
	}
	if got := events.list(); len(got) == 4 && !strings.Contains(got[0], filepath.Join(data, "osvc-agent.log")) {
		t.Errorf("the start event %q does not say where the log is", got[0])
	}
}

func TestTheServiceSaysWhyItCouldNotRun(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args func(data string) []string
		// logged: the error is in osvc-agent.log too.
		want   string
		logged bool
	}{
		{"a flag the agent refuses", func(data string) []string {
			return []string{"--site", "PS1", "--data-dir", data, "--log-level", "loud"}
		}, "--log-level", true},
		{"no data folder", func(string) []string { return []string{"--site", "PS1"} }, "the service needs --data-dir", false},
		{"a relative data folder", func(data string) []string {
			wd, err := os.Getwd()
			if err != nil {
				t.Fatal(err)
			}
			rel, err := filepath.Rel(wd, data)
			if err != nil {
				t.Fatal(err)
			}
			return []string{"--site", "PS1", "--data-dir", rel}
		}, "as an absolute folder", false},
		{"arguments that are not flags", func(string) []string { return []string{"service", "install"} }, "reinstall it", false},
		{"a data folder on a file", func(data string) []string {
			path := filepath.Join(data, "file")
			if err := os.WriteFile(path, nil, 0o640); err != nil {
				t.Fatal(err)
			}
			return []string{"--site", "PS1", "--data-dir", filepath.Join(path, "data")}
		}, "create the data folder", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			data := t.TempDir()
			events := &recordedEvents{}
			// Ended: should the service run the agent after all, it stops at once.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			err := runService(ctx, tt.args(data), events)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("runService = %v, want an error mentioning %q", err, tt.want)
			}
			got := events.list()
			if len(got) == 0 || !strings.HasPrefix(got[len(got)-1], "error 4 osvc-agent stopped on an error: ") || !strings.Contains(got[len(got)-1], tt.want) {
				t.Errorf("events = %q, want the error last", got)
			}
			log, _ := os.ReadFile(filepath.Join(data, "osvc-agent.log"))
			if logged := strings.Contains(string(log), tt.want); logged != tt.logged {
				t.Errorf("osvc-agent.log has the error: %t, want %t:\n%s", logged, tt.logged, log)
			}
		})
	}
}
