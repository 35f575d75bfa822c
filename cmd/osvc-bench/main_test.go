package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestStartupBenchEndsWithAParsableResultLine(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"-run", "startup", "-n", "1", "-fast"}, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n")
	last := lines[len(lines)-1]
	payload, ok := strings.CutPrefix(last, "RESULT ")
	if !ok {
		t.Fatalf("last line = %q, want RESULT {json}\nstdout:\n%s", last, stdout.String())
	}
	var res Result
	if err := json.Unmarshal([]byte(payload), &res); err != nil {
		t.Fatalf("RESULT line does not parse: %v: %s", err, payload)
	}
	if res.Bench != "startup" {
		t.Errorf("bench = %q, want startup", res.Bench)
	}
	if !(res.Ratio > 0) {
		t.Errorf("ratio = %v, want > 0", res.Ratio)
	}
	for _, f := range []Figure{res.Osvc, res.Floor} {
		if !(f.Value > 0) || f.Unit == "" || len(f.Samples) != 1 {
			t.Errorf("figure %+v: want a positive value with its unit and 1 sample", f)
		}
	}
}

func TestRunRefusesBadCommandLines(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"an unknown benchmark is named with the known ones", []string{"-run", "nope"}, `unknown benchmark "nope"; known: startup`},
		{"no benchmark asks for -run", nil, "give a benchmark with -run NAME"},
		{"zero measurements are refused", []string{"-run", "startup", "-n", "0"}, "-n 0"},
		{"stray arguments are refused", []string{"-run", "startup", "extra"}, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tt.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run(%q) = %v, want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestMedianTakesTheMiddleOfOddAndEvenSamples(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		samples []float64
		want    float64
	}{
		{"one sample is its own median", []float64{7}, 7},
		{"odd counts take the middle value", []float64{9, 1, 5}, 5},
		{"even counts average the two middle values", []float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := median(tt.samples); got != tt.want {
				t.Errorf("median(%v) = %v, want %v", tt.samples, got, tt.want)
			}
		})
	}
}
