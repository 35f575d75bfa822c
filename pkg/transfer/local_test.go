package transfer_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/transfer"
)

func newClient(t *testing.T, s *server) *transfer.Client {
	t.Helper()
	c, err := transfer.NewClient(s.client)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The test's server keeps its library in a temporary folder of this
// machine: a client sees it, as an agent beside the server does.
func TestFetchTakesTheBlobFromTheLibrarysVolumeWithoutWritingTheLibrary(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		use  transfer.Use
		want transfer.Source
		// shared tells whether dst is the library's file itself.
		shared bool
	}{
		{name: "a writable file is a copy of its own", use: transfer.Writable, want: transfer.Copied},
		{name: "a read-only file is a hard link to the library's file", use: transfer.ReadOnly, want: transfer.Linked, shared: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t)
			data := blob(blobSize)
			sum := s.held(t, data)
			dst := filepath.Join(t.TempDir(), "source.wim")
			var last [2]int64
			how, err := newClient(t, s).Fetch(context.Background(), sum, dst, tt.use, func(done, total int64) { last = [2]int64{done, total} })
			if err != nil {
				t.Fatal(err)
			}
			if how != tt.want {
				t.Errorf("Fetch took the blob %q, want %q", how, tt.want)
			}
			checkDownloaded(t, dst, data)
			if got := s.served.Load(); got != 0 {
				t.Errorf("the server sent %d bytes over Read", got)
			}
			if last != [2]int64{blobSize, blobSize} {
				t.Errorf("last progress = %v, want done = total = %d", last, blobSize)
			}
			dstInfo, err := os.Stat(dst)
			if err != nil {
				t.Fatal(err)
			}
			libInfo, err := os.Stat(s.lib.Path(sum))
			if err != nil {
				t.Fatal(err)
			}
			if os.SameFile(dstInfo, libInfo) != tt.shared {
				t.Fatalf("dst is the library's file: %v, want %v", !tt.shared, tt.shared)
			}
			if tt.shared {
				return
			}
			// What a servicing run does to its copy: write into it.
			if err := os.WriteFile(dst, []byte("committed"), 0o644); err != nil {
				t.Fatal(err)
			}
			if got, _, err := transfer.HashFile(context.Background(), s.lib.Path(sum)); err != nil || got != sum {
				t.Fatalf("after writing the copy the library's file hashes to %s (%v), want %s", got, err, sum)
			}
		})
	}
}

func TestFetchDownloadsWhatItCannotTakeFromTheLibrarysVolume(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(t *testing.T, s *server)
		starter
	}{
		{
			name:    "a server whose library is on an object store, with no file to take",
			setup:   func(*testing.T, *server) {},
			starter: starter{start: startServerOnAnObjectStore},
		},
		{
			name: "a server whose library this machine does not see (another machine's folder of the same name)",
			setup: func(t *testing.T, s *server) {
				s.onLocate = func(loc *osvcv1.LocateResponse) error {
					loc.LibraryId = strings.Repeat("0", 32)
					return nil
				}
			},
		},
		{
			name: "a server naming a file that is not the blob's",
			setup: func(t *testing.T, s *server) {
				// A file of the blob's size beside the library's identifier.
				other := filepath.Join(t.TempDir(), "secret")
				if err := os.WriteFile(other, bytes.Repeat([]byte{7}, blobSize), 0o600); err != nil {
					t.Fatal(err)
				}
				s.onLocate = func(loc *osvcv1.LocateResponse) error {
					loc.Path = other
					return nil
				}
			},
		},
		{
			name: "a server without Locate",
			setup: func(t *testing.T, s *server) {
				s.onLocate = func(*osvcv1.LocateResponse) error { return status.Error(codes.Unimplemented, "unknown method Locate") }
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := tt.startServer(t)
			tt.setup(t, s)
			data := blob(blobSize)
			sum := s.held(t, data)
			dst := filepath.Join(t.TempDir(), "source.wim")
			how, err := newClient(t, s).Fetch(context.Background(), sum, dst, transfer.ReadOnly, nil)
			if err != nil {
				t.Fatal(err)
			}
			if how != transfer.Downloaded || s.served.Load() != blobSize {
				t.Errorf("Fetch %q with %d bytes read from the server, want it downloaded, all %d", how, s.served.Load(), blobSize)
			}
			checkDownloaded(t, dst, data)
		})
	}
}

func TestFetchRefusesALibraryFileDamagedOnDisk(t *testing.T) {
	t.Parallel()
	for _, use := range []transfer.Use{transfer.Writable, transfer.ReadOnly} {
		t.Run(map[transfer.Use]string{transfer.Writable: "writable", transfer.ReadOnly: "read-only"}[use], func(t *testing.T) {
			t.Parallel()
			s := startServer(t)
			data := blob(blobSize)
			sum := s.held(t, data)
			// One byte flipped in place, the size unchanged: what a bad sector does.
			f, err := os.OpenFile(s.lib.Path(sum), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte{data[1000] ^ 0xFF}, 1000); err != nil {
				t.Fatal(err)
			}
			f.Close()
			dir := t.TempDir()
			_, err = newClient(t, s).Fetch(context.Background(), sum, filepath.Join(dir, "source.wim"), use, nil)
			if !errors.Is(err, transfer.ErrHashMismatch) || !strings.Contains(err.Error(), "damaged on disk") {
				t.Fatalf("Fetch = %v, want a hash mismatch naming the library's file damaged", err)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("files left: %v", entries)
			}
		})
	}
}

func TestUploadOfDataDamagedOnTheWayIsNeverTakenForTheFile(t *testing.T) {
	t.Parallel()
	data := blob(blobSize)
	damage := func(r *osvcv1.WriteRequest) {
		if d := r.GetData(); len(d) > 0 {
			d[len(d)/2] ^= 0xFF
		}
	}
	tests := []struct {
		name    string
		onWrite func(*osvcv1.WriteRequest) bool
		// code is the refusal's; Unknown when the client finds the damage.
		code codes.Code
	}{
		{
			name:    "the server refuses a chunk damaged on the way, by the trailer",
			onWrite: func(r *osvcv1.WriteRequest) bool { damage(r); return true },
			code:    codes.InvalidArgument,
		},
		{
			name: "the server refuses an upload cut short, by the header's size",
			onWrite: func(r *osvcv1.WriteRequest) bool {
				return len(r.GetData()) != blobSize%transfer.ChunkSize
			},
			code: codes.InvalidArgument,
		},
		{
			name: "the client refuses the answer of a server that ignores the trailer",
			onWrite: func(r *osvcv1.WriteRequest) bool {
				damage(r)
				return r.GetTrailer() == nil
			},
			code: codes.Unknown,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t)
			s.onWrite = tt.onWrite
			src := filepath.Join(t.TempDir(), "export.wim")
			writeFile(t, src, data)
			c, err := transfer.Upload(context.Background(), s.client, src, "application/x-ms-wim", nil)
			if err == nil {
				t.Fatalf("Upload = %v, want a refusal", c)
			}
			if status.Code(err) != tt.code {
				t.Fatalf("Upload: %v (code %s), want code %s", err, status.Code(err), tt.code)
			}
			if tt.code == codes.Unknown && !strings.Contains(err.Error(), "damaged on the way") {
				t.Fatalf("Upload: %v, want the client to say the upload was damaged", err)
			}
			if _, err := s.lib.Stat(context.Background(), shaOf(data)); err == nil {
				t.Fatalf("the library holds %s, which it never received intact", shaOf(data))
			}
		})
	}
}

// incomingFiles lists what the library's incoming folder holds.
func incomingFiles(t *testing.T, s *server) []string {
	t.Helper()
	loc, err := s.lib.LocateLibrary()
	if errors.Is(err, errdefs.ErrFailedPrecondition) {
		return nil // a library on an object store has no incoming folder
	}
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(loc.IncomingPath)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestStoreBesideTheLibraryHasTheServerAdoptTheFile(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	data := blob(blobSize)
	src := filepath.Join(t.TempDir(), "export.wim")
	writeFile(t, src, data)
	var last [2]int64
	c, err := newClient(t, s).Store(context.Background(), src, "application/x-ms-wim", func(done, total int64) { last = [2]int64{done, total} })
	if err != nil {
		t.Fatal(err)
	}
	if c.GetSha256() != shaOf(data) || c.GetSizeBytes() != blobSize {
		t.Fatalf("Store = %v, want the file's blob", c)
	}
	if got := s.received.Load(); got != 0 {
		t.Errorf("the server received %d bytes over Write, want none: the file was beside it", got)
	}
	if last != [2]int64{blobSize, blobSize} {
		t.Errorf("last progress = %v, want done = total = %d", last, blobSize)
	}
	if got := incomingFiles(t, s); len(got) != 0 {
		t.Errorf("the incoming folder holds %q after the upload", got)
	}
	checkDownloaded(t, s.lib.Path(c.GetSha256()), data)
	if _, err := os.Stat(src); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stored file is still there (%v): Store takes it", err)
	}
}

func TestStoreSendsWhatItCannotLeaveBesideTheLibrary(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(t *testing.T, s *server)
		starter
	}{
		{
			name:    "a server whose library is on an object store, which adopts no file",
			setup:   func(*testing.T, *server) {},
			starter: starter{start: startServerOnAnObjectStore},
		},
		{
			name: "a server whose library this machine does not see",
			setup: func(t *testing.T, s *server) {
				s.onLocateLibrary = func(loc *osvcv1.LocateLibraryResponse) error {
					loc.LibraryId = strings.Repeat("0", 32)
					return nil
				}
			},
		},
		{
			name: "an incoming folder the client cannot link into",
			setup: func(t *testing.T, s *server) {
				s.onLocateLibrary = func(loc *osvcv1.LocateLibraryResponse) error {
					loc.IncomingPath = filepath.Join(loc.IncomingPath, "missing")
					return nil
				}
			},
		},
		{
			name: "a server without LocateLibrary",
			setup: func(t *testing.T, s *server) {
				s.onLocateLibrary = func(*osvcv1.LocateLibraryResponse) error {
					return status.Error(codes.Unimplemented, "unknown method LocateLibrary")
				}
			},
		},
		{
			name: "a server without Adopt",
			setup: func(t *testing.T, s *server) {
				s.refuseAdopt = status.Error(codes.Unimplemented, "unknown method Adopt")
			},
		},
		{
			name: "a server that refuses the file",
			setup: func(t *testing.T, s *server) {
				s.refuseAdopt = status.Error(codes.InvalidArgument, "the incoming file has 2 names")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := tt.startServer(t)
			tt.setup(t, s)
			data := blob(blobSize)
			src := filepath.Join(t.TempDir(), "export.wim")
			writeFile(t, src, data)
			c, err := newClient(t, s).Store(context.Background(), src, "application/x-ms-wim", nil)
			if err != nil {
				t.Fatal(err)
			}
			if c.GetSha256() != shaOf(data) || s.received.Load() != blobSize {
				t.Errorf("Store = %v with %d bytes sent over Write, want the blob, all %d bytes sent", c, s.received.Load(), blobSize)
			}
			if got := incomingFiles(t, s); len(got) != 0 {
				t.Errorf("the incoming folder holds %q after the upload", got)
			}
			if _, err := os.Stat(src); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the stored file is still there (%v): Store takes it", err)
			}
		})
	}
}

func TestStoreRefusesAnAdoptionOfOtherData(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	s.onAdopt = func(r *osvcv1.AdoptResponse) error {
		r.Content.Sha256 = shaOf([]byte("other data"))
		return nil
	}
	src := filepath.Join(t.TempDir(), "export.wim")
	writeFile(t, src, blob(blobSize))
	c, err := newClient(t, s).Store(context.Background(), src, "application/x-ms-wim", nil)
	if err == nil || !strings.Contains(err.Error(), "the file changed while it was stored") {
		t.Fatalf("Store = %v, %v; want the answer refused", c, err)
	}
	if s.received.Load() != 0 {
		t.Errorf("the refusal fell back to sending %d bytes over Write", s.received.Load())
	}
}
