package content_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/store/storetest"
)

// endless yields zeros for ever and counts them.
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) {
	clear(p)
	e.n += int64(len(p))
	return len(p), nil
}

func TestWriteRefusesBlobsPastTheMaximumSize(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	refused := func(t *testing.T, err error, says string) {
		t.Helper()
		if !errors.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), says) ||
			!strings.Contains(err.Error(), "--max-upload-bytes") {
			t.Fatalf("Write = %v; want ErrResourceExhausted saying %q and naming --max-upload-bytes", err, says)
		}
	}
	eachBackend(t, func(t *testing.T, b backend) {
		// Within one part of the object store, and past several.
		for _, maxBytes := range []int64{1000, multipartBytes} {
			t.Run(fmt.Sprintf("of %d bytes", maxBytes), func(t *testing.T) {
				t.Parallel()
				t.Run("a header announcing more is refused before any data is read", func(t *testing.T) {
					t.Parallel()
					lib := b.newLibrary(t, content.Config{MaxBlobBytes: maxBytes})
					r := &endless{}
					_, _, err := lib.Write(ctx, content.WriteHeader{SizeBytes: maxBytes + 1}, r)
					refused(t, err, fmt.Sprintf("announces %d bytes, more than the %d", maxBytes+1, maxBytes))
					if r.n != 0 {
						t.Errorf("read %d bytes of a refused upload, want 0", r.n)
					}
					lib.wantContents(t)
				})
				t.Run("data of no announced size is refused as soon as it passes the maximum", func(t *testing.T) {
					t.Parallel()
					lib := b.newLibrary(t, content.Config{MaxBlobBytes: maxBytes})
					r := &endless{}
					_, _, err := lib.Write(ctx, content.WriteHeader{}, io.LimitReader(r, 1<<30))
					refused(t, err, fmt.Sprintf("passed %d bytes", maxBytes))
					if r.n > maxBytes+64<<10 {
						t.Errorf("read %d bytes, want the upload stopped right after %d", r.n, maxBytes)
					}
					lib.wantContents(t)
				})
				t.Run("a blob of exactly the maximum is stored", func(t *testing.T) {
					t.Parallel()
					lib := b.newLibrary(t, content.Config{MaxBlobBytes: maxBytes})
					data := bytes.Repeat([]byte("x"), int(maxBytes))
					if _, _, err := lib.Write(ctx, content.WriteHeader{SizeBytes: maxBytes}, bytes.NewReader(data)); err != nil {
						t.Fatal(err)
					}
					if _, _, err := lib.Write(ctx, content.WriteHeader{}, bytes.NewReader(append(data, 'y'))); !errors.Is(err, errdefs.ErrResourceExhausted) {
						t.Fatalf("one byte more = %v, want ErrResourceExhausted", err)
					}
					lib.wantContents(t, blobEntry(sum(data)))
				})
			})
		}
	})
}

func TestWriteOfAHeldBlobChecksTheAnnouncedSize(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lib := backends[0].newLibrary(t, content.Config{})
	data := []byte("held blob")
	if _, _, err := lib.Write(ctx, content.WriteHeader{}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	_, existed, err := lib.Write(ctx, content.WriteHeader{SHA256: sum(data), SizeBytes: int64(len(data)) + 1}, bytes.NewReader(data))
	var fv *errdefs.FieldViolation
	if !errors.As(err, &fv) || fv.Field != "size_bytes" || !strings.Contains(err.Error(), "holds "+sum(data)+" with 9 bytes, not 10") {
		t.Fatalf("Write of a held blob with a wrong size = existed %v, %v; want a size_bytes violation naming both sizes", existed, err)
	}
	for _, size := range []int64{0, int64(len(data))} {
		if _, existed, err := lib.Write(ctx, content.WriteHeader{SHA256: sum(data), SizeBytes: size}, bytes.NewReader(data)); err != nil || !existed {
			t.Errorf("Write of a held blob announcing %d bytes = existed %v, %v; want existed", size, existed, err)
		}
	}
}

func TestWritesPastTheLimitWaitForTheirTurn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	lib, err := content.New(content.Config{Dir: dir, Store: storetest.New(t), MaxConcurrentWrites: 1})
	if err != nil {
		t.Fatal(err)
	}
	held := []byte("held before the slot is taken")
	if _, _, err := lib.Write(ctx, content.WriteHeader{}, bytes.NewReader(held)); err != nil {
		t.Fatal(err)
	}

	// An upload receiving data holds the only slot: once the pipe's write
	// returns, the library is reading it.
	pr, pw := io.Pipe()
	first := make(chan error, 1)
	go func() {
		_, _, err := lib.Write(ctx, content.WriteHeader{}, pr)
		first <- err
	}()
	if _, err := pw.Write([]byte("the first upload's data")); err != nil {
		t.Fatal(err)
	}

	ended, cancel := context.WithCancel(ctx)
	cancel()
	second := []byte("the second upload")
	_, _, err = lib.Write(ended, content.WriteHeader{}, bytes.NewReader(second))
	if !errors.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), "--max-concurrent-uploads") {
		t.Fatalf("an upload while the slot is taken, its context ended = %v; want ErrResourceExhausted naming --max-concurrent-uploads", err)
	}
	// A held blob named by the header costs no slot: nothing is received.
	// Were it to wait, the deadline would end it with ErrResourceExhausted.
	bounded, stop := context.WithTimeout(ctx, 30*time.Second)
	defer stop()
	if _, existed, err := lib.Write(bounded, content.WriteHeader{SHA256: sum(held)}, bytes.NewReader(held)); err != nil || !existed {
		t.Errorf("a held blob while the slot is taken = existed %v, %v; want existed", existed, err)
	}

	waiting := make(chan error, 1)
	go func() {
		_, _, err := lib.Write(ctx, content.WriteHeader{}, bytes.NewReader(second))
		waiting <- err
	}()
	pw.Close()
	for name, ch := range map[string]chan error{"the first upload": first, "the upload that waited": waiting} {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(time.Minute):
			t.Fatalf("%s has not ended a minute after the first one's data ended", name)
		}
	}
	if _, err := lib.Stat(ctx, sum(second)); err != nil {
		t.Errorf("the upload that waited is not stored: %v", err)
	}
}

func TestNewRefusesNegativeLimits(t *testing.T) {
	t.Parallel()
	s := storetest.New(t)
	for _, cfg := range []content.Config{
		{Dir: t.TempDir(), Store: s, MaxBlobBytes: -1},
		{Dir: t.TempDir(), Store: s, MaxConcurrentWrites: -1},
	} {
		if _, err := content.New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded, want a refusal", cfg)
		}
	}
}
