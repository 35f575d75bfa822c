//go:build !windows

package main

import "errors"

// newServiceManager refuses: the service subcommand manages a Windows service.
func newServiceManager() (serviceManager, error) {
	return nil, errors.New("osvc-agent service is for Windows site servers: here, run osvc-agent in the foreground or under systemd (deploy/systemd/osvc-agent.service)")
}

// runAsWindowsService is false: only Windows has a Service Control Manager.
func runAsWindowsService([]string) (code int, ok bool) { return 0, false }
