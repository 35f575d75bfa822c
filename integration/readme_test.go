package integration

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// shellBlock returns the first ```sh block after the heading, line by line.
func shellBlock(t *testing.T, readme []byte, heading string) []string {
	t.Helper()
	var lines []string
	in, found := false, false
	sc := bufio.NewScanner(bytes.NewReader(readme))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == heading:
			found = true
		case found && !in && line == "```sh":
			in = true
		case in && line == "```":
			return lines
		case in:
			lines = append(lines, line)
		}
	}
	t.Fatalf("README.md has no sh block under %q", heading)
	return nil
}

// TestTheREADMEsSessionRunsAsWritten runs the README's "Run it yourself"
// and "osvcctl" blocks in order, in a fresh folder with a fresh home, as a
// new user would type them: real processes, the default address
// (localhost:7300). The one line changed is make build, whose binaries the
// test has built already.
func TestTheREADMEsSessionRunsAsWritten(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	const build = `make build && export PATH="$PWD/bin:$PATH"`
	setup := shellBlock(t, readme, "## Run it yourself")
	if len(setup) == 0 || setup[0] != build {
		t.Fatalf("the session starts with %q, not %q: update the test", setup[0], build)
	}
	setup[0] = "export PATH=" + binDir + ":$PATH"
	session := shellBlock(t, readme, "## osvcctl")
	// Then the grpcurl examples, on what the session left (its $RUN);
	// deploy/install-deps.sh installs grpcurl into Go's bin folder.
	grpcurl := shellBlock(t, readme, "## grpcurl")
	env, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(env), "\n")
	gobin := strings.TrimSpace(lines[0])
	if gobin == "" {
		gobin = filepath.Join(strings.Split(strings.TrimSpace(lines[1]), string(os.PathListSeparator))[0], "bin")
	}
	script := strings.Join(append([]string{
		"set -euo pipefail",
		// The processes started in the background stop with the session.
		`trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT`,
		"export PATH=$PATH:" + gobin,
	}, append(append(setup, session...), grpcurl...)...), "\n")

	dir := t.TempDir()
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OSVC_") && !strings.HasPrefix(kv, "XDG_CONFIG_HOME=") && !strings.HasPrefix(kv, "HOME=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOME="+filepath.Join(dir, "home"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's session failed: %v\n%s", err, out)
	}
	t.Logf("the README's session:\n%s", out)
	for _, want := range []string{
		"KB5066793 (index 1): APPLIED in",     // run watch follows the update, applied by this run
		"KB5066131 (index 1): APPLIED",        // the rest, with --all-applicable
		"days after Patch Tuesday",            // schedule list
		"deleted images/win11-ent/schedules/", // the later schedule, deleted
		"agents/",                             // agent list
		`"status": "SERVING"`,                 // grpcurl's health check
		`"role": "ROLE_ADMIN"`,                // grpcurl's WhoAmI
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the session printed no %q", want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "win11-ent")); err != nil {
		t.Errorf("image export wrote nothing: %v", err)
	}
}
