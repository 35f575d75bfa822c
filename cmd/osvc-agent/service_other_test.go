//go:build !windows

package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestTheServiceSubcommandIsForWindows(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"service", "install", "--site", "PS1", "--data-dir", t.TempDir()}, {"service", "start"}, {"service"}} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), args, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), "osvc-agent service is for Windows site servers") {
			t.Errorf("run(%q) = %v, want it refused as Windows's", args, err)
		}
	}
	if code, ok := runAsWindowsService([]string{"--site", "PS1"}); ok || code != 0 {
		t.Errorf("runAsWindowsService = %d, %t; want not a service", code, ok)
	}
}
