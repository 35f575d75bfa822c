package cmdline_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/osvc/osvc/pkg/cmdline"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "osvc.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestTheCommandLineWinsOverTheEnvironmentWhichWinsOverTheFile(t *testing.T) {
	file := writeConfig(t, "listen: file:1\ndata-dir: /from/file\nlog-level: debug\netcd-endpoints: [http://a:2379, http://b:2379]\ninsecure: true\ncapacity: 4\n")
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	listen := fs.String("listen", "default:1", "")
	dataDir := fs.String("data-dir", "./data", "")
	level := fs.String("log-level", "info", "")
	endpoints := fs.String("etcd-endpoints", "", "")
	insecure := fs.Bool("insecure", false, "")
	capacity := fs.Int("capacity", 1, "")
	untouched := fs.String("name", "me", "")
	fs.String("config", "", "")
	if err := fs.Parse([]string{"--listen", "cmd:1", "--config", file}); err != nil {
		t.Fatal(err)
	}
	err := cmdline.Apply(cmdline.Std(fs), file, env(map[string]string{"OSVC_LISTEN": "env:1", "OSVC_DATA_DIR": "/from/env", "OSVC_CONFIG": "/elsewhere.yaml"}))
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct{ got, want string }{
		"listen (command line)":      {*listen, "cmd:1"},
		"data-dir (environment)":     {*dataDir, "/from/env"},
		"log-level (file)":           {*level, "debug"},
		"etcd-endpoints (file list)": {*endpoints, "http://a:2379,http://b:2379"},
		"name (default)":             {*untouched, "me"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", name, c.got, c.want)
		}
	}
	if !*insecure || *capacity != 4 {
		t.Errorf("insecure %v, capacity %d: want true and 4 from the file", *insecure, *capacity)
	}
}

func TestCobrasFlagsTakeTheSameSettings(t *testing.T) {
	fs := pflag.NewFlagSet("osvcctl", pflag.ContinueOnError)
	server := fs.String("server", "localhost:7300", "")
	ca := fs.String("ca-file", "", "")
	if err := fs.Parse([]string{"--server", "cmd:7300"}); err != nil {
		t.Fatal(err)
	}
	if err := cmdline.Apply(cmdline.Pflag(fs), writeConfig(t, "server: file:7300\nca-file: /etc/osvc/ca.crt\n"), env(nil)); err != nil {
		t.Fatal(err)
	}
	if *server != "cmd:7300" || *ca != "/etc/osvc/ca.crt" {
		t.Errorf("server %q, ca-file %q: want the command line's and the file's", *server, *ca)
	}
}

func TestABadConfigSaysWhatToFix(t *testing.T) {
	for _, c := range []struct {
		name, text, env, want string
	}{
		{"a key of no flag", "lisen: x:1\n", "", `"lisen" names no flag`},
		{"the config flag itself", "config: other.yaml\n", "", `"config" names no flag`},
		{"a map for a value", "listen:\n  host: x\n", "", "listen: want a value or a list of values"},
		{"a list of lists", "listen: [[a]]\n", "", "a list of lists"},
		{"not YAML", "listen: [unclosed\n", "", "not YAML of settings"},
		{"a value the flag refuses", "capacity: many\n", "", "capacity"},
		{"an environment value the flag refuses", "", "many", "$OSVC_CAPACITY"},
		{"a file too large", strings.Repeat("# comment\n", 110000), "", "more than 1048576 bytes"},
	} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.String("listen", "", "")
		fs.Int("capacity", 1, "")
		if err := fs.Parse(nil); err != nil {
			t.Fatal(err)
		}
		err := cmdline.Apply(cmdline.Std(fs), writeConfig(t, c.text), env(map[string]string{"OSVC_CAPACITY": c.env}))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
	}
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	if err := cmdline.Apply(cmdline.Std(fs), filepath.Join(t.TempDir(), "missing.yaml"), env(nil)); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("a missing file: %v, want an error naming it", err)
	}
}

func TestJSONLogsAreOneObjectPerLine(t *testing.T) {
	var out bytes.Buffer
	logger, err := cmdline.Logging{Level: "info", Format: "json"}.Logger("osvc-test", &out)
	if err != nil {
		t.Fatal(err)
	}
	logger.Info("run leased", "run", "runs/r1")
	logger.Debug("not shown at info")
	var line map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &line); err != nil {
		t.Fatalf("%q: %v", out.String(), err)
	}
	if line["@message"] != "run leased" || line["run"] != "runs/r1" || line["@module"] != "osvc-test" {
		t.Errorf("logged %v", line)
	}
	for _, bad := range []cmdline.Logging{{Level: "loud", Format: "text"}, {Level: "info", Format: "xml"}} {
		if _, err := bad.Logger("x", &out); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}
