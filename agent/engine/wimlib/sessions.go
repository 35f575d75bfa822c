package wimlib

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/osvc/osvc/agent/engine"
)

// Package states as CBS records them.
const (
	stateInstalled  = "Installed"
	stateSuperseded = "Superseded"
)

// sessionsDoc is Windows/servicing/Sessions/Sessions.xml as this engine
// writes it: close to the file CBS keeps, one Session per servicing
// operation, each listing the packages it acted on and the state it left
// them in. Reading the sessions in order gives each package's current state.
type sessionsDoc struct {
	XMLName  xml.Name  `xml:"Sessions"`
	Version  string    `xml:"version,attr"`
	Sessions []session `xml:"Session"`
}

type session struct {
	Version  string `xml:"version,attr"`
	ID       string `xml:"id,attr"`
	Client   string `xml:"client,attr"`
	Started  string `xml:"Started,attr"`
	Complete string `xml:"Complete,attr"`
	Status   string `xml:"status,attr"`
	// Packages are the session's tasks.
	Packages []sessionPackage `xml:"Tasks>Phase>package"`
}

type sessionPackage struct {
	// ID is the package identity.
	ID string `xml:"id,attr"`
	// Name is the package's KB article, e.g. KB5031354.
	Name        string `xml:"name,attr"`
	TargetState string `xml:"targetState,attr"`
	State       string `xml:"state,attr"`
}

// sessionClient names this engine in the sessions it writes, as DISM writes
// "DISM Package Manager Provider".
const sessionClient = "osvc wimlib engine"

func parseSessions(data []byte) (*sessionsDoc, error) {
	var doc sessionsDoc
	if err := xml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse Sessions.xml: %w", err)
	}
	return &doc, nil
}

// readSessions reads the image's Sessions.xml; a missing file is an image
// nothing was ever installed in.
func readSessions(img *os.Root) (*sessionsDoc, error) {
	data, err := img.ReadFile(sessionsFile)
	if errors.Is(err, fs.ErrNotExist) {
		return &sessionsDoc{Version: "1.0"}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read Sessions.xml: %w", err)
	}
	return parseSessions(data)
}

// writeSessions replaces the image's Sessions.xml through a rename, so an
// interrupted write never leaves a truncated file.
func writeSessions(img *os.Root, doc *sessionsDoc) error {
	if err := img.MkdirAll(filepath.Dir(sessionsFile), 0o755); err != nil {
		return fmt.Errorf("write Sessions.xml: %w", err)
	}
	data, err := xml.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("write Sessions.xml: %w", err)
	}
	data = append([]byte(xml.Header), append(data, '\n')...)
	tmp := sessionsFile + ".new"
	if err := img.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write Sessions.xml: %w", err)
	}
	if err := img.Rename(tmp, sessionsFile); err != nil {
		return fmt.Errorf("write Sessions.xml: %w", err)
	}
	return nil
}

// add appends a completed session that left the packages in their states.
func (d *sessionsDoc) add(now time.Time, pkgs []sessionPackage) {
	if d.Version == "" {
		d.Version = "1.0"
	}
	ts := now.UTC().Format(time.RFC3339)
	d.Sessions = append(d.Sessions, session{
		Version:  "1.0",
		ID:       strconv.FormatInt(now.Unix(), 10) + "_" + strconv.Itoa(len(d.Sessions)+1),
		Client:   sessionClient,
		Started:  ts,
		Complete: ts,
		Status:   "0x0",
		Packages: pkgs,
	})
}

// installed folds the sessions in order into each package's current state;
// the install time is when the package was first installed.
func (d *sessionsDoc) installed() []engine.Installed {
	var out []engine.Installed
	at := map[string]int{}
	for _, s := range d.Sessions {
		when, _ := time.Parse(time.RFC3339, s.Complete)
		for _, p := range s.Packages {
			if p.ID == "" {
				continue
			}
			state := p.State
			if state == "" {
				state = p.TargetState
			}
			i, ok := at[p.ID]
			if !ok {
				at[p.ID] = len(out)
				out = append(out, engine.Installed{Identity: p.ID, KB: p.Name, State: state, InstallTime: when})
				continue
			}
			if out[i].State != stateInstalled && state == stateInstalled {
				out[i].InstallTime = when
			}
			out[i].State = state
			if p.Name != "" {
				out[i].KB = p.Name
			}
		}
	}
	return out
}

// InstalledPackages lists the packages recorded in the mount's Sessions.xml,
// superseded ones included, as DISM /Get-Packages does.
func (e *Engine) InstalledPackages(ctx context.Context, m *engine.Mount) ([]engine.Installed, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	img, err := openImage(m)
	if err != nil {
		return nil, fmt.Errorf("installed packages in %s: %w", m.Dir, err)
	}
	defer img.Close()
	doc, err := readSessions(img)
	if err != nil {
		return nil, fmt.Errorf("installed packages in %s: %w", m.Dir, err)
	}
	return doc.installed(), nil
}

// openImage opens the mounted index as a root that every file access inside
// the image goes through. An image may hold symlinks (Windows/WinSxS ->
// /etc): through a plain path the agent, running as root, would follow them
// and write or delete the server's own files.
func openImage(m *engine.Mount) (*os.Root, error) {
	img, err := os.OpenRoot(m.Dir)
	if err != nil {
		return nil, fmt.Errorf("open the mounted image: %w", err)
	}
	return img, nil
}
