package pipeline

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	"github.com/osvc/osvc/agent/engine/wimlib"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/runlogs"
)

// countingContent counts uploads of images to the content server; the
// run's log files, which every run uploads, are not counted.
type countingContent struct {
	osvcv1.ContentServiceClient
	writes atomic.Int32
}

func (c *countingContent) Write(ctx context.Context, opts ...grpc.CallOption) (grpc.ClientStreamingClient[osvcv1.WriteRequest, osvcv1.WriteResponse], error) {
	s, err := c.ContentServiceClient.Write(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return &countingWrite{ClientStreamingClient: s, writes: &c.writes}, nil
}

// Adopt is the upload of an agent beside the library (see
// transfer.Client.Upload).
func (c *countingContent) Adopt(ctx context.Context, in *osvcv1.AdoptRequest, opts ...grpc.CallOption) (*osvcv1.AdoptResponse, error) {
	if in.GetMediaType() != runlogs.MediaType {
		c.writes.Add(1)
	}
	return c.ContentServiceClient.Adopt(ctx, in, opts...)
}

// countingWrite counts the upload when its header names another media type
// than the log files'.
type countingWrite struct {
	grpc.ClientStreamingClient[osvcv1.WriteRequest, osvcv1.WriteResponse]
	writes *atomic.Int32
}

func (w *countingWrite) Send(m *osvcv1.WriteRequest) error {
	if h := m.GetHeader(); h != nil && h.GetMediaType() != runlogs.MediaType {
		w.writes.Add(1)
	}
	return w.ClientStreamingClient.Send(m)
}

// preinstall applies the update file to one index of wim and commits, with
// the engine alone: the image an earlier run would have produced.
func preinstall(t *testing.T, wim string, index int, update string) {
	t.Helper()
	ctx := context.Background()
	eng, err := wimlib.New(wimlib.Config{Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	m, err := eng.Mount(ctx, wim, index, dir)
	if err != nil {
		t.Fatalf("mount %s index %d: %v", wim, index, err)
	}
	if _, err := eng.AddPackage(ctx, m, update, nil); err != nil {
		_ = eng.Unmount(ctx, m, false)
		t.Fatalf("add %s: %v", update, err)
	}
	if err := eng.Unmount(ctx, m, true); err != nil {
		t.Fatalf("commit index %d: %v", index, err)
	}
}

// copyFile copies src to a new file in a test folder.
func copyFile(t *testing.T, src string) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(dst, data, 0o640); err != nil {
		t.Fatal(err)
	}
	return dst
}

// byKB picks the fixture's updates by KB, in the order given.
func (f *fixture) byKB(t *testing.T, kbs ...string) []*osvcv1.Update {
	t.Helper()
	var out []*osvcv1.Update
	for _, kb := range kbs {
		found := false
		for _, u := range f.updates {
			if u.GetKb() == kb {
				out = append(out, u)
				found = true
			}
		}
		if !found {
			t.Fatalf("the sample has no %s", kb)
		}
	}
	return out
}

// sampleFile is the file of the sample's update kb.
func (f *fixture) sampleFile(t *testing.T, kb string) string {
	t.Helper()
	for _, u := range f.sample.Updates {
		if u.KB == kb {
			return u.File
		}
	}
	t.Fatalf("the sample has no %s", kb)
	return ""
}

func TestARunThatChangesNothingUploadsNothingAndReportsTheSourceVersion(t *testing.T) {
	t.Parallel()
	const ssu = "KB5045935"
	tests := []struct {
		name string
		// preinstalled is installed in the source before the run.
		preinstalled string
		kbs          []string
		want         map[string]osvcv1.UpdateState
		// removeSuperseded asks for cleanup and export, which a run
		// that applied nothing does not do.
		removeSuperseded bool
	}{
		{
			name: "updates that do not apply or cannot be applied",
			kbs:  []string{"KB890830", "KB5066835"},
			want: map[string]osvcv1.UpdateState{"KB890830": osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED, "KB5066835": osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE},
		},
		{
			name:         "an update already installed beside one not applicable",
			preinstalled: ssu,
			kbs:          []string{ssu, "KB5066835"},
			want:         map[string]osvcv1.UpdateState{ssu: osvcv1.UpdateState_UPDATE_STATE_ALREADY_INSTALLED, "KB5066835": osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE},
		},
		{
			name:             "an update already installed, with remove superseded",
			preinstalled:     ssu,
			kbs:              []string{ssu, "KB5066835"},
			want:             map[string]osvcv1.UpdateState{ssu: osvcv1.UpdateState_UPDATE_STATE_ALREADY_INSTALLED, "KB5066835": osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE},
			removeSuperseded: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			if tt.preinstalled != "" {
				wim := copyFile(t, f.sample.WIM)
				preinstall(t, wim, 1, f.sampleFile(t, tt.preinstalled))
				c := f.put(t, wim, MediaTypeWIM)
				f.source = &osvcv1.ImageVersion{Version: 2, Sha256: c.GetSha256(), SizeBytes: c.GetSizeBytes()}
			}
			f.updates = f.byKB(t, tt.kbs...)
			content := &countingContent{ContentServiceClient: f.client}
			cfg := configOver(t, content)
			eng := recordCalls(&cfg)

			// When the result is reported the copy is still in the work folder.
			var copySHA string
			rec := &recorder{}
			rec.fail = func(event string) error {
				if event == "run SUCCEEDED" {
					copySHA = fileSHA(t, filepath.Join(cfg.Drive, WorkFolder, "r1", "source.wim"))
				}
				return nil
			}
			if err := Run(context.Background(), cfg, f.assign(&osvcv1.Run{RemoveSuperseded: tt.removeSuperseded}), rec); err != nil {
				t.Fatalf("Run: %v", err)
			}
			t.Logf("reports: %s", strings.Join(rec.events, " | "))

			res := rec.result
			if res.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || rec.nResult != 1 {
				t.Fatalf("result = %v (%d results), want one SUCCEEDED", res, rec.nResult)
			}
			if res.GetResultSha256() != f.source.GetSha256() || res.GetResultSizeBytes() != f.source.GetSizeBytes() {
				t.Errorf("result %s (%d bytes), want the source version %s (%d bytes)",
					res.GetResultSha256(), res.GetResultSizeBytes(), f.source.GetSha256(), f.source.GetSizeBytes())
			}
			if n := content.writes.Load(); n != 0 {
				t.Errorf("%d uploads, want none", n)
			}
			if copySHA != f.source.GetSha256() {
				t.Errorf("the copy in the work folder hashes to %s, want the source's %s: it was committed", copySHA, f.source.GetSha256())
			}
			for _, r := range rec.results {
				if want := tt.want[r.GetKb()]; r.GetState() != want {
					t.Errorf("%s = %s, want %s", r.GetKb(), r.GetState(), want)
				}
			}
			// Nothing changed the index: discarded, not committed, not exported.
			want := slices.Concat([]string{"mount 1"}, f.adds(t, 1, tt.kbs...), []string{"unmount 1 discard"})
			if got := eng.servicing(); !slices.Equal(got, want) {
				t.Errorf("engine calls:\n got %q\nwant %q", got, want)
			}
			for _, s := range rec.steps {
				if s.GetState() == osvcv1.StepState_STEP_STATE_RUNNING {
					continue
				}
				switch s.GetStep() {
				case osvcv1.Step_STEP_COMMIT:
					if !strings.Contains(s.GetDetail(), "discarded") || !strings.Contains(s.GetDetail(), "nothing changed") {
						t.Errorf("COMMIT says %q, want that it discarded because nothing changed", s.GetDetail())
					}
				case osvcv1.Step_STEP_EXPORT, osvcv1.Step_STEP_SWAP:
					if !strings.Contains(s.GetDetail(), "nothing changed the image") {
						t.Errorf("%s says %q, want that nothing changed the image", s.GetStep(), s.GetDetail())
					}
				}
			}
			if len(res.GetIndexes()) != 1 {
				t.Fatalf("result indexes = %d, want 1", len(res.GetIndexes()))
			}
			installed := false
			for _, iu := range res.GetIndexes()[0].GetInstalledUpdates() {
				installed = installed || strings.EqualFold(iu.GetKb(), ssu)
			}
			if installed != (tt.preinstalled == ssu) {
				t.Errorf("the result lists %s installed = %v, want %v", ssu, installed, tt.preinstalled == ssu)
			}
			checkWorkFolder(t, cfg.Drive)
		})
	}
}

func TestOnAMultiIndexImageOnlyTheIndexesAnUpdateChangedAreCommitted(t *testing.T) {
	t.Parallel()
	const ssu = "KB5045935"
	f := newFixture(t)
	// Index 1 already has the servicing stack, index 2 does not.
	two := filepath.Join(t.TempDir(), "two.wim")
	for _, name := range []string{"First", "Second"} {
		if out, err := exec.Command("wimlib-imagex", "export", f.sample.WIM, "1", two, name).CombinedOutput(); err != nil {
			t.Fatalf("wimlib-imagex export: %v: %s", err, out)
		}
	}
	preinstall(t, two, 1, f.sampleFile(t, ssu))
	c := f.put(t, two, MediaTypeWIM)
	f.source = &osvcv1.ImageVersion{Version: 1, Sha256: c.GetSha256(), SizeBytes: c.GetSizeBytes()}
	f.updates = f.byKB(t, ssu)
	content := &countingContent{ContentServiceClient: f.client}
	cfg := configOver(t, content)
	eng := recordCalls(&cfg)
	rec := &recorder{}
	if err := Run(context.Background(), cfg, f.assign(&osvcv1.Run{}), rec); err != nil {
		t.Fatalf("Run: %v", err)
	}
	res := rec.result
	if res.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("result = %v", res)
	}
	got := map[int32]osvcv1.UpdateState{}
	for _, r := range rec.results {
		got[r.GetIndex()] = r.GetState()
	}
	if got[1] != osvcv1.UpdateState_UPDATE_STATE_ALREADY_INSTALLED || got[2] != osvcv1.UpdateState_UPDATE_STATE_APPLIED {
		t.Errorf("results by index = %v, want 1 ALREADY_INSTALLED and 2 APPLIED", got)
	}
	want := []string{"mount 1", f.adds(t, 1, ssu)[0], "unmount 1 discard", "mount 2", f.adds(t, 2, ssu)[0], "unmount 2 commit"}
	if got := eng.servicing(); !slices.Equal(got, want) {
		t.Errorf("engine calls:\n got %q\nwant %q", got, want)
	}
	if res.GetResultSha256() == f.source.GetSha256() || content.writes.Load() != 1 {
		t.Errorf("result %s after %d uploads, want a new version uploaded once", res.GetResultSha256(), content.writes.Load())
	}
	if sha := fileSHA(t, f.lib.Path(res.GetResultSha256())); sha != res.GetResultSha256() {
		t.Fatalf("uploaded blob hashes to %s, want %s", sha, res.GetResultSha256())
	}
	for _, ix := range res.GetIndexes() {
		installed := false
		for _, iu := range ix.GetInstalledUpdates() {
			installed = installed || strings.EqualFold(iu.GetKb(), ssu)
		}
		if !installed {
			t.Errorf("index %d of the result lacks %s", ix.GetIndex(), ssu)
		}
	}
	if n := len(res.GetIndexes()); n != 2 {
		t.Errorf("result indexes = %d, want 2", n)
	}
	checkWorkFolder(t, cfg.Drive)
}
