// Package cmdline holds what osvc-server, osvc-agent and osvcctl share on
// their command lines: --version, the logging flags, and the settings a
// config file (YAML, --config FILE) and the environment (OSVC_<FLAG>) give
// the flags the command line leaves unset.
//
// Every setting is a flag: the config file's keys are the flags' names
// (data-dir: /var/lib/osvc), and the environment variable of a flag is
// OSVC_ and its name in capitals with '_' for '-' (OSVC_DATA_DIR). The
// command line wins over the environment, which wins over the file.
package cmdline

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// EnvPrefix starts the environment variable of every flag.
const EnvPrefix = "OSVC_"

// ConfigFlag names the flag of the config file; it is neither read from
// the environment nor from a file.
const ConfigFlag = "config"

// maxConfigBytes bounds a config file: settings are a few lines.
const maxConfigBytes = 1 << 20

// EnvName is the environment variable of the flag name.
func EnvName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Flags is a flag set as Apply sees it.
type Flags interface {
	// Names lists every flag.
	Names() []string
	// Changed tells whether the command line set the flag.
	Changed(name string) bool
	Set(name, value string) error
}

// Std adapts a parsed flag.FlagSet.
func Std(fs *flag.FlagSet) Flags {
	s := &stdFlags{fs: fs, set: map[string]bool{}}
	fs.Visit(func(f *flag.Flag) { s.set[f.Name] = true })
	return s
}

type stdFlags struct {
	fs  *flag.FlagSet
	set map[string]bool
}

func (s *stdFlags) Names() []string {
	var out []string
	s.fs.VisitAll(func(f *flag.Flag) { out = append(out, f.Name) })
	return out
}
func (s *stdFlags) Changed(name string) bool     { return s.set[name] }
func (s *stdFlags) Set(name, value string) error { return s.fs.Set(name, value) }

// Pflag adapts a parsed pflag.FlagSet (cobra's).
func Pflag(fs *pflag.FlagSet) Flags { return pflagFlags{fs} }

type pflagFlags struct{ fs *pflag.FlagSet }

// Names lists the flags but hidden ones, which are no settings.
func (p pflagFlags) Names() []string {
	var out []string
	p.fs.VisitAll(func(f *pflag.Flag) {
		if !f.Hidden {
			out = append(out, f.Name)
		}
	})
	return out
}
func (p pflagFlags) Changed(name string) bool     { return p.fs.Changed(name) }
func (p pflagFlags) Set(name, value string) error { return p.fs.Set(name, value) }

// Apply gives every flag of fs that the command line left unset the value
// of its environment variable (getenv), else of its key in the config file
// (none when file is ""). A key that names no flag, a value that is not one
// (a map), a flag that refuses its value: an error that names the file or
// the variable, and the setting.
func Apply(fs Flags, file string, getenv func(string) string) error {
	settings, err := readFile(file)
	if err != nil {
		return err
	}
	names := fs.Names()
	for key := range settings {
		if key == ConfigFlag || !slices.Contains(names, key) {
			return fmt.Errorf("config file %s: %q names no flag of this command: the keys are the flags' names (see -h)", file, key)
		}
	}
	for _, name := range names {
		if name == ConfigFlag || fs.Changed(name) {
			continue
		}
		if v := getenv(EnvName(name)); v != "" {
			if err := fs.Set(name, v); err != nil {
				return fmt.Errorf("$%s: %w", EnvName(name), err)
			}
			continue
		}
		if v, ok := settings[name]; ok {
			if err := fs.Set(name, v); err != nil {
				return fmt.Errorf("config file %s: %s: %w", file, name, err)
			}
		}
	}
	return nil
}

// readFile reads the settings of a config file: a YAML mapping of flag
// names to values, a list standing for the comma-separated values of a
// flag that takes several.
func readFile(file string) (map[string]string, error) {
	if file == "" {
		return nil, nil
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", file, err)
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("config file %s: more than %d bytes; it holds settings, one per line", file, maxConfigBytes)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("config file %s: not YAML of settings (name: value, one per line): %w", file, err)
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		s, err := scalar(v)
		if err != nil {
			return nil, fmt.Errorf("config file %s: %s: %w", file, k, err)
		}
		out[k] = s
	}
	return out, nil
}

// scalar renders a setting's value as a flag takes it.
func scalar(v any) (string, error) {
	switch v := v.(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	case bool, int, int64, uint64, float64:
		return fmt.Sprint(v), nil
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			s, err := scalar(e)
			if err != nil {
				return "", err
			}
			if _, nested := e.([]any); nested {
				return "", errors.New("a list of lists: want a value or a list of values")
			}
			parts[i] = s
		}
		return strings.Join(parts, ","), nil
	default:
		return "", fmt.Errorf("want a value or a list of values, not %T", v)
	}
}

// Logging is the logging flags of a binary that logs.
type Logging struct {
	Level, Format string
}

// Register adds --log-level and --log-format to fs.
func (l *Logging) Register(fs *flag.FlagSet) {
	fs.StringVar(&l.Level, "log-level", "info", "log level: trace, debug, info, warn or error")
	fs.StringVar(&l.Format, "log-format", "text", "log format: text (one line per event, for people) or json (one object per line, for log collectors)")
}

// Logger makes the logger the flags ask for, writing to w.
func (l Logging) Logger(name string, w io.Writer) (hclog.Logger, error) {
	level := hclog.LevelFromString(l.Level)
	if level == hclog.NoLevel {
		return nil, fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", l.Level)
	}
	opts := &hclog.LoggerOptions{Name: name, Level: level, Output: w}
	switch l.Format {
	case "text":
	case "json":
		opts.JSONFormat = true
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", l.Format)
	}
	return hclog.New(opts), nil
}
