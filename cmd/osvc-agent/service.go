package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/pkg/drivesetting"
)

// serviceName names the Windows service and its event log source.
const serviceName = "osvc-agent"

// serviceLogFile is the service's log, in its data folder.
const serviceLogFile = "osvc-agent.log"

const serviceUsage = `Usage:
  osvc-agent service install --site CODE --data-dir FOLDER [agent flags]
      registers the Windows service osvc-agent, started automatically, that
      runs this executable with these flags (see osvc-agent -h), and its
      event log source; relative paths are made absolute here
  osvc-agent service uninstall    stops the service and removes it
  osvc-agent service start        starts the service
  osvc-agent service stop         stops the service: runs in progress are discarded
As a service, the agent logs to <data-dir>\osvc-agent.log, and its start, stop,
warnings and errors to the Windows event log (Application, source osvc-agent).`

// serviceManager is what the service subcommand asks of the Windows
// Service Control Manager.
type serviceManager interface {
	// Install registers the service, started automatically, running this
	// executable with args, and the event log source.
	Install(args []string) error
	// Uninstall stops the service if it runs, then removes it and its
	// event log source.
	Uninstall(ctx context.Context) error
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
}

// serviceCommand runs "osvc-agent service ACTION [flags]" on this platform's
// service manager.
func serviceCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	m, err := newServiceManager()
	if err != nil {
		return err
	}
	return controlService(ctx, m, args, stdout, stderr)
}

// controlService carries out one service action on m.
func controlService(ctx context.Context, m serviceManager, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, serviceUsage)
		return errors.New("service: say install, uninstall, start or stop")
	}
	action, rest := args[0], args[1:]
	if action == "-h" || action == "-help" || action == "--help" {
		fmt.Fprintln(stderr, serviceUsage)
		return flag.ErrHelp
	}
	if action != "install" && len(rest) > 0 {
		return fmt.Errorf("service %s takes no arguments, got %q: the agent's flags go to service install", action, rest)
	}
	switch action {
	case "install":
		svcArgs, err := serviceArgs(rest, filepath.Abs)
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, serviceUsage)
		}
		if err != nil {
			return err
		}
		if err := m.Install(svcArgs); err != nil {
			return fmt.Errorf("service install: %w", err)
		}
		fmt.Fprintf(stdout, "service %s installed, started automatically with %s\nstart it now with: osvc-agent service start\n", serviceName, strings.Join(svcArgs, " "))
	case "uninstall":
		if err := m.Uninstall(ctx); err != nil {
			return fmt.Errorf("service uninstall: %w", err)
		}
		fmt.Fprintf(stdout, "service %s removed\n", serviceName)
	case "start":
		if err := m.Start(ctx); err != nil {
			return fmt.Errorf("service start: %w", err)
		}
		fmt.Fprintf(stdout, "service %s running\n", serviceName)
	case "stop":
		if err := m.Stop(ctx); err != nil {
			return fmt.Errorf("service stop: %w", err)
		}
		fmt.Fprintf(stdout, "service %s stopped\n", serviceName)
	default:
		fmt.Fprintln(stderr, serviceUsage)
		return fmt.Errorf("service %q: say install, uninstall, start or stop", action)
	}
	return nil
}

// agentFlag is one flag given to the agent.
type agentFlag struct{ name, value string }

// parseAgentFlags splits the agent's flags the way package flag reads them
// (-name value, --name value, -name=value, --name=value). Every agent flag
// takes a value: a boolean flag would need its name listed here.
func parseAgentFlags(args []string) ([]agentFlag, error) {
	var flags []agentFlag
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, ok := strings.CutPrefix(a, "-")
		if ok {
			name = strings.TrimPrefix(name, "-")
		}
		if !ok || name == "" || strings.HasPrefix(name, "-") || strings.HasPrefix(name, "=") {
			return nil, fmt.Errorf("unexpected argument %q: the service takes the agent's flags only, e.g. --site PS1", a)
		}
		name, value, hasValue := strings.Cut(name, "=")
		if name == "h" || name == "help" {
			return nil, flag.ErrHelp
		}
		if !hasValue {
			if i+1 == len(args) {
				return nil, fmt.Errorf("flag %s needs a value", a)
			}
			i++
			value = args[i]
		}
		flags = append(flags, agentFlag{name, value})
	}
	return flags, nil
}

// flagValue is the last value given to the flag name, as package flag keeps.
func flagValue(flags []agentFlag, name string) (string, bool) {
	value, found := "", false
	for _, f := range flags {
		if f.name == name {
			value, found = f.value, true
		}
	}
	return value, found
}

// serviceArgs checks the agent flags given to service install and returns
// the arguments the service runs with. The Service Control Manager starts
// the service in the system folder, so relative paths are made absolute
// with abs (filepath.Abs) here, where they mean what the administrator
// meant; --drive keeps Automatic and drives (D:) as they are.
func serviceArgs(args []string, abs func(string) (string, error)) ([]string, error) {
	flags, err := parseAgentFlags(args)
	if err != nil {
		return nil, err
	}
	if site, _ := flagValue(flags, "site"); strings.TrimSpace(site) == "" {
		return nil, errors.New("--site is required: the code of the site this agent services, e.g. --site PS1")
	}
	if dir, _ := flagValue(flags, "data-dir"); strings.TrimSpace(dir) == "" {
		return nil, errors.New(`--data-dir is required: the service's folder for its update cache and its log (osvc-agent.log), e.g. --data-dir D:\osvc-agent`)
	}
	out := make([]string, 0, len(flags))
	for _, f := range flags {
		value := f.value
		var path bool
		switch f.name {
		case "data-dir", "ca-file", "join-token-file":
			path = true
		case "drive":
			path = drivesetting.Relative(value)
		case "dism", "wimlib-imagex":
			// A bare name is looked up in PATH, not in a folder.
			path = strings.ContainsAny(value, `/\`)
		}
		if path {
			if value, err = abs(value); err != nil {
				return nil, fmt.Errorf("--%s %s: %w", f.name, f.value, err)
			}
		}
		out = append(out, "--"+f.name+"="+value)
	}
	return out, nil
}

// eventLog is the Windows event log as the service writes to it
// (*eventlog.Log is one).
type eventLog interface {
	Info(eid uint32, msg string) error
	Warning(eid uint32, msg string) error
	Error(eid uint32, msg string) error
}

// Event ids of the service's events.
const (
	eventStarted uint32 = 1
	eventStopped uint32 = 2
	eventWarning uint32 = 3
	eventError   uint32 = 4
)

// serviceLog is the agent's output as a service: every line goes to the log
// file, and hclog's warnings and errors to the event log as well, where
// administrators and their monitoring look first.
type serviceLog struct {
	mu     sync.Mutex
	file   io.Writer
	events eventLog
}

// Write writes to the log file alone: lines without a level (the banner,
// usage) are not events.
func (l *serviceLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.file.Write(p)
}

// LevelWrite is hclog.LevelWriter: hclog tells each line's level.
func (l *serviceLog) LevelWrite(level hclog.Level, p []byte) (int, error) {
	n, err := l.Write(p)
	msg := strings.TrimSpace(string(p))
	switch {
	case level >= hclog.Error:
		_ = l.events.Error(eventError, msg)
	case level == hclog.Warn:
		_ = l.events.Warning(eventWarning, msg)
	}
	return n, err
}

// runService runs the agent with args until ctx ends, as the Windows
// service does: it logs to <data-dir>/osvc-agent.log, and says in events
// when it starts and stops and why it failed.
func runService(ctx context.Context, args []string, events eventLog) error {
	err := runServiceLogged(ctx, args, events)
	if err != nil {
		_ = events.Error(eventError, fmt.Sprintf("%s stopped on an error: %v", serviceName, err))
		return err
	}
	_ = events.Info(eventStopped, serviceName+" stopped")
	return nil
}

func runServiceLogged(ctx context.Context, args []string, events eventLog) error {
	flags, err := parseAgentFlags(args)
	if err != nil {
		return fmt.Errorf("the service's arguments %q: %w: reinstall it with osvc-agent service install", args, err)
	}
	dataDir, _ := flagValue(flags, "data-dir")
	if !filepath.IsAbs(dataDir) {
		return fmt.Errorf("the service needs --data-dir as an absolute folder, got %q: reinstall it with osvc-agent service install --data-dir FOLDER", dataDir)
	}
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return fmt.Errorf("create the data folder: %w", err)
	}
	path := filepath.Join(dataDir, serviceLogFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open the service's log: %w", err)
	}
	defer f.Close()
	_ = events.Info(eventStarted, fmt.Sprintf("%s started; it logs to %s", serviceName, path))
	out := &serviceLog{file: f, events: events}
	if err := run(ctx, args, out, out); err != nil {
		fmt.Fprintf(out, "osvc-agent: %v\n", err)
		return err
	}
	return nil
}
