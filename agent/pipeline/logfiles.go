package pipeline

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dustin/go-humanize"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/runlogs"
)

// errNoLogFile means a log file is missing: nothing to upload.
var errNoLogFile = errors.New("no log file")

// uploadLogs uploads the run's log files from its work folder, the engine's
// first (so the run's own log, uploaded last, tells how that went), and
// returns them as the result's artifacts. It is best effort and never
// changes the run's outcome: a file that is missing (DISM writes its log
// only once it ran) is not an artifact, and one that cannot be uploaded (each has LogUploadTimeout) is
// left out with a warning in the run log, which the server receives as a
// log line; the files stay in the work folder for the agent's retention. A
// run whose work folder this attempt never set up (it failed at DRIVE)
// uploads nothing: the files there would be an earlier attempt's.
//
// A server cancel does not stop the uploads (a canceled run keeps its
// logs); discarding the run (the agent shuts down, the run is no longer its
// own) does.
func (r *run) uploadLogs(ctx context.Context) []*osvcv1.RunArtifact {
	if !r.logOut.opened() {
		return nil
	}
	var out []*osvcv1.RunArtifact
	for _, name := range runlogs.Names {
		a, err := r.uploadLog(ctx, name)
		switch {
		case errors.Is(err, errNoLogFile):
		case err != nil:
			r.log.Warn("uploading a log file of the run failed: the run's result goes without it; the file stays in the work folder",
				"file", name, "dir", r.work, "error", err)
		default:
			r.log.Info("log file uploaded", "file", name, "sha256", a.GetSha256(), "size", a.GetSizeBytes(), "truncated_bytes", a.GetTruncatedBytes())
			out = append(out, a)
		}
	}
	return out
}

// uploadLog uploads one log file of the work folder, as it is now: a copy
// of its first size bytes (the run's own log grows while it is uploaded,
// and an upload checks the size it announced), or, past MaxLogFileBytes,
// of its end under a line saying what was left out.
func (r *run) uploadLog(runCtx context.Context, name string) (*osvcv1.RunArtifact, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(runCtx), r.cfg.LogUploadTimeout)
	defer cancel()
	stop := context.AfterFunc(runCtx, func() {
		if errors.Is(context.Cause(runCtx), ErrDiscard) {
			cancel()
		}
	})
	defer stop()

	src, err := os.Open(filepath.Join(r.work, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoLogFile
	}
	if err != nil {
		return nil, err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return nil, err
	}
	snap, err := os.CreateTemp(r.work, "upload-*-"+name)
	if err != nil {
		return nil, fmt.Errorf("copy %s for its upload: %w", name, err)
	}
	defer os.Remove(snap.Name())
	cut, err := copyLog(snap, src, name, st.Size(), r.cfg.MaxLogFileBytes)
	if cerr := snap.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("copy %s for its upload: %w", name, err)
	}
	c, err := r.cfg.Images.Store(ctx, snap.Name(), runlogs.MediaType, nil)
	if err != nil {
		return nil, err
	}
	return &osvcv1.RunArtifact{
		Name:           name,
		Sha256:         c.GetSha256(),
		SizeBytes:      c.GetSizeBytes(),
		MediaType:      runlogs.MediaType,
		TruncatedBytes: cut,
	}, nil
}

// copyLog copies the first size bytes of src to dst when they fit in limit.
// Past it, it writes a line saying what was left out, then the end of those
// bytes from the first line that starts in the part that fits: the end of
// a log is where a failure is told. It returns how many bytes of the start
// it left out.
func copyLog(dst io.Writer, src io.ReadSeeker, name string, size, limit int64) (int64, error) {
	if size <= limit {
		_, err := io.CopyN(dst, src, size)
		return 0, err
	}
	note := func(cut int64) string {
		return fmt.Sprintf("[osvc-agent: the first %d bytes of %s (a file of %s) were left out to keep it within %s; the whole file is in the run's work folder on the agent]\n",
			cut, name, humanize.IBytes(uint64(size)), humanize.IBytes(uint64(limit)))
	}
	// The note's length bounds what fits: a cut has no more digits than
	// size, so the note written with size leaves room for any.
	start := size - (limit - int64(len(note(size))))
	if _, err := src.Seek(start, io.SeekStart); err != nil {
		return 0, err
	}
	br := bufio.NewReader(io.LimitReader(src, size-start))
	cut := start
	if skipped, err := br.ReadSlice('\n'); err == nil {
		cut += int64(len(skipped))
	} else if !errors.Is(err, bufio.ErrBufferFull) && !errors.Is(err, io.EOF) {
		return 0, err
	} else {
		// No line starts in the part that fits: keep it from the cut.
		if _, err := src.Seek(start, io.SeekStart); err != nil {
			return 0, err
		}
		br = bufio.NewReader(io.LimitReader(src, size-start))
	}
	if _, err := io.WriteString(dst, note(cut)); err != nil {
		return 0, err
	}
	_, err := io.Copy(dst, br)
	return cut, err
}
