package pipeline

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/servicing"
)

// These tests run the pipeline on the plain-file engine with in-memory
// content: the point is what the pipeline asks the engine to do, in which
// order, and what it uploads. The real-engine tests (pipeline_test.go) show
// that real servicing works.

// fileRun is a run ready to go on the plain-file engine.
type fileRun struct {
	t       *testing.T
	eng     *recordingEngine
	content *memContent
	cfg     Config
	source  *osvcv1.ImageVersion
}

// newFileRun makes a source image with one index per name.
func newFileRun(t *testing.T, indexes ...string) *fileRun {
	t.Helper()
	drive := t.TempDir()
	content := newMemContent(t, drive)
	im := &fileImage{}
	for _, name := range indexes {
		im.Indexes = append(im.Indexes, fileIndex{Name: name})
	}
	path := filepath.Join(t.TempDir(), "install.wim")
	if err := im.write(path); err != nil {
		t.Fatal(err)
	}
	c, err := content.Store(context.Background(), path, MediaTypeWIM, nil)
	if err != nil {
		t.Fatal(err)
	}
	content.uploads = nil // the import is not the run's upload
	eng := &recordingEngine{Engine: fileEngine{}}
	return &fileRun{
		t:       t,
		eng:     eng,
		content: content,
		cfg:     Config{Engine: eng, UpdateFiles: content, Images: content, Drive: drive, Logger: hclog.NewNullLogger()},
		source:  &osvcv1.ImageVersion{Version: 1, Sha256: c.GetSha256(), SizeBytes: c.GetSizeBytes()},
	}
}

// update makes an update whose one file, <kb>.cab, does what outcome says
// (see filePackage).
func (fr *fileRun) update(kb string, class osvcv1.Classification, released, outcome string) *osvcv1.Update {
	day, err := time.Parse(time.DateOnly, released)
	if err != nil {
		fr.t.Fatal(err)
	}
	data := filePackage(kb, outcome)
	return &osvcv1.Update{
		Name: "updates/" + strings.ToLower(kb), Kb: kb, Classification: class, ReleaseTime: timestamppb.New(day),
		Files: []*osvcv1.UpdateFile{{FileName: strings.ToLower(kb) + ".cab", Sha256: fr.content.put(data), SizeBytes: int64(len(data))}},
	}
}

// ssuSecurityCU are three updates of one day, in the order the server
// assigns them: the servicing stack KB1, a security update KB2 whose file
// does what outcome2 says, the cumulative update KB3.
func (fr *fileRun) ssuSecurityCU(outcome2 string) []*osvcv1.Update {
	return []*osvcv1.Update{
		fr.update("KB1", ssu, "2026-10-14", "applied"),
		fr.update("KB2", security, "2026-10-14", outcome2),
		fr.update("KB3", cu, "2026-10-14", "applied"),
	}
}

// assignment assigns run (runs/r1) of the source image with updates.
func (fr *fileRun) assignment(run *osvcv1.Run, updates []*osvcv1.Update) *osvcv1.Assign {
	run.Name, run.Image, run.FencingToken = "runs/r1", "images/win11", 7
	return &osvcv1.Assign{Run: run, Image: &osvcv1.Image{Name: "images/win11"}, Source: fr.source, Updates: updates}
}

func (fr *fileRun) run(t *testing.T, ctx context.Context, run *osvcv1.Run, updates []*osvcv1.Update) *recorder {
	t.Helper()
	a := fr.assignment(run, updates)
	rec := &recorder{}
	if err := Run(ctx, fr.cfg, a, rec); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rec.nResult != 1 {
		t.Fatalf("%d results reported, want 1", rec.nResult)
	}
	// Every update file was held, and let go once the work folder no
	// longer linked it (memContent checks at release).
	if held, acquired := fr.content.holding(); len(held) > 0 || acquired == 0 {
		t.Errorf("update files still held after the run: %q (%d holds taken)", held, acquired)
	}
	checkWorkFolder(t, fr.cfg.Drive)
	return rec
}

// uploadedImage reads back the image the run uploaded, checking it is the
// one the result names.
func (fr *fileRun) uploadedImage(t *testing.T, res *osvcv1.RunResult) *fileImage {
	t.Helper()
	up := fr.content.uploaded()
	if len(up) != 1 || up[0] != res.GetResultSha256() {
		t.Fatalf("uploads %q, result %s: want one upload, the result", up, res.GetResultSha256())
	}
	data, err := fr.content.get(up[0])
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "result.wim")
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
	im, err := readImage(path)
	if err != nil {
		t.Fatal(err)
	}
	return im
}

const (
	ssu      = osvcv1.Classification_CLASSIFICATION_SERVICING_STACK
	security = osvcv1.Classification_CLASSIFICATION_SECURITY_UPDATE
	plain    = osvcv1.Classification_CLASSIFICATION_UPDATE
	cu       = osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE
	dotnet   = osvcv1.Classification_CLASSIFICATION_DOTNET
)

func TestUpdatesAreAppliedServicingStackFirstCumulativeLastAndDotNetAfterCleanup(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name             string
		removeSuperseded bool
		want             []string
	}{
		{
			name: "without remove superseded no cleanup runs and the commit comes after the last update",
			want: []string{"mount 1", "add 1 kb1.cab", "add 1 kb2.cab", "add 1 kb3.cab", "add 1 kb4.cab", "add 1 kb5.cab",
				"add 1 kb6.cab", "unmount 1 commit"},
		},
		{
			name:             "with remove superseded cleanup follows the cumulative updates, .NET follows cleanup, then commit and export",
			removeSuperseded: true,
			want: []string{"mount 1", "add 1 kb1.cab", "add 1 kb2.cab", "add 1 kb3.cab", "add 1 kb4.cab", "add 1 kb5.cab",
				"cleanup 1", "add 1 kb6.cab", "unmount 1 commit", "export 1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fr := newFileRun(t, "Enterprise")
			// Picked in no particular order, as an administrator would.
			updates := []*osvcv1.Update{
				fr.update("KB5", cu, "2026-10-14", "applied"),       // the latest cumulative update
				fr.update("KB6", dotnet, "2026-10-14", "applied"),   // .NET
				fr.update("KB3", plain, "2026-09-20", "applied"),    // a later other update
				fr.update("KB1", ssu, "2026-10-14", "applied"),      // servicing stack, the newest of all but first
				fr.update("KB4", cu, "2026-09-09", "applied"),       // an older cumulative update
				fr.update("KB2", security, "2026-09-09", "applied"), // the earliest other update
			}
			// The server orders a run's updates when it makes the run.
			servicing.SortForServicing(updates)
			rec := fr.run(t, context.Background(), &osvcv1.Run{RemoveSuperseded: tt.removeSuperseded}, updates)
			if got := fr.eng.servicing(); !slices.Equal(got, tt.want) {
				t.Errorf("engine calls:\n got %q\nwant %q", got, tt.want)
			}
			if rec.result.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
				t.Fatalf("result = %v, want SUCCEEDED", rec.result)
			}
			im := fr.uploadedImage(t, rec.result)
			if got := im.Indexes[0].Installed; !slices.Equal(got, []string{"KB1", "KB2", "KB3", "KB4", "KB5", "KB6"}) {
				t.Errorf("the uploaded image has %q installed, want every update", got)
			}
		})
	}
}

func TestAFailedUpdateDiscardsTheMountAndUploadsNothingUnlessContinueOnError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name            string
		continueOnError bool
		want            []string
		wantRun         osvcv1.RunState
		wantUploads     int
	}{
		{"without continue on error the index is discarded and the run fails", false,
			[]string{"mount 1", "add 1 kb1.cab", "add 1 kb2.cab", "unmount 1 discard"}, osvcv1.RunState_RUN_STATE_FAILED, 0},
		{"with continue on error the rest is applied and committed", true,
			[]string{"mount 1", "add 1 kb1.cab", "add 1 kb2.cab", "add 1 kb3.cab", "unmount 1 commit"}, osvcv1.RunState_RUN_STATE_SUCCEEDED, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fr := newFileRun(t, "Enterprise")
			updates := fr.ssuSecurityCU("fail")
			rec := fr.run(t, context.Background(), &osvcv1.Run{ContinueOnError: tt.continueOnError}, updates)
			if got := fr.eng.servicing(); !slices.Equal(got, tt.want) {
				t.Errorf("engine calls:\n got %q\nwant %q", got, tt.want)
			}
			if rec.result.GetState() != tt.wantRun {
				t.Errorf("result = %v, want %s", rec.result, tt.wantRun)
			}
			if up := fr.content.uploaded(); len(up) != tt.wantUploads {
				t.Errorf("uploads %q, want %d", up, tt.wantUploads)
			}
		})
	}
}

func TestACancelDiscardsTheWorkAndUploadsNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// during is the engine call during which the cancel arrives.
		during string
		want   []string
	}{
		{"during apply the mounted index is discarded", "add 1 kb2.cab",
			[]string{"mount 1", "add 1 kb1.cab", "add 1 kb2.cab", "unmount 1 discard"}},
		// The index is committed into the run's own copy before export; the
		// library's version is never written, and nothing is uploaded.
		{"during export nothing more is unmounted and nothing uploaded", "export 1",
			[]string{"mount 1", "add 1 kb1.cab", "add 1 kb2.cab", "add 1 kb3.cab", "cleanup 1", "unmount 1 commit", "export 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fr := newFileRun(t, "Enterprise")
			updates := fr.ssuSecurityCU("applied")
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			fr.eng.before = func(callCtx context.Context, call string) error {
				if call != tt.during {
					return nil
				}
				cancel(errors.New("canceled by an administrator"))
				// The engine sees the cancel through its ctx, as a real one does.
				<-callCtx.Done()
				return context.Cause(callCtx)
			}
			rec := fr.run(t, ctx, &osvcv1.Run{RemoveSuperseded: true}, updates)
			if got := fr.eng.servicing(); !slices.Equal(got, tt.want) {
				t.Errorf("engine calls:\n got %q\nwant %q", got, tt.want)
			}
			if res := rec.result; res.GetState() != osvcv1.RunState_RUN_STATE_CANCELED || res.GetError() != "canceled by an administrator" {
				t.Errorf("result = %v, want CANCELED with the reason", res)
			}
			if up := fr.content.uploaded(); len(up) != 0 {
				t.Errorf("uploads %q, want none", up)
			}
		})
	}
}

func TestAMultiIndexImageIsMountedServicedAndCommittedIndexByIndex(t *testing.T) {
	t.Parallel()
	fr := newFileRun(t, "Enterprise", "Education")
	updates := []*osvcv1.Update{
		fr.update("KB1", ssu, "2026-10-14", "applied"),
		fr.update("KB2", cu, "2026-10-14", "applied"),
		fr.update("KB3", dotnet, "2026-10-14", "applied"),
	}
	rec := fr.run(t, context.Background(), &osvcv1.Run{}, updates)
	want := []string{
		"mount 1", "add 1 kb1.cab", "add 1 kb2.cab", "add 1 kb3.cab", "unmount 1 commit",
		"mount 2", "add 2 kb1.cab", "add 2 kb2.cab", "add 2 kb3.cab", "unmount 2 commit",
	}
	if got := fr.eng.servicing(); !slices.Equal(got, want) {
		t.Errorf("engine calls:\n got %q\nwant %q", got, want)
	}
	if rec.result.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("result = %v, want SUCCEEDED", rec.result)
	}
	im := fr.uploadedImage(t, rec.result)
	if len(im.Indexes) != 2 {
		t.Fatalf("the uploaded image has %d indexes, want 2", len(im.Indexes))
	}
	for i, ix := range im.Indexes {
		if !slices.Equal(ix.Installed, []string{"KB1", "KB2", "KB3"}) {
			t.Errorf("index %d of the uploaded image has %q installed, want every update", i+1, ix.Installed)
		}
	}
	perIndex := map[int32]int{}
	for _, r := range rec.results {
		perIndex[r.GetIndex()]++
	}
	if perIndex[1] != 3 || perIndex[2] != 3 {
		t.Errorf("update results per index = %v, want 3 on each of 1 and 2", perIndex)
	}
}
