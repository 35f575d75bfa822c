package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/pki"
)

// writeFile writes data to name in dir and returns its path.
func writeFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTheTokenComesFromTheFirstPlaceThatHasOne(t *testing.T) {
	// Not parallel: it changes the working folder, where osvc-data/admin.token is looked for.
	dir := t.TempDir()
	t.Chdir(dir)
	writeFile(t, dir, filepath.Join("osvc-data", "admin.token"), "from-admin-file\n")
	flagFile := writeFile(t, dir, "flag.token", "from-flag\n")
	envFile := writeFile(t, dir, "env.token", "from-env-file\n")
	login := &loginConfig{Server: "localhost:7300", Token: "from-login"}
	tests := []struct {
		name      string
		tokenFile string
		env       map[string]string
		login     *loginConfig
		server    string
		want      string
	}{
		{"--token-file first", flagFile, map[string]string{tokenEnv: "from-env"}, login, "localhost:7300", "from-flag"},
		// $OSVC_TOKEN_FILE is --token-file's variable (cmdline.Apply).
		{"--token-file from the environment before $OSVC_TOKEN", envFile, map[string]string{tokenEnv: "from-env"}, login, "localhost:7300", "from-env-file"},
		{"then $OSVC_TOKEN", "", map[string]string{tokenEnv: "from-env"}, login, "localhost:7300", "from-env"},
		{"then the login of this server", "", nil, login, "localhost:7300", "from-login"},
		{"not the login of another server", "", nil, login, "osvc.example.com:7300", "from-admin-file"},
		{"then the first admin token here", "", nil, nil, "localhost:7300", "from-admin-file"},
	}
	for _, tt := range tests {
		c := &cli{getenv: func(k string) string { return tt.env[k] }, tokenFile: tt.tokenFile, login: tt.login, server: tt.server}
		got, err := c.resolveToken()
		if err != nil || got != tt.want {
			t.Errorf("%s: token %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
	if err := os.Remove(filepath.Join(dir, "osvc-data", "admin.token")); err != nil {
		t.Fatal(err)
	}
	c := &cli{getenv: func(string) string { return "" }, server: "localhost:7300"}
	if got, err := c.resolveToken(); err != nil || got != "" {
		t.Errorf("with no token anywhere: %q, %v; want none", got, err)
	}
}

func TestATokenFileThatIsEmptyOrHugeIsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, data := range map[string]string{"empty": "\n", "huge": strings.Repeat("x", pki.MaxSecretFileBytes+1)} {
		c := &cli{getenv: func(string) string { return "" }, tokenFile: writeFile(t, dir, name, data)}
		if _, err := c.resolveToken(); err == nil {
			t.Errorf("a %s token file was accepted", name)
		}
	}
}

func TestATokenOnTheCommandLineIsRefusedWithTheWayToGiveIt(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), []string{"--token", "osvc.tok.0123456789abcdef.x", "whoami"}, &stdout, &stderr)
	if err == nil || !strings.Contains(stderr.String(), "--token-file") {
		t.Errorf("--token: %v, stderr %q; want it refused naming --token-file", err, stderr.String())
	}
}

func TestLoginSavesItsConfigurationForItsOwnerOnly(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "osvc", "osvcctl.json")
	c := &cli{getenv: func(k string) string {
		if k == configEnv {
			return path
		}
		return ""
	}}
	saved, err := c.saveConfig(&loginConfig{Server: "localhost:7300", CAFile: "ca.crt", Token: "secret"})
	if err != nil || saved != path {
		t.Fatalf("saveConfig = %q, %v", saved, err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("the login file has mode %s, want 0600", perm)
	}
	got, err := c.loadConfig()
	if err != nil || got.Server != "localhost:7300" || got.Token != "secret" || got.CAFile != "ca.crt" {
		t.Errorf("loadConfig = %+v, %v", got, err)
	}
}
