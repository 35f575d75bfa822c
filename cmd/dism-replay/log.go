package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// writeLog appends a session to the log file /LogPath names, as dism.exe
// does for every command: its start, its command line and its end, in
// DISM's "date, level  component  text" lines. The agent uploads that file
// as the run's dism.log, so the stand-in writes one too; it holds the
// commands only, not the recorded session's details, which the transcripts
// do not keep. A /LogPath whose folder does not exist is skipped, as tests
// name made-up folders.
func writeLog(args []string, exit uint32) error {
	path, err := optionValue(args, "/LogPath")
	if err != nil {
		return nil // no log asked for
	}
	if _, err := os.Stat(filepath.Dir(path)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	now := time.Now().Format("2006-01-02 15:04:05")
	var b strings.Builder
	for _, text := range []string{
		"<----- Starting Dism.exe session ----->",
		"Executing command line: dism.exe " + strings.Join(args, " "),
		fmt.Sprintf("Exiting with code 0x%08x (dism-replay: a recorded answer)", exit),
		"<----- Ending Dism.exe session ----->",
	} {
		fmt.Fprintf(&b, "%s, Info                  DISM   DISM.EXE: %s\r\n", now, text)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("write the DISM log %s: %w", path, err)
	}
	_, err = f.WriteString(b.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
