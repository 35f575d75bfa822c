//go:build windows

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/windows"
	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/eventlog"
	"golang.org/x/sys/windows/svc/mgr"
)

// stopWaitHint is how long the Service Control Manager is told a stop may
// take between two checkpoints; discarding a mounted image takes a while.
const stopWaitHint = 30 * time.Second

// runAsWindowsService runs the agent as the service when the Service
// Control Manager started this process; ok is false in a console.
func runAsWindowsService(args []string) (code int, ok bool) {
	isService, err := svc.IsWindowsService()
	if err != nil || !isService {
		return 0, false
	}
	events, err := eventlog.Open(serviceName)
	if err != nil {
		return 1, true
	}
	defer events.Close()
	if err := svc.Run(serviceName, &agentService{args: args, events: events}); err != nil {
		_ = events.Error(eventError, fmt.Sprintf("%s could not run as a service: %v", serviceName, err))
		return 1, true
	}
	return 0, true
}

// agentService answers the Service Control Manager: Stop and Shutdown end
// the agent's context, as SIGTERM does in a console, so runs are discarded.
type agentService struct {
	args   []string
	events eventLog
}

func (s *agentService) Execute(_ []string, requests <-chan svc.ChangeRequest, status chan<- svc.Status) (svcSpecificEC bool, exitCode uint32) {
	status <- svc.Status{State: svc.StartPending}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- runService(ctx, s.args, s.events) }()
	status <- svc.Status{State: svc.Running, Accepts: svc.AcceptStop | svc.AcceptShutdown}

	// While stopping, a checkpoint now and then tells the manager the stop
	// goes on.
	var checkpoints <-chan time.Time
	stopping := svc.Status{State: svc.StopPending, WaitHint: uint32(stopWaitHint / time.Millisecond)}
	for {
		select {
		case err := <-done:
			if err != nil {
				return true, 1
			}
			return false, 0
		case <-checkpoints:
			stopping.CheckPoint++
			status <- stopping
		case c := <-requests:
			switch c.Cmd {
			case svc.Interrogate:
				status <- c.CurrentStatus
			case svc.Stop, svc.Shutdown:
				if checkpoints == nil {
					stop()
					t := time.NewTicker(stopWaitHint / 3)
					defer t.Stop()
					checkpoints = t.C
					status <- stopping
				}
			}
		}
	}
}

// newServiceManager is the Service Control Manager of this server.
func newServiceManager() (serviceManager, error) { return windowsServices{}, nil }

type windowsServices struct{}

// connect opens the Service Control Manager; it takes an administrator.
func connect() (*mgr.Mgr, error) {
	m, err := mgr.Connect()
	if err != nil {
		return nil, fmt.Errorf("open the Service Control Manager: %w: run it as an administrator", err)
	}
	return m, nil
}

// withService runs fn on the installed service, saying so when there is none.
func withService(fn func(s *mgr.Service) error) error {
	m, err := connect()
	if err != nil {
		return err
	}
	defer m.Disconnect()
	s, err := m.OpenService(serviceName)
	if errors.Is(err, windows.ERROR_SERVICE_DOES_NOT_EXIST) {
		return fmt.Errorf("the service %s is not installed: osvc-agent service install --site CODE --data-dir FOLDER", serviceName)
	}
	if err != nil {
		return fmt.Errorf("open the service %s: %w", serviceName, err)
	}
	defer s.Close()
	return fn(s)
}

func (windowsServices) Install(args []string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this executable: %w", err)
	}
	m, err := connect()
	if err != nil {
		return err
	}
	defer m.Disconnect()
	if s, err := m.OpenService(serviceName); err == nil {
		s.Close()
		return fmt.Errorf("the service %s is already installed: osvc-agent service uninstall first", serviceName)
	}
	s, err := m.CreateService(serviceName, exe, mgr.Config{
		StartType:   mgr.StartAutomatic,
		DisplayName: "osvc agent",
		Description: "Services the Windows images the osvc server assigns to this site server, offline.",
	}, args...)
	if err != nil {
		return fmt.Errorf("create the service %s: %w", serviceName, err)
	}
	defer s.Close()
	// A source left by an earlier install would make the registration fail.
	_ = eventlog.Remove(serviceName)
	if err := eventlog.InstallAsEventCreate(serviceName, eventlog.Error|eventlog.Warning|eventlog.Info); err != nil {
		_ = s.Delete()
		return fmt.Errorf("register the event log source %s: %w", serviceName, err)
	}
	// After a crash the manager starts the agent again a minute later.
	restart := mgr.RecoveryAction{Type: mgr.ServiceRestart, Delay: time.Minute}
	if err := s.SetRecoveryActions([]mgr.RecoveryAction{restart, restart, restart}, uint32((24 * time.Hour).Seconds())); err != nil {
		return fmt.Errorf("set the service's restart after a crash: %w", err)
	}
	return nil
}

func (windowsServices) Uninstall(ctx context.Context) error {
	return withService(func(s *mgr.Service) error {
		if err := stopService(ctx, s); err != nil {
			return err
		}
		if err := s.Delete(); err != nil {
			return fmt.Errorf("remove the service %s: %w", serviceName, err)
		}
		if err := eventlog.Remove(serviceName); err != nil {
			return fmt.Errorf("remove the event log source %s: %w", serviceName, err)
		}
		return nil
	})
}

func (windowsServices) Start(ctx context.Context) error {
	return withService(func(s *mgr.Service) error {
		if err := s.Start(); err != nil {
			return fmt.Errorf("start the service %s: %w", serviceName, err)
		}
		st, err := waitWhile(ctx, s, svc.StartPending)
		if err != nil {
			return err
		}
		if st.State != svc.Running {
			return fmt.Errorf("the service %s stopped as it started: see the Application event log (source %s) and osvc-agent.log in its --data-dir", serviceName, serviceName)
		}
		return nil
	})
}

func (windowsServices) Stop(ctx context.Context) error {
	return withService(func(s *mgr.Service) error { return stopService(ctx, s) })
}

// stopService stops s, unless it is stopped, and waits until it is.
func stopService(ctx context.Context, s *mgr.Service) error {
	st, err := s.Query()
	if err != nil {
		return fmt.Errorf("query the service %s: %w", serviceName, err)
	}
	if st.State == svc.Stopped {
		return nil
	}
	if st.State != svc.StopPending {
		if _, err := s.Control(svc.Stop); err != nil {
			return fmt.Errorf("stop the service %s: %w", serviceName, err)
		}
	}
	st, err = waitWhile(ctx, s, svc.StopPending, svc.Running)
	if err != nil {
		return err
	}
	if st.State != svc.Stopped {
		return fmt.Errorf("the service %s is %d, not stopped", serviceName, st.State)
	}
	return nil
}

// stopTimeout bounds the wait for a stop: discarding runs' mounts takes
// minutes at most.
const stopTimeout = 10 * time.Minute

// waitWhile polls s until its state is none of states, ctx ends or
// stopTimeout passes.
func waitWhile(ctx context.Context, s *mgr.Service, states ...svc.State) (svc.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, stopTimeout)
	defer cancel()
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := s.Query()
		if err != nil {
			return st, fmt.Errorf("query the service %s: %w", serviceName, err)
		}
		waiting := false
		for _, w := range states {
			waiting = waiting || st.State == w
		}
		if !waiting {
			return st, nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return st, fmt.Errorf("the service %s is still in state %d: %w; see the Application event log (source %s)", serviceName, st.State, context.Cause(ctx), serviceName)
		}
	}
}
