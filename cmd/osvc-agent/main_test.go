package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunRefusesBadFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"with a site that is not a site code", []string{"--site", "P$1", "--data-dir", "DATA"}, "want a site code"},
		{"with an empty join token file", []string{"--join-token-file", "EMPTY"}, "is empty"},
		{"with a join token file that is not there", []string{"--join-token-file", "/nonexistent/join.token"}, "--join-token-file"},
		{"with an unknown log level", []string{"--site", "PS1", "--log-level", "loud"}, "--log-level"},
		{"with an unknown engine", []string{"--site", "PS1", "--engine", "nope"}, "use dism (Windows) or wimlib (Linux)"},
		{"with the dism engine on Linux and no stand-in", []string{"--site", "PS1", "--engine", "dism"}, "use the wimlib engine here"},
		{"with the dism engine and a stand-in that is not there", []string{"--site", "PS1", "--engine", "dism", "--dism", "/nonexistent/dism.exe"}, "not found"},
		{"with stray arguments", []string{"--site", "PS1", "extra"}, "unexpected arguments"},
		{"with a negative capacity", []string{"--site", "PS1", "--capacity", "-1", "--data-dir", "DATA"}, "capacity -1"},
		{"with a work retention that is not a duration", []string{"--site", "PS1", "--work-retention", "7"}, "work-retention"},
		{"with a negative cache cap", []string{"--site", "PS1", "--cache-max-bytes", "-1"}, "want a size of 0 or more"},
		{"with a cache cap that is not a size", []string{"--site", "PS1", "--cache-max-bytes", "lots"}, "-cache-max-bytes"},
		{"with a negative work retention", []string{"--site", "PS1", "--work-retention", "-1h"}, "--work-retention -1h0m0s: want a duration of 0 or more"},
		{"with an unknown log format", []string{"--site", "PS1", "--log-format", "xml"}, "--log-format"},
		// The example is read whole, then the retention refused.
		{"with the example config and a negative work retention", []string{"--config", filepath.Join("..", "..", "deploy", "config", "osvc-agent.yaml"),
			"--site", "PS1", "--work-retention", "-1h"}, "--work-retention -1h0m0s"},
		{"with a config file naming no flag of the agent", []string{"--config", "SERVERCONFIG"}, `"listen" names no flag`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := tt.args
			for i, a := range args {
				switch a {
				case "DATA":
					args[i] = t.TempDir()
				case "SERVERCONFIG":
					args[i] = filepath.Join(t.TempDir(), "osvc.yaml")
					if err := os.WriteFile(args[i], []byte("listen: 0.0.0.0:7300\n"), 0o600); err != nil {
						t.Fatal(err)
					}
				case "EMPTY":
					args[i] = filepath.Join(t.TempDir(), "join.token")
					if err := os.WriteFile(args[i], []byte("\n"), 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run(%q) = %v, want an error mentioning %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestRunStopsWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stdout, stderr bytes.Buffer
	// No server listens: the agent keeps retrying until ctx ends, then exits cleanly.
	err := run(ctx, []string{"--site", "PS1", "--server", "127.0.0.1:1", "--data-dir", t.TempDir(), "--drive", t.TempDir()}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run = %v, want nil after the context ended", err)
	}
	if !strings.Contains(stdout.String(), "site PS1") {
		t.Errorf("stdout = %q, want the agent's banner", stdout.String())
	}
}

func TestCacheMaxBytesTakesBytesOrASizeWithAUnit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int64
	}{
		{"21474836480", 20 << 30},
		{"20GiB", 20 << 30},
		{"500 MB", 500_000_000},
		{"0", 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			var b byteSize
			if err := b.Set(tt.in); err != nil || int64(b) != tt.want {
				t.Errorf("Set(%q) = %d, %v; want %d", tt.in, int64(b), err, tt.want)
			}
		})
	}
}

func TestEachPlatformRefusesTheEngineItLacks(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		goos, engine, dism string
		ok                 bool
		want               string
	}{
		{"windows", "dism", "", true, ""},
		{"windows", "wimlib", "", false, "use --engine dism"},
		{"linux", "wimlib", "", true, ""},
		{"linux", "dism", "", false, "use the wimlib engine here"},
		{"linux", "dism", "dism-replay", true, ""},
	} {
		_, err := engineFactory(tt.goos, tt.engine, "wimlib-imagex", tt.dism)
		if (err == nil) != tt.ok || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s on %s (--dism %q): %v, want ok %t or an error mentioning %q", tt.engine, tt.goos, tt.dism, err, tt.ok, tt.want)
		}
	}
}

func TestVersionPrintsTheBuild(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--version"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "osvc-agent ") || !strings.Contains(out.String(), "go1.") {
		t.Errorf("--version printed %q", out.String())
	}
}
