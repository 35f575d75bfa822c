package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunCreatesTheSampleAndPrintsWhatItMade(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "sample")
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"-out", dir, "-payload-bytes", "262144"}, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v (stderr %s)", err, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "install.wim")); err != nil {
		t.Fatalf("no image: %v", err)
	}
	out := stdout.String()
	for _, want := range []string{"FILE", "EXPECTED RESULT", "KB5066793", "CUMULATIVE_UPDATE", "NOT_APPLICABLE", "UNSUPPORTED", ".exe"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	updates, _ := os.ReadDir(filepath.Join(dir, "updates"))
	if rows := strings.Count(out, "\n") - 4; rows != len(updates) {
		t.Errorf("table has %d rows, the updates folder %d files:\n%s", rows, len(updates), out)
	}
}

func TestRunRefusesBadArguments(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"without -out it says -out is required", nil, "-out is required"},
		{"a stray argument is named", []string{"-out", t.TempDir(), "extra"}, "extra"},
		{"an unknown flag is refused", []string{"-nope"}, "nope"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), tt.args, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error()+stderr.String(), tt.want) {
			t.Errorf("%s: run = %v (stderr %q), want an error mentioning %q", tt.name, err, stderr.String(), tt.want)
		}
	}
}
