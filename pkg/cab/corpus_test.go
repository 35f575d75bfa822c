package cab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The public test cabinets of libmspack, cabextract and libarchive: valid
// MSZIP, LZX and Quantum cabinets (libarchive's made by Microsoft's
// makecab), multi-part sets and the cabinets of past CVEs.
// deploy/install-deps.sh downloads them from Debian's archive (checked
// against pinned sha256 sums) into OSVC_TESTDATA, by default
// ~/.cache/osvc/testdata; they are not in the repository (testdata/README.md
// lists where each comes from).
var corpusDirs = []string{"libmspack-cabd", "cabextract-test/bugs", "cabextract-test/cabs", "libarchive-cab"}

// corpusSize is how many cabinets the pinned tarballs hold.
const corpusSize = 89

// refusedWhereCabextractReads are the cabinets cabextract reads and this
// reader refuses as a whole, on purpose, with the error it gives.
var refusedWhereCabextractReads = map[string]error{
	// Multi-part sets: cabextract follows the set across files.
	"split-1.cab": ErrMultiPart, "split-2.cab": ErrMultiPart, "split-3.cab": ErrMultiPart,
	"split-4.cab": ErrMultiPart, "split-5.cab": ErrMultiPart,
	// Cabinets embedded in other data (self-extracting executables):
	// cabextract searches the file for them; a package is a cabinet from
	// its first byte.
	"search.cab":       ErrNotCabinet,
	"search_basic.cab": ErrNotCabinet,
	// Starts with a false MSCF header before the real cabinets.
	"search_tricky1.cab": ErrDamaged,
}

func corpusRoot(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("OSVC_TESTDATA"); dir != "" {
		return dir
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatalf("no cache folder for the test cabinets (%v): set OSVC_TESTDATA and run deploy/install-deps.sh", err)
	}
	return filepath.Join(cache, "osvc", "testdata")
}

// memberResult is what the reader made of one member.
type memberResult struct {
	file File
	data []byte
	err  error
}

// readResult is what the reader made of one cabinet.
type readResult struct {
	openErr error
	members []memberResult
	panic   any
}

// readCabinet reads every member of the cabinet at path with this
// package's reader, on its own goroutine, so that a hang fails the test
// at ctx's deadline instead of hanging it.
func readCabinet(ctx context.Context, path string) (readResult, error) {
	done := make(chan readResult, 1)
	go func() {
		var res readResult
		defer func() {
			if p := recover(); p != nil {
				res.panic = p
			}
			done <- res
		}()
		data, err := os.ReadFile(path)
		if err != nil {
			res.openErr = err
			return
		}
		r, err := NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			res.openErr = err
			return
		}
		for _, f := range r.Files() {
			m := memberResult{file: f}
			rc, err := r.Open(f.Name)
			if err == nil {
				// Members here are small; the limit keeps a reader bug
				// from filling memory.
				m.data, err = io.ReadAll(io.LimitReader(rc, 64<<20))
			}
			m.err = err
			res.members = append(res.members, m)
		}
	}()
	select {
	case res := <-done:
		return res, nil
	case <-ctx.Done():
		return readResult{}, fmt.Errorf("reading %s did not finish: %w", filepath.Base(path), ctx.Err())
	}
}

// TestPublicTestCabinets reads libmspack's and cabextract's test cabinets:
// no panic, no hang, and for every member cabextract extracts whose
// compression this reader supports, the same bytes.
func TestPublicTestCabinets(t *testing.T) {
	t.Parallel()
	root := corpusRoot(t)
	var files []string
	for _, d := range corpusDirs {
		m, err := filepath.Glob(filepath.Join(root, d, "*.cab"))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) != corpusSize {
		t.Fatalf("found %d of the %d public test cabinets under %s: run deploy/install-deps.sh, which downloads them (or set OSVC_TESTDATA to where they are)",
			len(files), corpusSize, root)
	}
	if _, err := exec.LookPath("cabextract"); err != nil {
		t.Fatal("cabextract is needed to compare with: run deploy/install-deps.sh")
	}
	var read, unsupported, damaged, multiPart, notCabinet, compared int
	for _, path := range files {
		name := filepath.Base(path)
		t.Run(filepath.Base(filepath.Dir(path))+"/"+name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := readCabinet(ctx, path)
			if err != nil {
				t.Fatal(err)
			}
			if res.panic != nil {
				t.Fatalf("the reader panicked: %v", res.panic)
			}
			// cabextract -p writes every member to stdout in stored order,
			// and exits 0 only when all of them extracted.
			cmd := exec.CommandContext(ctx, "cabextract", "-q", "-p", path)
			cmd.Dir = filepath.Dir(path) // where it finds the other parts of a set
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			cxErr := cmd.Run()
			if ctx.Err() != nil {
				t.Fatalf("cabextract did not finish: %v", ctx.Err())
			}

			switch {
			case errors.Is(res.openErr, ErrMultiPart):
				multiPart++
			case errors.Is(res.openErr, ErrNotCabinet):
				notCabinet++
			case errors.Is(res.openErr, ErrDamaged):
				damaged++
			case res.openErr != nil:
				t.Fatalf("NewReader = %v, which is neither ErrMultiPart, ErrNotCabinet nor ErrDamaged", res.openErr)
			}
			if res.openErr != nil {
				want, expected := refusedWhereCabextractReads[name]
				switch {
				case expected && !errors.Is(res.openErr, want):
					t.Errorf("NewReader = %v, want %v", res.openErr, want)
				case cxErr == nil && !expected:
					t.Errorf("NewReader = %v, but cabextract extracts it", res.openErr)
				}
				return
			}
			if _, expected := refusedWhereCabextractReads[name]; expected {
				t.Errorf("NewReader read a cabinet expected refused: %v", refusedWhereCabextractReads[name])
			}

			var total int64
			kinds := map[string]int{}
			for _, m := range res.members {
				total += m.file.Size
				switch {
				case m.err == nil:
					kinds["read"]++
				case errors.Is(m.err, ErrUnsupportedCompression):
					kinds["unsupported"]++
				case errors.Is(m.err, ErrDamaged):
					kinds["damaged"]++
				default:
					t.Errorf("member %q: %v, which is neither ErrUnsupportedCompression nor ErrDamaged", m.file.Name, m.err)
				}
			}
			switch {
			case kinds["damaged"] > 0:
				damaged++
			case kinds["unsupported"] > 0:
				unsupported++
			default:
				read++
			}
			if cxErr != nil {
				if kinds["read"] > 0 {
					t.Errorf("members read here that cabextract does not extract (%v: %s)", cxErr, bytes.TrimSpace(stderr.Bytes()))
				}
				return
			}
			if int64(stdout.Len()) != total {
				t.Fatalf("cabextract wrote %d bytes; the members declare %d", stdout.Len(), total)
			}
			out := stdout.Bytes()
			for _, m := range res.members {
				theirs := out[:m.file.Size]
				out = out[m.file.Size:]
				switch {
				case errors.Is(m.err, ErrUnsupportedCompression):
				case m.err != nil:
					t.Errorf("member %q: %v, where cabextract extracts it", m.file.Name, m.err)
				case !bytes.Equal(m.data, theirs):
					t.Errorf("member %q: %d bytes differ from cabextract's %d", m.file.Name, len(m.data), len(theirs))
				default:
					compared++
				}
			}
		})
	}
	t.Logf("%d cabinets: %d read, %d refused as unsupported compression, %d refused as damaged, %d multi-part refused, %d not a cabinet; %d members byte-identical to cabextract's",
		len(files), read, unsupported, damaged, multiPart, notCabinet, compared)
}
