package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// bin is dism-replay built once for the tests, which run it as the dism
// engine does: as a process, through its argv, environment and exit status.
var bin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "dism-replay-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The replay runs in a folder of its own: the test data's paths are absolute.
	if corpusDir, err = filepath.Abs(corpusDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bin = filepath.Join(dir, "dism-replay")
	if runtime.GOOS == "windows" {
		bin += ".exe"
	}
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// result is how one run of dism-replay ended.
type result struct {
	stdout, stderr string
	status         int
}

// replay runs dism-replay with args against the scenario folder dir; state,
// when not empty, is the folder that counts "times:" uses.
func replay(t *testing.T, dir, state string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envScenario+"=") && !strings.HasPrefix(kv, envState+"=") {
			env = append(env, kv)
		}
	}
	if dir != "" {
		env = append(env, envScenario+"="+dir)
	}
	if state != "" {
		env = append(env, envState+"="+state)
	}
	cmd.Env = env
	cmd.Dir = t.TempDir() // a relative path in an effect lands here, not in the source tree
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.status = exit.ExitCode()
	default:
		t.Fatalf("run dism-replay: %v", err)
	}
	return r
}

// scenario writes files (name → content) into a new folder.
func scenario(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// statusOf is the process status that carries a recorded exit code here.
func statusOf(code uint32) int {
	if runtime.GOOS == "windows" {
		return int(code)
	}
	return int(code & 0xff)
}

const (
	notApplicable = "command: /Add-Package /PackagePath:*\nexit: 0x800f081e\n---\n\nError: 0x800f081e\n\nThe specified package is not applicable to this image.\n"
	listing       = "command: /Get-WimInfo /WimFile:* !/Index:*\nexit: 0\n---\nIndex : 1\nIndex : 2\n"
	details       = "command: /Get-WimInfo /WimFile:* /Index:*\nexit: 0\n---\nIndex : 2\n"
)

func TestReplayAnswersWithTheRecording(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		files      map[string]string
		sub        string // the scenario is this subfolder
		args       []string
		wantStdout string
		wantStatus int
	}{
		{
			name:       "a success is written with CRLF line ends and exits 0",
			files:      map[string]string{"a.txt": "command: /Mount-Image\nexit: 0\n---\n\nMounting image\n[==========================100.0%==========================]\nThe operation completed successfully.\n"},
			args:       []string{"/English", "/Mount-Image", "/ImageFile:x.wim", "/Index:1", "/MountDir:m"},
			wantStdout: "\r\nMounting image\r\n[==========================100.0%==========================]\r\nThe operation completed successfully.\r\n",
		},
		{
			name:       "a body without a final line end gets none",
			files:      map[string]string{"a.txt": "command: /Get-MountedWimInfo\nexit: 0\n---\nNo mounted images found."},
			args:       []string{"/Get-MountedWimInfo"},
			wantStdout: "No mounted images found.",
		},
		{
			name:       "a bar redrawn in place with a lone CR keeps it, and CRLF stays CRLF",
			files:      map[string]string{"a.txt": "command: /Export-Image\nexit: 0\n---\n[  1.0%  ]\r[100.0%]\r\nDone.\n"},
			args:       []string{"/Export-Image"},
			wantStdout: "[  1.0%  ]\r[100.0%]\r\nDone.\r\n",
		},
		{
			name:       "an HRESULT is the exit status, as much of it as the platform keeps",
			files:      map[string]string{"a.txt": notApplicable},
			args:       []string{"/Image:m", "/Add-Package", "/PackagePath:p.cab"},
			wantStdout: "\r\nError: 0x800f081e\r\n\r\nThe specified package is not applicable to this image.\r\n",
			wantStatus: statusOf(0x800f081e),
		},
		{
			name:       "a Win32 code in decimal is the exit status",
			files:      map[string]string{"a.txt": "command: /Mount-Image\nexit: 50\n---\nError: 50\n"},
			args:       []string{"/Mount-Image"},
			wantStdout: "Error: 50\r\n",
			wantStatus: 50,
		},
		{
			name:       "options match without regard to case and globs cross path separators",
			files:      map[string]string{"a.txt": "command: /Add-Package /PackagePath:*kb5066793*\nexit: 0\n---\nok\n"},
			args:       []string{"/english", "/IMAGE:C:\\Work\\Mount", "/ADD-PACKAGE", `/PACKAGEPATH:C:\Cache\ab\WINDOWS11.0-KB5066793-X64.MSU`},
			wantStdout: "ok\r\n",
		},
		{
			name: "the first match in file-name order answers",
			files: map[string]string{
				"20-any-package.txt": "command: /Add-Package\nexit: 0\n---\nany\n",
				"10-arm64.txt":       notApplicable,
			},
			args:       []string{"/Add-Package", "/PackagePath:/cache/windows11.0-kb5067112-arm64.msu"},
			wantStdout: "\r\nError: 0x800f081e\r\n\r\nThe specified package is not applicable to this image.\r\n",
			wantStatus: statusOf(0x800f081e),
		},
		{
			name:       "a negated pattern keeps the listing from answering a question about one index",
			files:      map[string]string{"10-list.txt": listing, "20-index.txt": details},
			args:       []string{"/Get-WimInfo", "/WimFile:/w/install.wim", "/Index:2"},
			wantStdout: "Index : 2\r\n",
		},
		{
			name:       "the listing answers when no index is asked for",
			files:      map[string]string{"10-list.txt": listing, "20-index.txt": details},
			args:       []string{"/English", "/LogPath:/w/dism.log", "/Get-WimInfo", "/WimFile:/w/install.wim"},
			wantStdout: "Index : 1\r\nIndex : 2\r\n",
		},
		{
			name:       "a quoted pattern may hold spaces",
			files:      map[string]string{"a.txt": "command: \"/ImageFile:*my images*\" /Mount-Image\nexit: 0\n---\nok\n"},
			args:       []string{"/Mount-Image", "/ImageFile:/data/my images/install.wim"},
			wantStdout: "ok\r\n",
		},
		{
			name: "a file that uses a recording takes its output and keeps its own command",
			files: map[string]string{
				"corpus/add-package-not-applicable.txt": notApplicable,
				"run/10-arm64.txt":                      "# the arm64 package\nuse: ../corpus/add-package-not-applicable.txt\ncommand: /Add-Package /PackagePath:*arm64*\n",
				"run/20-any.txt":                        "command: /Add-Package\nexit: 0\n---\napplied\n",
			},
			sub:        "run",
			args:       []string{"/Add-Package", "/PackagePath:/cache/windows11.0-kb5067112-arm64.msu"},
			wantStdout: "\r\nError: 0x800f081e\r\n\r\nThe specified package is not applicable to this image.\r\n",
			wantStatus: statusOf(0x800f081e),
		},
		{
			name:       "a recording can be written in the console's OEM code page",
			files:      map[string]string{"a.txt": "command: /Add-Package\nexit: 0\nencoding: ibm850\n---\nDer Vorgang wurde erfolgreich beendet. für\n"},
			args:       []string{"/Add-Package"},
			wantStdout: "Der Vorgang wurde erfolgreich beendet. f\x81r\r\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(scenario(t, tt.files), tt.sub)
			r := replay(t, dir, "", tt.args...)
			if r.stdout != tt.wantStdout || r.status != tt.wantStatus {
				t.Errorf("stdout %q, status %d; want %q, status %d (stderr %q)", r.stdout, r.status, tt.wantStdout, tt.wantStatus, r.stderr)
			}
			if r.stderr != "" {
				t.Errorf("stderr %q, want nothing: the engine reads stderr with stdout", r.stderr)
			}
		})
	}
}

func TestReplayFailsClearlyWithItsOwnCode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		files   map[string]string // nil: OSVC_DISM_REPLAY unset
		args    []string
		wantErr []string
	}{
		{
			name:    "an unanswered command is named with the folder, the transcripts tried and what to record",
			files:   map[string]string{"10-list.txt": listing},
			args:    []string{"/Image:/w/mount", "/Cleanup-Image", "/StartComponentCleanup", "/ResetBase"},
			wantErr: []string{"no transcript in", "answers: dism.exe /Image:/w/mount /Cleanup-Image /StartComponentCleanup /ResetBase", "10-list.txt: /Get-WimInfo /WimFile:* !/Index:*", "record what dism.exe prints", "command:"},
		},
		{
			name:    "an empty folder says it holds no transcript",
			files:   map[string]string{"README.md": "not a transcript"},
			args:    []string{"/Get-MountedWimInfo"},
			wantErr: []string{"holds no transcript"},
		},
		{
			name:    "without OSVC_DISM_REPLAY it says what to set",
			args:    []string{"/Get-MountedWimInfo"},
			wantErr: []string{envScenario + " is not set"},
		},
		{
			name:    "an unknown header key is refused, naming the file and line",
			files:   map[string]string{"a.txt": "command: /Mount-Image\nexit: 0\nexitcode: 0\n---\n"},
			args:    []string{"/Mount-Image"},
			wantErr: []string{"a.txt", "line 3", `unknown key "exitcode"`},
		},
		{
			name:    "a transcript without an exit code is refused",
			files:   map[string]string{"a.txt": "command: /Mount-Image\n---\nok\n"},
			args:    []string{"/Mount-Image"},
			wantErr: []string{`no "exit:" line`},
		},
		{
			name:    "a transcript without its output is refused",
			files:   map[string]string{"a.txt": "command: /Mount-Image\nexit: 0\n"},
			args:    []string{"/Mount-Image"},
			wantErr: []string{`no line "---"`},
		},
		{
			name: "a file that uses a recording may not have output of its own",
			files: map[string]string{
				"base.txt": notApplicable,
				"use.txt":  "use: base.txt\n---\nmine\n",
			},
			args:    []string{"/Add-Package"},
			wantErr: []string{"use.txt", "takes its output from there"},
		},
		{
			name:    "an exit code that is not a number is refused",
			files:   map[string]string{"a.txt": "command: /Mount-Image\nexit: 0xzz\n---\n"},
			args:    []string{"/Mount-Image"},
			wantErr: []string{"is not an exit code"},
		},
		{
			name:    "an effect needs the option it names on the command line",
			files:   map[string]string{"a.txt": "command: /Mount-Image\nexit: 0\neffect: mkdir /MountDir Windows\n---\n"},
			args:    []string{"/Mount-Image", "/ImageFile:x.wim"},
			wantErr: []string{"has no /MountDir:<path>"},
		},
		{
			name:    "a transcript used a number of times needs a folder to count in",
			files:   map[string]string{"a.txt": "command: /Mount-Image\nexit: 0\ntimes: 1\n---\n"},
			args:    []string{"/Mount-Image"},
			wantErr: []string{envState},
		},
		{
			name:    "only negated patterns are refused",
			files:   map[string]string{"a.txt": "command: !/Index:*\nexit: 0\n---\n"},
			args:    []string{"/Get-WimInfo"},
			wantErr: []string{"name at least the dism verb"},
		},
	}
	if runtime.GOOS != "windows" {
		tests = append(tests, struct {
			name    string
			files   map[string]string
			args    []string
			wantErr []string
		}{
			name:    "an exit code that would arrive as 0 is refused rather than replayed as success",
			files:   map[string]string{"a.txt": "command: /Mount-Image\nexit: 0xc1420100\n---\n"},
			args:    []string{"/Mount-Image"},
			wantErr: []string{"low 8 bits"},
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := ""
			if tt.files != nil {
				dir = scenario(t, tt.files)
			}
			r := replay(t, dir, "", tt.args...)
			if r.status != exitNoRecording {
				t.Errorf("status %d, want %d (stdout %q, stderr %q)", r.status, exitNoRecording, r.stdout, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
				}
			}
		})
	}
}

func TestReplayDoesItsSideEffects(t *testing.T) {
	t.Parallel()
	dir := scenario(t, map[string]string{
		"mount.txt":  "command: /Mount-Image\nexit: 0\neffect: mkdir /MountDir Windows\n---\nok\n",
		"export.txt": "command: /Export-Image\nexit: 0\neffect: copy /SourceImageFile /DestinationImageFile\n---\nok\n",
	})
	work := t.TempDir()
	mount := filepath.Join(work, "mount")
	if r := replay(t, dir, "", "/Mount-Image", "/ImageFile:"+filepath.Join(work, "install.wim"), "/Index:1", "/mountdir:"+mount); r.status != 0 {
		t.Fatalf("mount: status %d, stderr %s", r.status, r.stderr)
	}
	if info, err := os.Stat(filepath.Join(mount, "Windows")); err != nil || !info.IsDir() {
		t.Errorf("the mount folder has no Windows folder: %v", err)
	}

	src, dst := filepath.Join(work, "install.wim"), filepath.Join(work, "export.wim")
	if err := os.WriteFile(src, []byte("MSWIM\x00\x00\x00 the image"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := replay(t, dir, "", "/Export-Image", "/SourceImageFile:"+src, "/SourceIndex:1", "/DestinationImageFile:"+dst, "/Compress:max", "/CheckIntegrity"); r.status != 0 {
		t.Fatalf("export: status %d, stderr %s", r.status, r.stderr)
	}
	if got, err := os.ReadFile(dst); err != nil || string(got) != "MSWIM\x00\x00\x00 the image" {
		t.Errorf("exported file = %q, %v; want a copy of the source", got, err)
	}
}

func TestReplayCountsTimesInTheStateFolder(t *testing.T) {
	t.Parallel()
	dir := scenario(t, map[string]string{
		"10-busy.txt": "command: /Mount-Image\nexit: 0xc1420117\ntimes: 2\n---\nError: 0xc1420117\n",
		"20-ok.txt":   "command: /Mount-Image\nexit: 0\n---\nThe operation completed successfully.\n",
	})
	state := t.TempDir()
	var got []int
	for range 3 {
		got = append(got, replay(t, dir, state, "/Mount-Image").status)
	}
	want := []int{statusOf(0xc1420117), statusOf(0xc1420117), 0}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("statuses %v, want %v: busy twice, then mounted", got, want)
	}
	if r := replay(t, dir, t.TempDir(), "/Mount-Image"); r.status != statusOf(0xc1420117) {
		t.Errorf("a fresh state folder starts the count again: status %d", r.status)
	}
}

func FuzzParseTranscript(f *testing.F) {
	f.Add([]byte(notApplicable))
	f.Add([]byte(listing))
	f.Add([]byte("# comment\ncommand: \"/A B\" !/C\nexit: 87\neffect: copy /S /D\ntimes: 2\nencoding: ibm850\n---\nx\r\ny\n"))
	f.Add([]byte("use: ../x.txt\ncommand: /A\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, body, hasBody, err := parseTranscript(data)
		if err != nil || !hasBody {
			return
		}
		tr, err := h.transcript("fuzz.txt")
		if err != nil {
			return
		}
		tr.body = body
		tr.encoding = encodingUTF8
		out, err := tr.output()
		if err != nil {
			t.Fatalf("output: %v", err)
		}
		if bytes.Count(out, []byte("\n")) != bytes.Count(out, []byte("\r\n")) {
			t.Fatalf("output %q has a line end without CR", out)
		}
		tr.matches([]string{"/English", "/Add-Package", "/PackagePath:x"})
	})
}

func TestReplayAppendsASessionToTheLogLogPathNames(t *testing.T) {
	t.Parallel()
	dir := scenario(t, map[string]string{
		"info.txt":  "command: /Get-WimInfo\nexit: 0\n---\nIndex : 1\n",
		"mount.txt": "command: /Mount-Image\nexit: 0xc1420127\n---\nError: 0xc1420127\n",
	})
	log := filepath.Join(t.TempDir(), "dism.log")
	replay(t, dir, "", "/English", "/LogPath:"+log, "/Get-WimInfo", "/WimFile:install.wim")
	replay(t, dir, "", "/English", "/logpath:"+log, "/Mount-Image", "/ImageFile:install.wim", "/Index:1", "/MountDir:mount")
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatalf("no log where /LogPath says: %v", err)
	}
	text := string(data)
	for _, want := range []string{
		"DISM.EXE: Executing command line: dism.exe /English /LogPath:" + log + " /Get-WimInfo /WimFile:install.wim\r\n",
		"DISM.EXE: Exiting with code 0x00000000",
		"DISM.EXE: Executing command line: dism.exe /English /logpath:" + log + " /Mount-Image",
		"DISM.EXE: Exiting with code 0xc1420127",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the log lacks %q:\n%s", want, text)
		}
	}
	if n := strings.Count(text, "<----- Starting Dism.exe session ----->"); n != 2 {
		t.Errorf("%d sessions in the log, want one per command", n)
	}
}
