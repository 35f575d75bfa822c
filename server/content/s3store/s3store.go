// Package s3store keeps the content library's blobs in a bucket of an
// S3-compatible object store (Amazon S3, MinIO, Ceph RGW, versitygw …), so
// that several osvc-server replicas on one etcd share one library.
//
// A blob is the object <prefix>blobs/<sha256>. Nothing appears under that
// name before the library has checked the data: a blob that fits in one
// part is held in memory until it is checked, then put in one request; a
// larger one goes up as a multipart upload, either straight to its final
// name when the writer announced its sha256 (S3 shows an upload only once
// it is completed, and it is completed only after the check) or to a
// temporary name, <prefix>tmp/<random>, completed and copied on the
// object store's side to its final name once checked. Memory per upload is
// bounded by a few parts: one being received, PartsInFlight being sent.
package s3store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sync/errgroup"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server/content"
)

const (
	// DefaultPartSize is the part size of multipart uploads: 16 MiB, the
	// size minio-go itself starts from, so a 64 GiB blob takes 4,096
	// parts, within S3's 10,000.
	DefaultPartSize = 16 << 20
	// DefaultPartsInFlight sends two parts of an upload at once: with the
	// part being received, an upload holds 48 MiB.
	DefaultPartsInFlight = 2
	// minPartSize is S3's smallest part but the last.
	minPartSize = 5 << 20
	// maxParts is S3's most parts of one upload.
	maxParts = 10000
	// DefaultRegion is what S3-compatible stores answer to when not told.
	DefaultRegion = "us-east-1"
)

// Environment variables of the credentials, as every AWS tool reads them.
const (
	AccessKeyIDEnv     = "AWS_ACCESS_KEY_ID"
	SecretAccessKeyEnv = "AWS_SECRET_ACCESS_KEY"
)

// Config configures a Store.
type Config struct {
	// Endpoint is the object store's URL, https://host[:port] (or
	// http:// for a store on a trusted network), without a path.
	Endpoint string
	// Bucket holds the library; osvc does not create it.
	Bucket string
	// Region is the bucket's region; default DefaultRegion.
	Region string
	// Prefix, when set, is put before every key, so that one bucket can
	// hold other things too (or several libraries): e.g. "osvc/". It ends
	// with '/'.
	Prefix string
	// CAFile is a PEM file of the authorities that sign the store's
	// certificate, trusted instead of the system's roots.
	CAFile string
	// PathStyle names the bucket in the URL's path
	// (https://host/bucket/key), as most stores other than Amazon's want;
	// otherwise minio-go chooses (the host name, bucket.host, for Amazon).
	PathStyle bool
	// AccessKeyID and SecretKeyFile are the credentials: the secret key is
	// read from the file (it is never given on the command line, where ps
	// shows it), or from $AWS_SECRET_ACCESS_KEY. Without AccessKeyID, the
	// credentials come from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY
	// (and $AWS_SESSION_TOKEN), else from the shared credentials file
	// ($AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile
	// $AWS_PROFILE or default).
	AccessKeyID, SecretKeyFile string
	// PartSize is the part size of multipart uploads; default
	// DefaultPartSize, raised when needed so that MaxBlobBytes fits in
	// S3's 10,000 parts.
	PartSize int64
	// PartsInFlight is how many parts of one upload are sent at once;
	// default DefaultPartsInFlight. An upload holds one part more in
	// memory, the one it is receiving.
	PartsInFlight int
	// MaxBlobBytes is the largest blob the library accepts.
	MaxBlobBytes int64
	Logger       hclog.Logger
}

// Store is a bucket (under a prefix) holding the blobs of a content library.
type Store struct {
	client   *minio.Client
	core     minio.Core
	bucket   string
	prefix   string
	partSize int64
	// partsInFlight bounds the parts of one upload sent at once.
	partsInFlight int
	logger        hclog.Logger
	desc          string
}

var _ content.Blobs = (*Store)(nil)

// New validates cfg, and checks that the bucket is there and that the
// credentials are accepted, so a mistake fails the server's start.
func New(ctx context.Context, cfg Config) (*Store, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("object store endpoint %q: want a URL such as https://s3.example.com or http://10.0.0.5:9000, without a path (the bucket is given apart)", cfg.Endpoint)
	}
	if err := checkBucketName(cfg.Bucket); err != nil {
		return nil, err
	}
	if err := CheckPrefix(cfg.Prefix); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	partSize := cfg.PartSize
	if partSize == 0 {
		partSize = DefaultPartSize
	}
	if partSize < minPartSize || partSize > 5<<30 {
		return nil, fmt.Errorf("object store part size %d: want 5 MiB to 5 GiB", partSize)
	}
	if cfg.MaxBlobBytes > partSize*maxParts {
		// Whole MiB, so the parts stay aligned.
		partSize = ((cfg.MaxBlobBytes+maxParts-1)/maxParts + 1<<20 - 1) &^ (1<<20 - 1)
	}
	inFlight := cfg.PartsInFlight
	if inFlight == 0 {
		inFlight = DefaultPartsInFlight
	}
	if inFlight < 1 || inFlight > 64 {
		return nil, fmt.Errorf("object store parts in flight %d: want 1 to 64", inFlight)
	}
	creds, err := credentialsOf(cfg)
	if err != nil {
		return nil, err
	}
	transport, err := minio.DefaultTransport(u.Scheme == "https")
	if err != nil {
		return nil, fmt.Errorf("object store: %w", err)
	}
	if cfg.CAFile != "" {
		if u.Scheme != "https" {
			return nil, fmt.Errorf("object store: a CA file is for an https:// endpoint, not %s", cfg.Endpoint)
		}
		roots, err := readRoots(cfg.CAFile)
		if err != nil {
			return nil, err
		}
		transport.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	region := cfg.Region
	if region == "" {
		region = DefaultRegion
	}
	client, err := minio.New(u.Host, &minio.Options{
		Creds:        creds,
		Secure:       u.Scheme == "https",
		Transport:    transport,
		Region:       region,
		BucketLookup: lookup,
	})
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", cfg.Endpoint, err)
	}
	s := &Store{
		client: client, core: minio.Core{Client: client}, bucket: cfg.Bucket, prefix: cfg.Prefix,
		partSize: partSize, partsInFlight: inFlight, logger: logger.Named("s3store"),
		desc: fmt.Sprintf("bucket %s%s of %s", cfg.Bucket, cfg.Prefix, cfg.Endpoint),
	}
	if u.Scheme == "http" && !pki.Loopback(u.Host) {
		s.logger.Warn("the object store is reached in plaintext: requests are signed, but blobs travel unencrypted; use an https:// endpoint", "endpoint", cfg.Endpoint)
	}
	ok, err := client.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("object store %s: check bucket %s: %w; check the endpoint, the credentials and that the bucket exists", cfg.Endpoint, cfg.Bucket, err)
	}
	if !ok {
		return nil, fmt.Errorf("object store %s has no bucket %s: create it first (osvc-server does not create buckets)", cfg.Endpoint, cfg.Bucket)
	}
	return s, nil
}

// credentialsOf resolves cfg's credentials now, so missing ones fail the start.
func credentialsOf(cfg Config) (*credentials.Credentials, error) {
	var creds *credentials.Credentials
	switch {
	case cfg.SecretKeyFile != "" && cfg.AccessKeyID == "":
		return nil, errors.New("object store: a secret key file goes with an access key id: give --s3-access-key-id too")
	case cfg.AccessKeyID != "" && cfg.SecretKeyFile != "":
		secret, err := pki.ReadSecretFile(cfg.SecretKeyFile)
		if err != nil {
			return nil, fmt.Errorf("object store secret key (--s3-secret-key-file): %w", err)
		}
		creds = credentials.NewStaticV4(cfg.AccessKeyID, secret, "")
	case cfg.AccessKeyID != "":
		secret := os.Getenv(SecretAccessKeyEnv)
		if secret == "" {
			return nil, fmt.Errorf("object store access key %s: give its secret key in --s3-secret-key-file or $%s", cfg.AccessKeyID, SecretAccessKeyEnv)
		}
		creds = credentials.NewStaticV4(cfg.AccessKeyID, secret, "")
	default:
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{},
			&credentials.FileAWSCredentials{},
		})
	}
	v, err := creds.GetWithContext(nil)
	if err != nil || v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return nil, fmt.Errorf("object store: no credentials (%v): give --s3-access-key-id with --s3-secret-key-file, or set $%s and $%s, or a shared credentials file (~/.aws/credentials, $AWS_SHARED_CREDENTIALS_FILE)",
			err, AccessKeyIDEnv, SecretAccessKeyEnv)
	}
	return creds, nil
}

func readRoots(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("object store CA file (--s3-ca-file): %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("object store CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// checkBucketName refuses what S3 would not take as a bucket name.
func checkBucketName(b string) error {
	if len(b) < 3 || len(b) > 63 || strings.Trim(b, "abcdefghijklmnopqrstuvwxyz0123456789.-") != "" ||
		strings.Trim(b[:1]+b[len(b)-1:], "abcdefghijklmnopqrstuvwxyz0123456789") != "" || strings.Contains(b, "..") {
		return fmt.Errorf("object store bucket %q: want 3 to 63 lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit", b)
	}
	return nil
}

// CheckPrefix refuses a key prefix that does not name a folder of plain
// segments: it ends with '/', and has no empty, '.' or '..' segment.
func CheckPrefix(p string) error {
	if p == "" {
		return nil
	}
	bad := !strings.HasSuffix(p, "/") || len(p) > 512 || strings.ContainsFunc(p, func(r rune) bool { return r < ' ' || r == '\\' || r == 0x7f })
	for _, seg := range strings.Split(strings.TrimSuffix(p, "/"), "/") {
		bad = bad || seg == "" || seg == "." || seg == ".."
	}
	if bad {
		return fmt.Errorf("object store prefix %q: want folder names ending with '/', such as osvc/ or libraries/site1/, without empty, '.' or '..' parts", p)
	}
	return nil
}

func (s *Store) String() string { return s.desc }

// Shared is true: every replica pointed at the bucket uses the same blobs.
func (s *Store) Shared() bool { return true }

// ChunksPrefix is put after a library's prefix for its chunk store: the
// chunks of the blobs stored as chunks are a store of their own in the
// same bucket, <prefix>chunks/blobs/<sha256>.
const ChunksPrefix = "chunks/"

// blobsFolder holds the blobs, tmpFolder the uploads not yet checked.
const (
	blobsFolder = "blobs/"
	tmpFolder   = "tmp/"
)

// key is the object of the blob sha; an error for a malformed sha256, so
// that bad input never becomes a key.
func (s *Store) key(sha string) (string, error) {
	if !transfer.ValidSHA256(sha) {
		return "", errdefs.InvalidArgument("sha256", fmt.Sprintf("%q is not a sha256: want 64 lower-case hex digits", sha))
	}
	return s.prefix + blobsFolder + sha, nil
}

// wrap says which blob and store an error of the object store concerns;
// a key that is not there is errdefs.ErrNotFound, a store that cannot be
// reached errdefs.ErrUnavailable.
func (s *Store) wrap(what string, err error) error {
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.Code == minio.NoSuchKey || resp.StatusCode == http.StatusNotFound && resp.Code != minio.NoSuchBucket:
		return fmt.Errorf("%s: %w", what, errdefs.ErrNotFound)
	case resp.StatusCode == 0 || resp.StatusCode >= 500:
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s in %s: %w", what, s.desc, err)
		}
		return fmt.Errorf("%s in %s: %w: %w", what, s.desc, errdefs.ErrUnavailable, err)
	}
	return fmt.Errorf("%s in %s: %w", what, s.desc, err)
}

// Stage reads the first part; data that ends within it stays in memory
// until Publish puts it in one request. Longer data goes up as a multipart
// upload: to the final key when expect names it, else to a temporary key.
func (s *Store) Stage(ctx context.Context, r io.Reader, expect string) (content.Staged, error) {
	var final string
	if expect != "" {
		var err error
		if final, err = s.key(expect); err != nil {
			return nil, err
		}
	}
	// Most blobs (update files, logs) are small: a part's buffer is made
	// only for data that needs one.
	first := make([]byte, min(s.partSize, transfer.ChunkSize))
	n, err := io.ReadFull(r, first)
	if err == nil && len(first) < int(s.partSize) {
		first = append(first, make([]byte, int(s.partSize)-len(first))...)
		var m int
		m, err = io.ReadFull(r, first[n:])
		n += m
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &memStaged{s: s, data: first[:n]}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("content library: receive data: %w", err)
	}
	first = first[:s.partSize:s.partSize]
	m := &multipartStaged{s: s, key: final, expect: expect}
	if expect == "" {
		m.key = s.prefix + tmpFolder + randomName()
	}
	m.uploadID, err = s.core.NewMultipartUpload(ctx, s.bucket, m.key, minio.PutObjectOptions{})
	if err != nil {
		return nil, s.wrap("start an upload", err)
	}
	if m.parts, err = s.uploadParts(ctx, m.key, m.uploadID, first, r); err != nil {
		m.Discard()
		return nil, err
	}
	return m, nil
}

// uploadParts sends first, then the rest of r, as the parts of an upload,
// up to partsInFlight at once while the next part is received: at most
// partsInFlight+1 parts in memory.
func (s *Store) uploadParts(ctx context.Context, key, uploadID string, first []byte, r io.Reader) ([]minio.CompletePart, error) {
	var (
		mu    sync.Mutex
		parts []minio.CompletePart
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.partsInFlight)
	free := make(chan []byte, s.partsInFlight+1)
	made := 1
	// The senders only talk to the object store; the data is read here, in
	// the caller's goroutine, so that nothing reads r after Stage returns.
	readErr := func() error {
		data := first
		for number := 1; ; number++ {
			if number > maxParts {
				return fmt.Errorf("content library: the data does not fit in %d parts of %d bytes: %w", maxParts, s.partSize, errdefs.ErrResourceExhausted)
			}
			part := data
			g.Go(func() error {
				p, err := s.core.PutObjectPart(gctx, s.bucket, key, uploadID, number, bytes.NewReader(part), int64(len(part)), minio.PutObjectPartOptions{})
				if err != nil {
					return s.wrap(fmt.Sprintf("send part %d of an upload", number), err)
				}
				mu.Lock()
				parts = append(parts, minio.CompletePart{PartNumber: number, ETag: p.ETag})
				mu.Unlock()
				free <- part[:cap(part)]
				return nil
			})
			var buf []byte
			select {
			case buf = <-free:
			case <-gctx.Done():
				return gctx.Err() // a sender's error, which Wait returns, or ctx's
			default:
				if made <= s.partsInFlight {
					buf, made = make([]byte, s.partSize), made+1
				} else {
					select {
					case buf = <-free:
					case <-gctx.Done():
						return gctx.Err()
					}
				}
			}
			n, err := io.ReadFull(r, buf)
			switch {
			case n == 0 && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
				return nil
			case err != nil && !errors.Is(err, io.ErrUnexpectedEOF):
				return fmt.Errorf("content library: receive data: %w", err)
			}
			data = buf[:n]
		}
	}()
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if readErr != nil {
		return nil, readErr
	}
	slices.SortFunc(parts, func(a, b minio.CompletePart) int { return a.PartNumber - b.PartNumber })
	return parts, nil
}

func randomName() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// memStaged is data of less than one part, held until it is checked.
type memStaged struct {
	s    *Store
	data []byte
}

func (m *memStaged) Publish(ctx context.Context, sha string) error {
	key, err := m.s.key(sha)
	if err != nil {
		return err
	}
	_, err = m.s.client.PutObject(ctx, m.s.bucket, key, bytes.NewReader(m.data), int64(len(m.data)), minio.PutObjectOptions{})
	if err != nil {
		return m.s.wrap("put blob "+sha, err)
	}
	return nil
}

func (m *memStaged) Discard() { m.data = nil }

// multipartStaged is a multipart upload whose parts are all sent, not yet
// completed: S3 shows nothing under its key until then.
type multipartStaged struct {
	s        *Store
	key      string
	uploadID string
	parts    []minio.CompletePart
	// expect is the sha256 the upload goes straight to; "" for a
	// temporary key, copied to the blob's once completed.
	expect    string
	completed bool
}

func (m *multipartStaged) Publish(ctx context.Context, sha string) error {
	if m.expect != "" && sha != m.expect {
		// Completing would show other data under the name of m.expect.
		return fmt.Errorf("content library: the upload to %s holds %s; it is not published: %w", m.expect, sha, errdefs.ErrInternal)
	}
	final, err := m.s.key(sha)
	if err != nil {
		return err
	}
	if _, err := m.s.core.CompleteMultipartUpload(ctx, m.s.bucket, m.key, m.uploadID, m.parts, minio.PutObjectOptions{}); err != nil {
		return m.s.wrap("complete the upload of "+sha, err)
	}
	m.completed = true
	if m.key == final {
		return nil
	}
	// A copy on the store's side: by parts of up to 5 GiB for larger blobs.
	_, err = m.s.client.ComposeObject(ctx,
		minio.CopyDestOptions{Bucket: m.s.bucket, Object: final},
		minio.CopySrcOptions{Bucket: m.s.bucket, Object: m.key})
	if err != nil {
		return m.s.wrap("copy the upload of "+sha+" into place", err)
	}
	return nil
}

// Discard aborts the upload, or removes the temporary object once
// completed; on its own deadline, the write's context may have ended.
func (m *multipartStaged) Discard() {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	var err error
	switch {
	case !m.completed:
		err = m.s.core.AbortMultipartUpload(ctx, m.s.bucket, m.key, m.uploadID)
	case m.expect == "":
		err = m.s.client.RemoveObject(ctx, m.s.bucket, m.key, minio.RemoveObjectOptions{})
	}
	if err != nil {
		m.s.logger.Warn("could not remove an upload; osvc-server removes it once it is a day old", "key", m.key, "error", err)
	}
}

// cleanupTimeout bounds removing what a write left in the store.
const cleanupTimeout = time.Minute

// Open stats the blob; its data is read by ranged requests.
func (s *Store) Open(ctx context.Context, sha string) (content.Blob, error) {
	info, err := s.Stat(ctx, sha)
	if err != nil {
		return nil, err
	}
	key, _ := s.key(sha)
	return &blob{ctx: ctx, s: s, key: key, sha: sha, size: info.SizeBytes}, nil
}

// blob is an open blob of the store.
type blob struct {
	ctx     context.Context
	s       *Store
	key     string
	sha     string
	size    int64
	streams []io.Closer
}

func (b *blob) Size() int64 { return b.size }

// get opens a ranged GET of n > 0 bytes from off.
func (b *blob) get(off, n int64) (*minio.Object, error) {
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(off, off+n-1); err != nil {
		return nil, err
	}
	obj, err := b.s.client.GetObject(b.ctx, b.s.bucket, b.key, opts)
	if err != nil {
		return nil, b.s.wrap("read blob "+b.sha, err)
	}
	return obj, nil
}

func (b *blob) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read blob %s at %d: negative offset", b.sha, off)
	}
	if off >= b.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), b.size-off)
	obj, err := b.get(off, n)
	if err != nil {
		return 0, err
	}
	defer obj.Close()
	read, err := io.ReadFull(obj, p[:n])
	if err != nil {
		return read, b.s.wrap(fmt.Sprintf("read blob %s at %d", b.sha, off), err)
	}
	if read < len(p) {
		return read, io.EOF
	}
	return read, nil
}

func (b *blob) Stream(off, n int64) (io.Reader, error) {
	if off < 0 || n < 0 || off+n > b.size {
		return nil, fmt.Errorf("read blob %s: %d bytes at %d are not within its %d: %w", b.sha, n, off, b.size, errdefs.ErrOutOfRange)
	}
	if n == 0 {
		return bytes.NewReader(nil), nil
	}
	obj, err := b.get(off, n)
	if err != nil {
		return nil, err
	}
	b.streams = append(b.streams, obj)
	return &errReader{r: obj, wrap: func(err error) error { return b.s.wrap("read blob "+b.sha, err) }}, nil
}

func (b *blob) Close() error {
	for _, c := range b.streams {
		c.Close()
	}
	b.streams = nil
	return nil
}

// errReader wraps the errors of r but io.EOF.
type errReader struct {
	r    io.Reader
	wrap func(error) error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = e.wrap(err)
	}
	return n, err
}

func (s *Store) Stat(ctx context.Context, sha string) (content.BlobInfo, error) {
	key, err := s.key(sha)
	if err != nil {
		return content.BlobInfo{}, err
	}
	info, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return content.BlobInfo{}, s.wrap("blob "+sha, err)
	}
	return content.BlobInfo{SHA256: sha, SizeBytes: info.Size, ModTime: info.LastModified}, nil
}

// Touch copies the object onto itself with a new metadata value, which
// S3 requires of a copy to the same key, so its last modification becomes
// now. Objects of more than 5 GiB cannot be copied in one request: Touch
// is for chunks.
func (s *Store) Touch(ctx context.Context, sha string) error {
	key, err := s.key(sha)
	if err != nil {
		return err
	}
	_, err = s.client.CopyObject(ctx,
		minio.CopyDestOptions{Bucket: s.bucket, Object: key, ReplaceMetadata: true,
			UserMetadata: map[string]string{"Osvc-Touched": time.Now().UTC().Format(time.RFC3339Nano)}},
		minio.CopySrcOptions{Bucket: s.bucket, Object: key})
	if err != nil {
		return s.wrap("touch blob "+sha, err)
	}
	return nil
}

func (s *Store) Delete(ctx context.Context, sha string) error {
	key, err := s.key(sha)
	if err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(s.wrap("", err), errdefs.ErrNotFound) {
			return nil
		}
		return s.wrap("remove blob "+sha, err)
	}
	return nil
}

// List lists the blobs folder; a key there that is not a sha256 is no blob.
func (s *Store) List(ctx context.Context, fn func(content.BlobInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the listing when fn stops it
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + blobsFolder, Recursive: true}) {
		if obj.Err != nil {
			return s.wrap("list the blobs", obj.Err)
		}
		sha := strings.TrimPrefix(obj.Key, s.prefix+blobsFolder)
		if !transfer.ValidSHA256(sha) {
			continue
		}
		if err := fn(content.BlobInfo{SHA256: sha, SizeBytes: obj.Size, ModTime: obj.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// RemoveStale removes temporary objects and uploads never completed, once
// older than age.
func (s *Store) RemoveStale(ctx context.Context, age time.Duration) int {
	removed := 0
	before := time.Now().Add(-age)
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + tmpFolder, Recursive: true}) {
		if obj.Err != nil {
			s.logger.Warn("could not list the temporary objects", "error", obj.Err)
			break
		}
		if obj.LastModified.Before(before) {
			if err := s.client.RemoveObject(ctx, s.bucket, obj.Key, minio.RemoveObjectOptions{}); err == nil {
				s.logger.Info("removed a stale upload", "key", obj.Key)
				removed++
			}
		}
	}
	for up := range s.client.ListIncompleteUploads(ctx, s.bucket, s.prefix, true) {
		if up.Err != nil {
			s.logger.Warn("could not list the uploads in progress", "error", up.Err)
			break
		}
		if up.Initiated.Before(before) {
			if err := s.core.AbortMultipartUpload(ctx, s.bucket, up.Key, up.UploadID); err == nil {
				s.logger.Info("aborted a stale upload", "key", up.Key, "initiated", up.Initiated)
				removed++
			}
		}
	}
	return removed
}
