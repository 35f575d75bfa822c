package s3store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/content/s3store"
	"github.com/osvc/osvc/server/content/s3store/s3test"
)

func TestMain(m *testing.M) {
	code := m.Run()
	s3test.Close()
	os.Exit(code)
}

const partSize = 5 << 20

func sum(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// keys lists the bucket's objects and uploads in progress.
func keys(t *testing.T, bucket string) []string {
	t.Helper()
	out, err := s3test.Shared(t).Keys(context.Background(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func stage(t *testing.T, st *s3store.Store, data []byte, expect string) content.Staged {
	t.Helper()
	staged, err := st.Stage(context.Background(), bytes.NewReader(data), expect)
	if err != nil {
		t.Fatal(err)
	}
	return staged
}

func TestNothingIsPublishedUnderANameTheDataDoesNotHave(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, bucket := s3test.NewStore(t, s3store.Config{PartSize: partSize})
	data := bytes.Repeat([]byte("multipart "), partSize/5)
	expected := sum([]byte("what the writer announced"))

	staged := stage(t, st, data, expected)
	if got := keys(t, bucket); !slices.Equal(got, []string{"upload blobs/" + expected}) {
		t.Fatalf("staged: the bucket holds %q, want the upload in progress alone", got)
	}
	if err := staged.Publish(ctx, sum(data)); err == nil {
		t.Fatal("Publish of data staged for another sha256 succeeded")
	}
	staged.Discard()
	if got := keys(t, bucket); len(got) != 0 {
		t.Fatalf("after the refusal the bucket holds %q, want nothing", got)
	}
}

func TestStagedDataIsVisibleOnlyOncePublished(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tt := range []struct {
		name   string
		data   []byte
		expect bool
	}{
		{name: "one part", data: []byte("small")},
		{name: "parts to a temporary key", data: bytes.Repeat([]byte("x"), 2*partSize+1)},
		{name: "parts to the announced key", data: bytes.Repeat([]byte("y"), 2*partSize+1), expect: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st, bucket := s3test.NewStore(t, s3store.Config{PartSize: partSize})
			sha := sum(tt.data)
			expect := ""
			if tt.expect {
				expect = sha
			}
			staged := stage(t, st, tt.data, expect)
			if _, err := st.Stat(ctx, sha); !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("Stat of staged data = %v, want ErrNotFound", err)
			}
			if err := staged.Publish(ctx, sha); err != nil {
				t.Fatal(err)
			}
			staged.Discard()
			if got := keys(t, bucket); !slices.Equal(got, []string{"blobs/" + sha}) {
				t.Fatalf("the bucket holds %q, want the blob alone", got)
			}
			info, err := st.Stat(ctx, sha)
			if err != nil || info.SizeBytes != int64(len(tt.data)) {
				t.Fatalf("Stat = %+v, %v", info, err)
			}
		})
	}
}

func TestAMalformedSHA256NeverBecomesAKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, _ := s3test.NewStore(t, s3store.Config{PartSize: partSize})
	for _, bad := range []string{"../blobs/x", strings.Repeat("A", 64), strings.Repeat("a", 63) + "/", "../../" + strings.Repeat("a", 58)} {
		if _, err := st.Stat(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Stat(%q) = %v, want ErrInvalidArgument", bad, err)
		}
		if _, err := st.Open(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Open(%q) = %v, want ErrInvalidArgument", bad, err)
		}
		if err := st.Delete(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidArgument", bad, err)
		}
		if _, err := st.Stage(ctx, bytes.NewReader(bytes.Repeat([]byte("z"), partSize+1)), bad); bad != "" && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Stage expecting %q = %v, want ErrInvalidArgument", bad, err)
		}
		staged := stage(t, st, []byte("small"), "")
		if err := staged.Publish(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Publish as %q = %v, want ErrInvalidArgument", bad, err)
		}
		staged.Discard()
	}
}

func TestAPrefixKeepsLibrariesOfOneBucketApart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := s3test.Shared(t)
	bucket := s3test.NewBucket(t)
	stores := map[string]*s3store.Store{}
	for _, prefix := range []string{"site1/osvc/", "site2/osvc/"} {
		cfg, err := s.StoreConfig(t.TempDir(), bucket)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Prefix = prefix
		if stores[prefix], err = s3store.New(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	data := []byte("a blob of site 1")
	staged := stage(t, stores["site1/osvc/"], data, "")
	if err := staged.Publish(ctx, sum(data)); err != nil {
		t.Fatal(err)
	}
	staged.Discard()
	if got := keys(t, bucket); !slices.Equal(got, []string{"site1/osvc/blobs/" + sum(data)}) {
		t.Fatalf("the bucket holds %q", got)
	}
	var listed []string
	if err := stores["site2/osvc/"].List(ctx, func(b content.BlobInfo) error {
		listed = append(listed, b.SHA256)
		return nil
	}); err != nil || len(listed) != 0 {
		t.Fatalf("site 2 lists %q, %v; want nothing", listed, err)
	}
	if _, err := stores["site2/osvc/"].Stat(ctx, sum(data)); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("site 2 stats site 1's blob: %v", err)
	}
}

func TestRemoveStaleRemovesWhatInterruptedUploadsLeft(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, bucket := s3test.NewStore(t, s3store.Config{PartSize: partSize})
	client := s3test.Shared(t).Client()
	// A server that died mid-upload leaves an upload in progress, or a
	// temporary object it had completed.
	core := minio.Core{Client: client}
	if _, err := core.NewMultipartUpload(ctx, bucket, "tmp/0123", minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.PutObject(ctx, bucket, "tmp/4567", strings.NewReader("half"), 4, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	data := []byte("a blob")
	staged := stage(t, st, data, "")
	if err := staged.Publish(ctx, sum(data)); err != nil {
		t.Fatal(err)
	}
	staged.Discard()

	if n := st.RemoveStale(ctx, time.Hour); n != 0 {
		t.Errorf("RemoveStale of what is an hour old removed %d of what is younger", n)
	}
	if n := st.RemoveStale(ctx, -time.Minute); n != 2 {
		t.Errorf("RemoveStale removed %d, want the upload and the temporary object", n)
	}
	if got := keys(t, bucket); !slices.Equal(got, []string{"blobs/" + sum(data)}) {
		t.Fatalf("the bucket holds %q, want the blob alone", got)
	}
}

func TestNewChecksItsConfig(t *testing.T) {
	t.Parallel()
	s := s3test.Shared(t)
	bucket := s3test.NewBucket(t)
	good, err := s.StoreConfig(t.TempDir(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	wrongSecret := filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(wrongSecret, []byte("not the secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		change func(*s3store.Config)
		says   string
	}{
		{"an endpoint without a scheme", func(c *s3store.Config) { c.Endpoint = s.Host() }, "want a URL"},
		{"an endpoint with a path", func(c *s3store.Config) { c.Endpoint += "/" + bucket }, "without a path"},
		{"an ftp endpoint", func(c *s3store.Config) { c.Endpoint = "ftp://" + s.Host() }, "want a URL"},
		{"a bucket name with a slash", func(c *s3store.Config) { c.Bucket = "a/b" }, "bucket"},
		{"a missing bucket", func(c *s3store.Config) { c.Bucket = "no-such-bucket" }, "has no bucket no-such-bucket"},
		{"a prefix without its slash", func(c *s3store.Config) { c.Prefix = "osvc" }, "prefix"},
		{"a prefix climbing out", func(c *s3store.Config) { c.Prefix = "osvc/../" }, "prefix"},
		{"a prefix from the root", func(c *s3store.Config) { c.Prefix = "/osvc/" }, "prefix"},
		{"a part too small", func(c *s3store.Config) { c.PartSize = 1 << 20 }, "part size"},
		{"no part in flight", func(c *s3store.Config) { c.PartsInFlight = -1 }, "parts in flight"},
		{"a wrong secret key", func(c *s3store.Config) { c.SecretKeyFile = wrongSecret }, "credentials"},
		{"a missing secret key file", func(c *s3store.Config) { c.SecretKeyFile = filepath.Join(t.TempDir(), "none") }, "--s3-secret-key-file"},
		{"a secret key file without its id", func(c *s3store.Config) { c.AccessKeyID = "" }, "--s3-access-key-id"},
		{"a CA file for plain http", func(c *s3store.Config) { c.CAFile = wrongSecret }, "https://"},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			t.Parallel()
			cfg := good
			tt.change(&cfg)
			_, err := s3store.New(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("New = %v, want an error saying %q", err, tt.says)
			}
		})
	}
}

func TestCredentialsComeFromTheEnvironmentOrTheSharedFile(t *testing.T) {
	// Not parallel: it sets the process's environment.
	s := s3test.Shared(t)
	bucket := s3test.NewBucket(t)
	cfg := s3store.Config{Endpoint: s.Endpoint(), Bucket: bucket, PathStyle: true}
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"} {
		t.Setenv(v, "")
	}
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	if _, err := s3store.New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "no credentials") {
		t.Fatalf("New without credentials = %v, want it refused", err)
	}

	t.Run("from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", func(t *testing.T) {
		t.Setenv("AWS_ACCESS_KEY_ID", s3test.AccessKeyID)
		t.Setenv("AWS_SECRET_ACCESS_KEY", s3test.SecretAccessKey)
		if _, err := s3store.New(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("from an access key id and AWS_SECRET_ACCESS_KEY", func(t *testing.T) {
		t.Setenv("AWS_SECRET_ACCESS_KEY", s3test.SecretAccessKey)
		c := cfg
		c.AccessKeyID = s3test.AccessKeyID
		if _, err := s3store.New(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("from the shared credentials file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "credentials")
		ini := "[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[osvc]\naws_access_key_id = " +
			s3test.AccessKeyID + "\naws_secret_access_key = " + s3test.SecretAccessKey + "\n"
		if err := os.WriteFile(file, []byte(ini), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", file)
		t.Setenv("AWS_PROFILE", "osvc")
		if _, err := s3store.New(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
	})
}

func TestTLSWithTheStoresAuthority(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := s3test.Start(ctx, t.TempDir(), s3test.Options{TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.MakeBucket(ctx, "tls"); err != nil {
		t.Fatal(err)
	}
	cfg, err := s.StoreConfig(t.TempDir(), "tls")
	if err != nil {
		t.Fatal(err)
	}
	st, err := s3store.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New with the store's authority: %v", err)
	}
	data := []byte("over TLS")
	staged := stage(t, st, data, "")
	if err := staged.Publish(ctx, sum(data)); err != nil {
		t.Fatal(err)
	}
	staged.Discard()
	b, err := st.Open(ctx, sum(data))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r, err := b.Stream(0, b.Size())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %q, %v", got, err)
	}

	cfg.CAFile = ""
	if _, err := s3store.New(ctx, cfg); err == nil {
		t.Fatal("New trusting the system's roots reached a store whose certificate they do not sign")
	}
}
