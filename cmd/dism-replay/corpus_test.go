package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// corpusDir holds the recorded transcripts (made absolute by TestMain).
var corpusDir = filepath.Join("..", "..", "agent", "engine", "dism", "testdata", "transcripts")

// corpus lists the recordings.
func corpus(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(corpusDir, "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 20 {
		t.Fatalf("%d transcripts in %s, want at least 20", len(files), corpusDir)
	}
	return files
}

// argsFor is a command line the transcript's command answers: each pattern
// that must match, with its wildcards filled in.
func argsFor(t *transcript) []string {
	var args []string
	for _, p := range t.patterns {
		if !p.negate {
			args = append(args, strings.NewReplacer("*", "x", "?", "y").Replace(p.glob))
		}
	}
	return args
}

func TestEveryRecordingReplaysByteForByteWithCRLF(t *testing.T) {
	t.Parallel()
	for _, file := range corpus(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			t.Parallel()
			tr, err := loadTranscript(file)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(tr.body, []byte("\r")) {
				t.Errorf("the body has a CR: the corpus is stored with LF line ends (README.md)")
			}
			if tr.encoding != encodingUTF8 {
				t.Errorf("encoding %s: the corpus is UTF-8; a scenario may ask for a code page", tr.encoding)
			}
			abs, err := filepath.Abs(file)
			if err != nil {
				t.Fatal(err)
			}
			dir := scenario(t, map[string]string{"answer.txt": "use: " + filepath.ToSlash(abs) + "\n"})
			// The effects' options come first, naming real paths in the test's
			// folder: an effect takes the first value of its option.
			work := t.TempDir()
			var args []string
			for _, e := range tr.effects {
				switch e.kind {
				case effectMkdir:
					args = append(args, e.from+":"+filepath.Join(work, "mount"))
				case effectCopy:
					src := filepath.Join(work, "src.wim")
					if err := os.WriteFile(src, []byte("wim"), 0o644); err != nil {
						t.Fatal(err)
					}
					args = append(args, e.from+":"+src, e.to+":"+filepath.Join(work, "dst.wim"))
				}
			}
			args = append(args, argsFor(tr)...)
			r := replay(t, dir, "", args...)
			want := strings.ReplaceAll(string(tr.body), "\n", "\r\n")
			if r.stdout != want {
				t.Errorf("stdout differs from the recording with CRLF:\n got %q\nwant %q", r.stdout, want)
			}
			if r.status != statusOf(tr.exit) {
				t.Errorf("status %d, want %d for exit 0x%08x (stderr %s)", r.status, statusOf(tr.exit), tr.exit, r.stderr)
			}
		})
	}
}

func TestEveryRecordingHasItsSource(t *testing.T) {
	t.Parallel()
	sources, err := os.ReadFile(filepath.Join(corpusDir, "SOURCES"))
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]bool{}
	for _, line := range strings.Split(string(sources), "\n") {
		if strings.HasSuffix(line, ".txt") && !strings.HasPrefix(line, " ") {
			entries[line] = true
		}
	}
	for _, file := range corpus(t) {
		name := filepath.Base(file)
		if !entries[name] {
			t.Errorf("SOURCES has no entry for %s: say where it comes from, what was cut and inferred", name)
		}
		delete(entries, name)
	}
	for name := range entries {
		t.Errorf("SOURCES names %s, which is not in the corpus", name)
	}
}
