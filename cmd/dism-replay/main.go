// Command dism-replay stands in for dism.exe where there is none: it answers
// a DISM command line with a recorded console transcript of the real
// dism.exe, so the dism engine runs through its real exec path on Linux.
//
//	OSVC_DISM_REPLAY=agent/engine/dism/testdata/scenarios/service-sample \
//	    dism-replay /English /Get-WimInfo /WimFile:install.wim
//
// OSVC_DISM_REPLAY names a scenario folder. Its transcripts (*.txt) are tried
// in file-name order; the first whose command patterns match the arguments
// answers: dism-replay does its side effects, writes its output with CRLF
// line ends and exits with its recorded exit code. A transcript that says
// "times: N" answers at most N times; the uses are counted in the folder
// OSVC_DISM_REPLAY_STATE names.
//
// When no transcript answers, or the scenario is broken, dism-replay says so
// on stderr and exits with 120 (ERROR_CALL_NOT_IMPLEMENTED), a code no
// transcript may record. The format is documented in
// agent/engine/dism/testdata/transcripts/README.md.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

const (
	// envScenario names the scenario folder to answer from.
	envScenario = "OSVC_DISM_REPLAY"
	// envState names a folder where uses of "times:" transcripts are
	// counted.
	envState = "OSVC_DISM_REPLAY_STATE"
	// exitNoRecording is dism-replay's own failure: no transcript answers,
	// or the scenario cannot be read. DISM would say 120 for "This function
	// is not supported on this system"; no transcript may record it.
	exitNoRecording = 120
)

func main() { os.Exit(realMain()) }

func realMain() int {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	var exit recordedExit
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.status
	}
	fmt.Fprintln(os.Stderr, "dism-replay:", err)
	return exitNoRecording
}

// recordedExit ends dism-replay with a transcript's exit code; it is not a
// failure of dism-replay itself.
type recordedExit struct {
	code   uint32
	status int
}

func (e recordedExit) Error() string {
	return fmt.Sprintf("dism.exe exited with %d (0x%08x)", e.code, e.code)
}

// run answers args, the command line dism-replay was started with, from the
// scenario folder that OSVC_DISM_REPLAY names.
func run(args []string, stdout, _ io.Writer) error {
	dir := os.Getenv(envScenario)
	if dir == "" {
		return fmt.Errorf("%s is not set: set it to a scenario folder, e.g. agent/engine/dism/testdata/scenarios/service-sample", envScenario)
	}
	ts, err := loadScenario(dir)
	if err != nil {
		return fmt.Errorf("scenario %s: %w", dir, err)
	}
	t, err := pick(ts, args)
	if err != nil {
		return err
	}
	if t == nil {
		return noRecording(dir, args, ts)
	}
	status, err := exitStatus(t.exit, runtime.GOOS)
	if err != nil {
		return fmt.Errorf("%s: %w", t.file, err)
	}
	out, err := t.output()
	if err != nil {
		return fmt.Errorf("%s: %w", t.file, err)
	}
	for _, e := range t.effects {
		if err := e.apply(args); err != nil {
			return fmt.Errorf("%s: %w", t.file, err)
		}
	}
	if err := writeLog(args, t.exit); err != nil {
		return err
	}
	if _, err := stdout.Write(out); err != nil {
		return fmt.Errorf("write the output of %s: %w", t.file, err)
	}
	if t.exit == 0 {
		return nil
	}
	return recordedExit{code: t.exit, status: status}
}

// pick returns the first transcript that answers args and has uses left,
// and counts its use; nil when none does.
func pick(ts []*transcript, args []string) (*transcript, error) {
	for _, t := range ts {
		if !t.matches(args) {
			continue
		}
		if t.times == 0 {
			return t, nil
		}
		left, err := useOnce(t)
		if err != nil {
			return nil, err
		}
		if left {
			return t, nil
		}
	}
	return nil, nil
}

// useOnce counts a use of a "times:" transcript in the state folder and
// tells whether it had one left. Each use appends one byte to a file named
// for the transcript, so the count is the file's size. dism.exe commands
// run one after another, so there is no race to guard against.
func useOnce(t *transcript) (bool, error) {
	state := os.Getenv(envState)
	if state == "" {
		return false, fmt.Errorf("%s says \"times: %d\", which counts its uses in a folder: set %s to one (a test's t.TempDir())", t.file, t.times, envState)
	}
	counter := filepath.Join(state, filepath.Base(filepath.Dir(t.file))+"-"+filepath.Base(t.file)+".uses")
	if info, err := os.Stat(counter); err == nil && info.Size() >= int64(t.times) {
		return false, nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("count the uses of %s: %w", t.file, err)
	}
	f, err := os.OpenFile(counter, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return false, fmt.Errorf("count the uses of %s in %s: %w", t.file, envState, err)
	}
	if _, err := f.Write([]byte{'.'}); err != nil {
		f.Close()
		return false, fmt.Errorf("count the uses of %s: %w", t.file, err)
	}
	if err := f.Close(); err != nil {
		return false, fmt.Errorf("count the uses of %s: %w", t.file, err)
	}
	return true, nil
}

// exitStatus is the process status that carries code on goos. Windows
// keeps all 32 bits. Elsewhere a parent sees only the low 8 bits, so
// 0x800f081e arrives as 30: a code whose low byte is 0 would read as
// success, and one whose low byte is dism-replay's own code would read as a
// missing recording; both are refused rather than replayed wrong.
func exitStatus(code uint32, goos string) (int, error) {
	if goos == "windows" {
		if code == exitNoRecording {
			return 0, fmt.Errorf("exit %d is dism-replay's own code for a missing recording; no transcript may record it", code)
		}
		return int(code), nil
	}
	status := int(code & 0xff)
	switch {
	case code != 0 && status == 0:
		return 0, fmt.Errorf("exit 0x%08x cannot be replayed on %s: a process status keeps only the low 8 bits, which are 0 here and would read as success", code, goos)
	case status == exitNoRecording:
		return 0, fmt.Errorf("exit 0x%08x cannot be replayed on %s: its low 8 bits are %d, dism-replay's own code for a missing recording", code, goos, exitNoRecording)
	}
	return status, nil
}

// noRecording is the error for a command no transcript answers: it says
// what each transcript of the folder answers and what to record, and ends
// with the command and the folder, on the last line, because the dism
// engine takes a failed command's last line as DISM's message.
func noRecording(dir string, args []string, ts []*transcript) error {
	var b strings.Builder
	if len(ts) == 0 {
		fmt.Fprintf(&b, "the folder %s holds no transcript (*.txt).\n", dir)
	} else {
		b.WriteString("the folder's transcripts answer, in the order they are tried:\n")
		for _, t := range ts {
			fmt.Fprintf(&b, "  %s: %s\n", filepath.Base(t.file), t.command)
		}
	}
	b.WriteString("To answer the command below, run it on Windows, record what dism.exe prints and its exit code " +
		"(echo %ERRORLEVEL%), and add the recording to the scenario as a transcript whose \"command:\" line " +
		"matches it, or add a file that names an existing recording with \"use:\" " +
		"(see agent/engine/dism/testdata/transcripts/README.md).\n")
	fmt.Fprintf(&b, "no transcript in %s answers: dism.exe %s", dir, strings.Join(quoteArgs(args), " "))
	return errors.New(b.String())
}

// quoteArgs quotes the arguments that hold spaces, for messages.
func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t") {
			a = `"` + a + `"`
		}
		out[i] = a
	}
	return out
}
