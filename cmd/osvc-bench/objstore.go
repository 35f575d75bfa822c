package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/content/s3store"
	"github.com/osvc/osvc/server/content/s3store/s3test"
	"github.com/osvc/osvc/server/store"
)

// objstoreBucket is the bucket both sides of the objstore benchmark use.
const objstoreBucket = "bench"

// benchObjstore measures the content library on an object store: a blob of
// -n MiB written (Library.Write: hashed, checked, uploaded in parts to a
// temporary key and copied to its name, recorded in etcd) then read back
// whole (Library.Open and one stream), against its floor, the bare S3
// client (minio-go PutObject and GetObject, with the same part size) putting
// and getting the same bytes on the same server in the same run: versitygw
// on loopback, serving a folder of this machine. Rounds alternate the sides;
// each write is of bytes the library does not hold yet. Extras: the write
// and the read apart, each against its own floor, and the write of a blob
// whose sha256 the writer announces (uploaded straight to its name, no copy).
func benchObjstore(ctx context.Context, cfg benchConfig) (*Result, error) {
	dir, err := os.MkdirTemp("", "osvc-bench-objstore-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	e, err := startBenchEtcd(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer e.close()
	s3, err := s3test.Start(ctx, dir, s3test.Options{})
	if err != nil {
		return nil, err
	}
	defer s3.Close()
	if err := s3.MakeBucket(ctx, objstoreBucket); err != nil {
		return nil, fmt.Errorf("make the bucket: %w", err)
	}
	scfg, err := s3.StoreConfig(dir, objstoreBucket)
	if err != nil {
		return nil, err
	}
	scfg.Logger = cfg.Logger
	blobs, err := s3store.New(ctx, scfg)
	if err != nil {
		return nil, err
	}
	st, err := store.New(store.Config{Client: e.client, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	lib, err := content.New(content.Config{Dir: dir, Blobs: blobs, Store: st, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}

	size := int64(cfg.N) << 20
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{'o', 's', 'v', 'c'})
	rng.Read(data)
	mib := float64(size) / (1 << 20)
	rate := func(d time.Duration) float64 { return mib / d.Seconds() }
	both := func(w, r time.Duration) float64 { return 2 * mib / (w + r).Seconds() }

	var osvcBoth, floorBoth, osvcWrite, floorWrite, osvcRead, floorRead, namedWrite []float64
	for round := range throughputRounds {
		rawW, rawR, err := rawPutGet(ctx, s3.Client(), fmt.Sprintf("raw/%d", round), data)
		if err != nil {
			return nil, err
		}
		// A new blob each time: the library never finds it held.
		binary.LittleEndian.PutUint64(data, uint64(2*round))
		libW, libR, err := libraryWriteRead(ctx, lib, data, false)
		if err != nil {
			return nil, err
		}
		binary.LittleEndian.PutUint64(data, uint64(2*round+1))
		namedW, _, err := libraryWriteRead(ctx, lib, data, true)
		if err != nil {
			return nil, err
		}
		floorBoth, floorWrite, floorRead = append(floorBoth, both(rawW, rawR)), append(floorWrite, rate(rawW)), append(floorRead, rate(rawR))
		osvcBoth, osvcWrite, osvcRead = append(osvcBoth, both(libW, libR)), append(osvcWrite, rate(libW)), append(osvcRead, rate(libR))
		namedWrite = append(namedWrite, rate(namedW))
		fmt.Fprintf(cfg.Out, "objstore %d/%d: %d MiB: raw put %s, get %s; library write %s, read %s; write named by its sha256 %s\n",
			round+1, throughputRounds, cfg.N, rawW.Round(time.Millisecond), rawR.Round(time.Millisecond),
			libW.Round(time.Millisecond), libR.Round(time.Millisecond), namedW.Round(time.Millisecond))
	}
	fig := func(name string, samples []float64) Figure {
		return Figure{Name: name, Unit: "MiB/s", Value: median(samples), Samples: samples}
	}
	res := &Result{
		Osvc:  fig("library write+read", osvcBoth),
		Floor: fig("raw S3 put+get", floorBoth),
	}
	for _, x := range []struct {
		name, floorName string
		osvc, floor     []float64
	}{
		{"library write", "raw put", osvcWrite, floorWrite},
		{"library read", "raw get", osvcRead, floorRead},
		{"library write named by its sha256", "raw put", namedWrite, floorWrite},
	} {
		f := fig(x.name, x.osvc)
		f.Ratio = f.Value / median(x.floor)
		res.Extra = append(res.Extra, f)
		fmt.Fprintf(cfg.Out, "objstore: %s %.3g MiB/s, %s %.3g MiB/s\n", x.name, f.Value, x.floorName, median(x.floor))
	}
	return res, nil
}

// rawPutGet puts data under key with the bare client, then gets it whole.
func rawPutGet(ctx context.Context, client *minio.Client, key string, data []byte) (put, get time.Duration, err error) {
	start := time.Now()
	_, err = client.PutObject(ctx, objstoreBucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{PartSize: s3store.DefaultPartSize})
	if err != nil {
		return 0, 0, fmt.Errorf("raw put: %w", err)
	}
	put = time.Since(start)
	start = time.Now()
	obj, err := client.GetObject(ctx, objstoreBucket, key, minio.GetObjectOptions{})
	if err != nil {
		return 0, 0, fmt.Errorf("raw get: %w", err)
	}
	defer obj.Close()
	n, err := io.Copy(io.Discard, obj)
	if err != nil || n != int64(len(data)) {
		return 0, 0, fmt.Errorf("raw get: %d of %d bytes: %v", n, len(data), err)
	}
	return put, time.Since(start), nil
}

// libraryWriteRead writes data to the library, its sha256 in the header
// when named, then reads it back whole as ContentService.Read does.
func libraryWriteRead(ctx context.Context, lib *content.Library, data []byte, named bool) (write, read time.Duration, err error) {
	h := content.WriteHeader{SizeBytes: int64(len(data))}
	if named {
		sum := sha256.Sum256(data)
		h.SHA256 = hex.EncodeToString(sum[:])
	}
	start := time.Now()
	c, existed, err := lib.Write(ctx, h, bytes.NewReader(data))
	if err != nil || existed {
		return 0, 0, fmt.Errorf("library write (existed %v): %w", existed, err)
	}
	write = time.Since(start)
	start = time.Now()
	blob, err := lib.Open(ctx, c.GetSha256())
	if err != nil {
		return 0, 0, fmt.Errorf("library open: %w", err)
	}
	defer blob.Close()
	r, err := blob.Stream(0, blob.Size())
	if err != nil {
		return 0, 0, fmt.Errorf("library read: %w", err)
	}
	n, err := io.Copy(io.Discard, r)
	if err != nil || n != int64(len(data)) {
		return 0, 0, fmt.Errorf("library read: %d of %d bytes: %v", n, len(data), err)
	}
	return write, time.Since(start), nil
}
