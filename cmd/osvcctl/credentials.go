package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/osvc/osvc/pkg/pki"
)

// Where osvcctl finds its token, first found wins: --token-file,
// $OSVC_TOKEN, $OSVC_TOKEN_FILE, the file osvcctl login wrote, then the
// first admin token of a server started here with its default --data-dir.
// Never a command-line argument: ps would show it.
const (
	tokenEnv  = "OSVC_TOKEN"
	configEnv = "OSVC_CONFIG"
)

// defaultTokenFile is the first admin token of an osvc-server started in
// the same folder with its default --data-dir.
var defaultTokenFile = filepath.Join("osvc-data", "admin.token")

// loginConfig is what osvcctl login keeps (0600): the server, its
// authority and the token to use there.
type loginConfig struct {
	Server string `json:"server"`
	CAFile string `json:"ca_file,omitempty"`
	Token  string `json:"token"`
}

// configPath is where osvcctl login keeps its configuration: $OSVC_CONFIG,
// else osvc/osvcctl.json in the user's configuration folder.
func (c *cli) configPath() string {
	if p := c.getenv(configEnv); p != "" {
		return p
	}
	if runtime.GOOS == "windows" {
		if d := c.getenv("APPDATA"); d != "" {
			return filepath.Join(d, "osvc", "osvcctl.json")
		}
		return ""
	}
	if d := c.getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "osvc", "osvcctl.json")
	}
	if d := c.getenv("HOME"); d != "" {
		return filepath.Join(d, ".config", "osvc", "osvcctl.json")
	}
	return ""
}

// loadConfig reads the login configuration; none is not an error.
func (c *cli) loadConfig() (*loginConfig, error) {
	path := c.configPath()
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("osvcctl configuration: %w", err)
	}
	var cfg loginConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("osvcctl configuration %s: %w; run osvcctl login again", path, err)
	}
	return &cfg, nil
}

// saveConfig writes the login configuration, readable by its owner only.
func (c *cli) saveConfig(cfg *loginConfig) (string, error) {
	path := c.configPath()
	if path == "" {
		return "", fmt.Errorf("no folder for osvcctl's configuration: set $%s to a file path", configEnv)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", err
	}
	return path, pki.WriteFile(path, append(data, '\n'), 0o600)
}

// readTokenFile reads a token from a file holding only it.
func readTokenFile(path string) (string, error) {
	token, err := pki.ReadSecretFile(path)
	return strings.TrimSpace(token), err
}

// resolveToken finds the token to send, "" for none.
func (c *cli) resolveToken() (string, error) {
	if c.tokenFile != "" {
		t, err := readTokenFile(c.tokenFile)
		if err != nil {
			return "", usageErrorf("--token-file: %w", err)
		}
		return t, nil
	}
	if t := strings.TrimSpace(c.getenv(tokenEnv)); t != "" {
		return t, nil
	}
	if c.login != nil && c.login.Token != "" && c.login.Server == c.server {
		return c.login.Token, nil
	}
	if _, err := os.Stat(defaultTokenFile); err == nil {
		return readTokenFile(defaultTokenFile)
	}
	return "", nil
}
