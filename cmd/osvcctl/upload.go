package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jedib0t/go-pretty/v6/progress"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/transfer"
)

// Media types recorded with uploaded content.
const (
	mediaTypeWIM    = "application/x-ms-wim"
	mediaTypeCAB    = "application/vnd.ms-cab-compressed"
	mediaTypeBinary = "application/octet-stream"
)

// mediaTypeOf guesses the media type of an update file from its extension.
func mediaTypeOf(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".wim", ".esd":
		return mediaTypeWIM
	case ".cab":
		return mediaTypeCAB
	}
	return mediaTypeBinary
}

// upload sends one file to the content library, showing its progress on w:
// a redrawn bar on a terminal, a few plain lines otherwise. A file the
// library holds already is not sent again. Uploads are not bounded by
// --timeout: a large WIM takes as long as it takes.
func (c *cli) upload(ctx context.Context, w io.Writer, path, mediaType string) (*osvcv1.Content, error) {
	client, err := c.contents()
	if err != nil {
		return nil, err
	}
	fi, err := statRegularFile(path)
	if err != nil {
		return nil, err
	}
	show := newUploadProgress(w, filepath.Base(path), fi.Size(), isTerminal(w))
	content, err := transfer.UploadUnlessHeld(ctx, client, path, mediaType, show.update)
	show.finish(err)
	if err != nil {
		// transfer names the file in its errors already.
		return nil, err
	}
	return content, nil
}

// statRegularFile checks that path is a file osvcctl can upload.
func statRegularFile(path string) (os.FileInfo, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, usageErrorf("file %s does not exist", path)
	}
	if err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, usageErrorf("%s is not a regular file: give the path of a file", path)
	}
	return fi, nil
}

// uploadProgress shows how far one upload is.
type uploadProgress struct {
	w    io.Writer
	name string
	size int64

	// Terminal mode.
	pw       progress.Writer
	tracker  *progress.Tracker
	rendered chan struct{}

	// Plain mode: the last quarter printed, so a line comes at 25, 50 and 75%.
	lastQuarter int64
}

// newUploadProgress starts the display: a bar when bars is set, else lines.
func newUploadProgress(w io.Writer, name string, size int64, bars bool) *uploadProgress {
	u := &uploadProgress{w: w, name: name, size: size}
	if !bars {
		fmt.Fprintf(w, "uploading %s (%s)\n", name, sizeText(size))
		return u
	}
	u.pw = progress.NewWriter()
	u.pw.SetOutputWriter(w)
	u.pw.SetUpdateFrequency(100 * time.Millisecond)
	u.pw.SetAutoStop(false)
	u.pw.Style().Visibility.ETA = true
	u.tracker = &progress.Tracker{Message: "upload " + name, Total: size, Units: progress.UnitsBytes}
	u.pw.AppendTracker(u.tracker)
	u.rendered = make(chan struct{})
	go func() {
		defer close(u.rendered)
		u.pw.Render()
	}()
	return u
}

// update is the transfer.ProgressFunc.
func (u *uploadProgress) update(done, total int64) {
	if total <= 0 {
		total = u.size
	}
	if u.tracker != nil {
		if total != u.tracker.Total {
			u.tracker.UpdateTotal(total)
		}
		u.tracker.SetValue(done)
		return
	}
	if total <= 0 {
		return
	}
	if q := done * 4 / total; q > u.lastQuarter && q < 4 {
		u.lastQuarter = q
		fmt.Fprintf(u.w, "  %s: %d%% of %s\n", u.name, q*25, sizeText(total))
	}
}

// finish ends the display with the upload's outcome.
func (u *uploadProgress) finish(err error) {
	if u.tracker != nil {
		if err != nil {
			u.tracker.MarkAsErrored()
		} else {
			u.tracker.MarkAsDone()
		}
		stopRender(u.pw, u.rendered)
		return
	}
	if err == nil {
		fmt.Fprintf(u.w, "  %s: uploaded\n", u.name)
	}
}

// stopRender stops pw and waits until its Render, running in another
// goroutine, has drawn the final state and returned. go-pretty's Stop does
// nothing before Render has set itself up, so Stop is repeated until it takes.
func stopRender(pw progress.Writer, rendered <-chan struct{}) {
	for {
		pw.Stop()
		select {
		case <-rendered:
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}
