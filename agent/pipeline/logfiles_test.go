package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

func TestCopyLogKeepsAFileWithinTheLimitWholeAndTheEndOfALongerOne(t *testing.T) {
	t.Parallel()
	var lines strings.Builder
	for i := 1; lines.Len() < 20000; i++ {
		fmt.Fprintf(&lines, "2026-03-01 08:00:00.000Z [INFO]  run: line %d\n", i)
	}
	logText := lines.String()
	tests := []struct {
		name  string
		file  string
		limit int64
		// wantCut is how many bytes of the start are left out; -1: some, at a line.
		wantCut int64
	}{
		{"a file within the limit is copied whole", logText, int64(len(logText)), 0},
		{"a file one byte over the limit is cut", logText, int64(len(logText)) - 1, -1},
		{"a long log keeps its end from a line start", logText, 4096, -1},
		{"one endless line keeps its end from the cut", strings.Repeat("x", 30000), 2048, 30000 - (2048 - int64(len(noteFor(30000, 2048))))},
		{"a file that does not end with a newline keeps its last line", logText + "the last words", 3000, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			// The file grows while it is copied: only size bytes count.
			src := strings.NewReader(tt.file + "a line logged during the upload\n")
			size := int64(len(tt.file))
			cut, err := copyLog(&out, src, "dism.log", size, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			got := out.String()
			if int64(len(got)) > tt.limit {
				t.Fatalf("copied %d bytes, more than the limit %d", len(got), tt.limit)
			}
			if tt.wantCut == 0 {
				if cut != 0 || got != tt.file {
					t.Fatalf("cut %d, copied %d bytes: want the file whole", cut, len(got))
				}
				return
			}
			note, rest, ok := strings.Cut(got, "\n")
			if !ok || !strings.HasPrefix(note, "[osvc-agent: the first ") || !strings.Contains(note, fmt.Sprintf("first %d bytes of dism.log", cut)) {
				t.Fatalf("a cut file starts with %q: want the note saying %d bytes were left out", note, cut)
			}
			if rest != tt.file[cut:] {
				t.Errorf("after the note: %d bytes, want the file's last %d", len(rest), size-cut)
			}
			if tt.wantCut > 0 && cut != tt.wantCut {
				t.Errorf("cut %d, want %d", cut, tt.wantCut)
			}
			if tt.wantCut < 0 && cut > 0 && tt.file[cut-1] != '\n' {
				t.Errorf("the kept part starts mid-line at %d", cut)
			}
		})
	}
}

// noteFor is the note of a cut of a file of size at limit, as long as any.
func noteFor(size, limit int64) string {
	var b bytes.Buffer
	_, _ = copyLog(&b, strings.NewReader(strings.Repeat("x", int(size))), "dism.log", size, limit)
	note, _, _ := strings.Cut(b.String(), "\n")
	return note + "\n"
}

func TestARunUploadsBothLogFilesWithItsResult(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cfg := newConfig(t, f)
	rec := &recorder{}
	if err := Run(context.Background(), cfg, f.assign(&osvcv1.Run{}), rec); err != nil {
		t.Fatalf("Run: %v", err)
	}
	res := rec.result
	if res.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("result = %v, want SUCCEEDED", res)
	}
	var names []string
	for _, a := range res.GetArtifacts() {
		names = append(names, a.GetName())
	}
	if !slices.Equal(names, []string{EngineLogFile, LogFile}) {
		t.Fatalf("artifacts %q, want the engine's log then the run's", names)
	}
	work := filepath.Join(cfg.Drive, WorkFolder, "r1")
	for _, a := range res.GetArtifacts() {
		blob, err := os.ReadFile(f.lib.Path(a.GetSha256()))
		if err != nil {
			t.Fatalf("%s is not in the library: %v", a.GetName(), err)
		}
		onDisk, err := os.ReadFile(filepath.Join(work, a.GetName()))
		if err != nil {
			t.Fatal(err)
		}
		// The run's own log goes on after its upload; what was uploaded is what it held then.
		if !bytes.HasPrefix(onDisk, blob) || int64(len(blob)) != a.GetSizeBytes() || a.GetMediaType() != "text/plain" || a.GetTruncatedBytes() != 0 {
			t.Errorf("%s: %d bytes uploaded (%v), want the file in the work folder (%d bytes) as it was", a.GetName(), len(blob), a, len(onDisk))
		}
		var want []string
		switch a.GetName() {
		case EngineLogFile:
			want = []string{"wimlib: running: command=", " verify ", " mountrw ", " unmount ", "wimlib: package installed"}
		case LogFile:
			want = []string{"step started: step=DRIVE", "step done: step=SWAP", "run succeeded", "log file uploaded: file=dism.log"}
		}
		for _, w := range want {
			if !bytes.Contains(blob, []byte(w)) {
				t.Errorf("uploaded %s lacks %q:\n%s", a.GetName(), w, blob)
			}
		}
	}
}

func TestAFailedOrCanceledRunStillUploadsItsLog(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		cancel   bool
		want     osvcv1.RunState
		wantLine string
	}{
		{"a failed run", false, osvcv1.RunState_RUN_STATE_FAILED, "run failed: changes discarded"},
		{"a canceled run", true, osvcv1.RunState_RUN_STATE_CANCELED, "run canceled: changes discarded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fr := newFileRun(t, "Enterprise")
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			if tt.cancel {
				fr.eng.before = func(callCtx context.Context, call string) error {
					if call == "add 1 kb2.cab" {
						cancel(errors.New("canceled by an administrator"))
						<-callCtx.Done()
						return context.Cause(callCtx)
					}
					return nil
				}
			}
			rec := fr.run(t, ctx, &osvcv1.Run{}, fr.ssuSecurityCU("fail"))
			res := rec.result
			if res.GetState() != tt.want || len(res.GetArtifacts()) != 1 || res.GetArtifacts()[0].GetName() != LogFile {
				t.Fatalf("result = %v, want %s with the run's log", res, tt.want)
			}
			if log := fr.content.logFile(LogFile); !strings.Contains(log, tt.wantLine) || !strings.Contains(log, "step started: step=APPLY") {
				t.Errorf("the uploaded log lacks the steps or %q:\n%s", tt.wantLine, log)
			}
		})
	}
}

func TestALogFileThatCannotBeUploadedLeavesTheResultAsItIs(t *testing.T) {
	t.Parallel()
	fr := newFileRun(t, "Enterprise")
	fr.content.logHook = func(context.Context, string) error {
		return errors.New("the content library is unavailable")
	}
	rec := fr.run(t, context.Background(), &osvcv1.Run{}, fr.ssuSecurityCU("applied"))
	if res := rec.result; res.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || len(res.GetArtifacts()) != 0 {
		t.Fatalf("result = %v, want SUCCEEDED without log files", res)
	}
	warned := false
	for _, l := range rec.logs {
		warned = warned || (l.GetLevel() == "WARN" && strings.Contains(l.GetMessage(), "uploading a log file of the run failed") &&
			strings.Contains(l.GetMessage(), "the content library is unavailable"))
	}
	if !warned {
		t.Error("no warning line tells the server the log file was not uploaded")
	}
}

func TestALogFileOverTheLimitIsUploadedWithItsEnd(t *testing.T) {
	t.Parallel()
	fr := newFileRun(t, "Enterprise")
	fr.cfg.MaxLogFileBytes = 2048
	rec := fr.run(t, context.Background(), &osvcv1.Run{}, fr.ssuSecurityCU("applied"))
	arts := rec.result.GetArtifacts()
	if len(arts) != 1 || arts[0].GetTruncatedBytes() <= 0 || arts[0].GetSizeBytes() > 2048 {
		t.Fatalf("artifacts = %v, want the run's log cut to 2048 bytes", arts)
	}
	log := fr.content.logFile(LogFile)
	if !strings.HasPrefix(log, fmt.Sprintf("[osvc-agent: the first %d bytes of %s", arts[0].GetTruncatedBytes(), LogFile)) || !strings.Contains(log, "run succeeded") {
		t.Errorf("the cut log should say what was left out and keep the end:\n%s", log)
	}
}

func TestARunThatFailsAtTheDriveStepUploadsNoEarlierAttemptsLogs(t *testing.T) {
	t.Parallel()
	fr := newFileRun(t, "Enterprise")
	work := filepath.Join(fr.cfg.Drive, WorkFolder, "r1")
	if err := os.MkdirAll(work, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, LogFile), []byte("an earlier attempt's story\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	fr.source.SizeBytes = 1 << 60
	rec := &recorder{}
	a := fr.assignment(&osvcv1.Run{}, nil)
	if err := Run(context.Background(), fr.cfg, a, rec); err != nil {
		t.Fatal(err)
	}
	if res := rec.result; res.GetState() != osvcv1.RunState_RUN_STATE_FAILED || len(res.GetArtifacts()) != 0 {
		t.Errorf("result = %v, want FAILED with no log files", res)
	}
}

func TestUploadingTheLogsGoesOnAfterACancelAndStopsWhenTheRunIsDiscarded(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cause   error
		want    osvcv1.RunState // 0: no result
		wantErr error
	}{
		// The work was done: the cancel arriving while the logs upload still wins.
		{"a cancel during the upload", errors.New("canceled by an administrator"), osvcv1.RunState_RUN_STATE_CANCELED, nil},
		{"a discard during the upload", fmt.Errorf("%w: shutting down", ErrDiscard), 0, ErrDiscard},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fr := newFileRun(t, "Enterprise")
			fr.cfg.LogUploadTimeout = time.Hour
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			fr.content.logHook = func(uploadCtx context.Context, _ string) error {
				cancel(tt.cause)
				if !errors.Is(tt.cause, ErrDiscard) {
					if err := uploadCtx.Err(); err != nil {
						t.Errorf("a cancel stopped the upload of the log: %v", err)
					}
					return nil
				}
				select {
				case <-uploadCtx.Done():
					return uploadCtx.Err()
				case <-time.After(30 * time.Second):
					t.Error("the upload went on 30s after the run was discarded")
					return nil
				}
			}
			a := fr.assignment(&osvcv1.Run{}, fr.ssuSecurityCU("applied"))
			rec := &recorder{}
			err := Run(ctx, fr.cfg, a, rec)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Run = %v, want %v", err, tt.wantErr)
			}
			switch {
			case tt.want == 0 && rec.nResult != 0:
				t.Errorf("a discarded run reported %v", rec.result)
			case tt.want != 0 && (rec.nResult != 1 || rec.result.GetState() != tt.want || len(rec.result.GetArtifacts()) != 1):
				t.Errorf("result = %v (%d sent), want one %s with the run's log", rec.result, rec.nResult, tt.want)
			}
		})
	}
}

func TestALogFileLimitWithoutRoomForTheNoteIsRefused(t *testing.T) {
	t.Parallel()
	fr := newFileRun(t, "Enterprise")
	fr.cfg.MaxLogFileBytes = 100
	a := fr.assignment(&osvcv1.Run{}, nil)
	rec := &recorder{}
	if err := Run(context.Background(), fr.cfg, a, rec); err == nil || !strings.Contains(err.Error(), "MaxLogFileBytes 100") {
		t.Errorf("Run with a 100-byte log file limit = %v, want it refused naming MaxLogFileBytes", err)
	}
	if rec.nResult != 0 || len(rec.steps) != 0 {
		t.Errorf("a refused config reported %v", rec.events)
	}
}
