package wimlib

import (
	"os"
	"testing"
	"time"
)

func TestInstalledFoldsSessionsInOrder(t *testing.T) {
	t.Parallel()
	doc := &sessionsDoc{}
	t1 := time.Date(2026, 10, 14, 8, 0, 0, 0, time.UTC)
	doc.add(t1, []sessionPackage{
		{ID: "Package_for_RollupFix~31bf3856ad364e35~amd64~~22631.4169.1.1", Name: "KB5065431", TargetState: stateInstalled, State: stateInstalled},
	})
	doc.add(t1.Add(time.Hour), []sessionPackage{
		{ID: "Package_for_RollupFix~31bf3856ad364e35~amd64~~22631.4317.1.1", Name: "KB5066793", TargetState: stateInstalled, State: stateInstalled},
	})
	doc.add(t1.Add(2*time.Hour), []sessionPackage{
		{ID: "Package_for_RollupFix~31bf3856ad364e35~amd64~~22631.4169.1.1", Name: "KB5065431", TargetState: stateSuperseded, State: stateSuperseded},
	})
	data, err := xmlRoundTrip(doc)
	if err != nil {
		t.Fatal(err)
	}
	got := data.installed()
	if len(got) != 2 {
		t.Fatalf("installed = %+v, want 2 packages", got)
	}
	if got[0].KB != "KB5065431" || got[0].State != stateSuperseded || !got[0].InstallTime.Equal(t1) {
		t.Errorf("first = %+v, want KB5065431 Superseded installed at %s", got[0], t1)
	}
	if got[1].KB != "KB5066793" || got[1].State != stateInstalled {
		t.Errorf("second = %+v, want KB5066793 Installed", got[1])
	}
}

func xmlRoundTrip(doc *sessionsDoc) (*sessionsDoc, error) {
	dir, err := os.MkdirTemp("", "sessions-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	img, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	if err := writeSessions(img, doc); err != nil {
		return nil, err
	}
	return readSessions(img)
}

func TestOutputLinesKeepTheLastProgressState(t *testing.T) {
	t.Parallel()
	got := outputLines([]byte("Scanning\nArchiving 0%\rArchiving 50%\rArchiving 100% done\n\n"))
	want := []string{"Scanning", "Archiving 100% done"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("outputLines = %q, want %q", got, want)
	}
}

func FuzzParseSessions(f *testing.F) {
	f.Add([]byte(`<?xml version="1.0"?><Sessions version="1.0"><Session id="1" Complete="2026-10-14T08:00:00Z"><Tasks><Phase><package id="A~t~amd64~~1" name="KB1" targetState="Installed" state="Installed"/></Phase></Tasks></Session></Sessions>`))
	f.Add([]byte(`<Sessions><Session><Tasks><Phase><package id="" state="Superseded"/></Phase></Tasks></Session></Sessions>`))
	f.Add([]byte(`not xml`))
	f.Fuzz(func(t *testing.T, data []byte) {
		doc, err := parseSessions(data)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, in := range doc.installed() {
			if in.Identity == "" || seen[in.Identity] {
				t.Fatalf("installed lists %q empty or twice", in.Identity)
			}
			seen[in.Identity] = true
		}
	})
}
