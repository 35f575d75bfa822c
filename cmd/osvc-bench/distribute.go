package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"golang.org/x/time/rate"

	"github.com/osvc/osvc/agent/cache"
	"github.com/osvc/osvc/agent/dp"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/chunks"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/pkg/transfer/transfertest"
)

// defaultUpdateFileMiB is the payload of each file the distribute
// benchmark's updates carry, and of each of the image's component files
// they replace: a large real system binary (ntoskrnl.exe, shell32.dll) is
// a few MiB, so the update rewrites a share of the image closer to a
// monthly update's than the sample's default (1/32 of the image's file
// data per file, replacing components that hold 60% of it) would.
const defaultUpdateFileMiB = 4

// benchDistribute measures what a new version of an image costs to move to
// a receiver that holds the previous one. The rig's sample image (-n MiB
// of file data, its updates carrying files of -update-file-mib each) is
// serviced for real (every applicable update, remove superseded, export:
// the wimlib engine's sequence) into version 2; a fresh distribution point
// (an agent's dp.Point, its store the agent's cache code), over the
// network (no file of the library's volume taken), is sent version 1,
// which it fetches whole, then version 2, which it fetches as the chunks
// version 1 lacks, timed until it reports version 2 DISTRIBUTED. Figures:
//   - bytes: what crossed the connection for version 2 ÷ its size,
//     against the floor (version 2's resources version 1 lacks, what the
//     update rewrote);
//   - (a) the transfer: the bytes sent ÷ the time the reads that sent them
//     took (from the first one's start to the last message received),
//     against a bare gRPC stream over TLS (one Read, in the same 1 MiB
//     messages, received and dropped) of as many bytes in the same run;
//     and end to end, the bytes sent ÷ the whole fetch's time, against the
//     same. Both on loopback and over a throttled site link, where a
//     distribution point sits: there, end to end, is the Result's ratio;
//   - (b) version 2's size ÷ the fetch's time against a bare stream of all
//     of version 2: how much sooner version 2 is in place than were it
//     sent whole;
//   - (c) the fetch's own floor ÷ its time: the longer of the bare stream
//     of the bytes sent and of hashing version 2 whole, which a receiver
//     does whatever it is sent.
//
// Extras: the bytes ratio for the two versions exported solid (LZMS), as an
// administrator's own export might make them, and at other average chunk
// sizes, measured by cutting the two files here.
func benchDistribute(ctx context.Context, cfg benchConfig) (*Result, error) {
	r, err := startRig(ctx, cfg, int64(cfg.N)<<20, int64(cfg.UpdateFileMiB)<<20)
	if err != nil {
		return nil, err
	}
	defer r.close()
	serviced, err := r.service(ctx, 0, true)
	if err != nil {
		return nil, err
	}
	v1, v2 := r.wim.GetSha256(), serviced.run.GetResultSha256()
	v2Size := serviced.run.GetResultSizeBytes()
	fmt.Fprintf(cfg.Out, "distribute: version 1 %s, serviced into version 2 %s\n",
		humanize.IBytes(uint64(r.wim.GetSizeBytes())), humanize.IBytes(uint64(v2Size)))

	wire := &transfertest.WireCounter{}
	conn, err := r.srv.dial(append(transfer.DialOptions(), grpc.WithStatsHandler(wire))...)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	reports := make(chan *osvcv1.DistributionReport, 16)
	point, err := dp.New(dp.Config{
		Dir: filepath.Join(r.dir, "receiver"), Source: transfertest.OverNetwork{C: osvcv1.NewContentServiceClient(conn)}, Logger: cfg.Logger,
		ProgressEvery: time.Hour,
		Report: func(_ context.Context, m *osvcv1.DistributionReport) error {
			if m.GetState() != osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING {
				reports <- m
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	defer point.Close()
	// The point keeps version 1 as one image's and is sent version 2 as
	// another's, withdrawn between rounds.
	versions := map[string]*osvcv1.Distribute{
		v1: {Image: "images/bench-v1", Version: 1, Sha256: v1, SizeBytes: r.wim.GetSizeBytes()},
		v2: {Image: "images/bench", Version: 2, Sha256: v2, SizeBytes: v2Size},
	}
	// distribute sends the point a version and waits for it to be in place.
	distribute := func(sha string) error {
		point.Distribute(ctx, versions[sha])
		select {
		case m := <-reports:
			if m.GetState() != osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED {
				return fmt.Errorf("distribute version %d: %s: %s", m.GetVersion(), m.GetState(), m.GetError())
			}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := distribute(v1); err != nil {
		return nil, err
	}

	floor, stopFloor, err := startBareStream(ctx, r.dir)
	if err != nil {
		return nil, err
	}
	defer stopFloor()

	mib := func(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }
	var sent, osvcRate, floorRate, endToEnd, whole, own []float64
	profile, err := startProfile(cfg.CPUProfile)
	if err != nil {
		return nil, err
	}
	defer profile.stop()
	for round := range throughputRounds {
		// The point holds version 1 (and its chunk index), not version 2.
		point.Withdraw(versions[v2].GetImage())
		syncDisks()
		wire.Reset()
		profile.resume()
		start := time.Now()
		if err := distribute(v2); err != nil {
			return nil, err
		}
		elapsed := time.Since(start)
		profile.pause()
		n, span := wire.N.Load(), wire.ReadSpan()
		if span == 0 {
			return nil, errors.New("distribute: version 2 was fetched without a read of the server's")
		}
		bare, err := floor.stream(ctx, n)
		if err != nil {
			return nil, err
		}
		bareWhole, err := floor.stream(ctx, v2Size)
		if err != nil {
			return nil, err
		}
		hashing, err := hashTime(ctx, point.Path(dp.Served{SHA256: v2}))
		if err != nil {
			return nil, err
		}
		sent = append(sent, float64(n)/float64(v2Size))
		osvcRate, floorRate = append(osvcRate, mib(n, span)), append(floorRate, mib(n, bare))
		endToEnd = append(endToEnd, bare.Seconds()/elapsed.Seconds())
		whole = append(whole, bareWhole.Seconds()/elapsed.Seconds())
		own = append(own, max(bare, hashing).Seconds()/elapsed.Seconds())
		fmt.Fprintf(cfg.Out, "distribute %d/%d: version 2 fetched in %s, %s over the connection (%.3g of its size), its reads took %s; "+
			"a bare stream of as many bytes %s: (a) the transfer %.3g MiB/s against %.3g MiB/s: %.3g, end to end %.3g; "+
			"(b) %.3g MiB/s of version 2 in place, a bare stream of all of it %s: %.3g; "+
			"(c) hashing version 2 whole takes %s: the fetch takes %.3g× its own floor\n",
			round+1, throughputRounds, elapsed.Round(time.Millisecond), humanize.IBytes(uint64(n)), float64(n)/float64(v2Size), span.Round(time.Millisecond),
			bare.Round(time.Millisecond), mib(n, span), mib(n, bare), osvcRate[len(osvcRate)-1]/floorRate[len(floorRate)-1], endToEnd[len(endToEnd)-1],
			mib(v2Size, elapsed), bareWhole.Round(time.Millisecond), whole[len(whole)-1],
			hashing.Round(time.Millisecond), 1/own[len(own)-1])
	}
	// What the update rewrote: version 2's resources version 1 lacks,
	// whatever the chunking, the floor of the bytes to send.
	v1Path, v2Path := point.Path(dp.Served{SHA256: v1}), point.Path(dp.Served{SHA256: v2})
	rewritten, err := newResources(ctx, v1Path, v2Path)
	if err != nil {
		return nil, err
	}
	updateFile := "the sample's default"
	if cfg.UpdateFileMiB > 0 {
		updateFile = fmt.Sprintf("%d MiB", cfg.UpdateFileMiB)
	}
	fmt.Fprintf(cfg.Out, "distribute: the update (files of %s each) rewrote %s of version 2's %s: %.3g of it is resources version 1 lacks, the floor of the bytes sent\n",
		updateFile, humanize.IBytes(uint64(rewritten*float64(v2Size))), humanize.IBytes(uint64(v2Size)), rewritten)

	// The same over a site link, where a distribution point sits: both
	// sides read through a connection throttled to siteLinkBytes a second.
	link, err := overSiteLink(ctx, cfg, r, v1Path, v1, v2, floor)
	if err != nil {
		return nil, err
	}
	linkRate := humanize.IBytes(siteLinkBytes)
	res := &Result{
		Osvc: Figure{Name: fmt.Sprintf("(a) over a %s/s site link, end to end: the delta fetch's bytes sent ÷ its whole time", linkRate),
			Unit: "MiB/s", Value: median(link.rate), Samples: link.rate},
		Floor:      Figure{Name: "a bare gRPC stream of as many bytes over the same link", Unit: "MiB/s", Value: median(link.bare), Samples: link.bare},
		ImageBytes: v2Size,
	}
	ratio := func(name string, samples ...float64) Figure {
		return Figure{Name: name, Unit: "ratio", Value: median(samples), Samples: samples, Ratio: median(samples)}
	}
	loopbackTransfer := make([]float64, len(osvcRate))
	for i := range osvcRate {
		loopbackTransfer[i] = osvcRate[i] / floorRate[i]
	}
	res.Extra = append(res.Extra, ratio("bytes sent for version 2 ÷ its size", sent...),
		ratio("the floor: version 2's resources version 1 lacks ÷ its size", rewritten),
		ratio(fmt.Sprintf("(a) over a %s/s site link, the transfer: bytes sent ÷ the time its reads took, against a bare gRPC stream of as many bytes", linkRate), link.transfer...),
		ratio("(a) on loopback, the transfer: bytes sent ÷ the time its reads took, against a bare gRPC stream of as many bytes", loopbackTransfer...),
		ratio("(a) on loopback, end to end: bytes sent ÷ the delta fetch's whole time, against a bare gRPC stream of as many bytes", endToEnd...),
		ratio("(b) on loopback, version 2 in place: its size ÷ the delta fetch's time, against a bare gRPC stream of all of version 2", whole...),
		ratio("(c) on loopback, the delta fetch's own floor (the longer of the bare stream of the bytes sent and of hashing version 2 whole, which every receiver does) ÷ its time", own...))

	// What the same update would cost with other settings, cut here.
	other, err := otherSettings(ctx, cfg, r.dir, v1Path, v2Path)
	if err != nil {
		return nil, err
	}
	for _, o := range other {
		res.Extra = append(res.Extra, ratio(o.name, o.ratio))
	}
	return res, nil
}

// acquire fetches sha into the cache and releases it.
func acquire(ctx context.Context, c *cache.Cache, sha string) error {
	_, release, err := c.Acquire(ctx, sha, nil)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", sha, err)
	}
	release()
	return nil
}

// siteLinkBytes is the rate of the site link the distribute benchmark
// also fetches over: 1 Gbit/s.
const siteLinkBytes = 1e9 / 8

// overSiteLink fetches version 2 into a fresh cache holding version 1 (a
// copy of the file at v1Path) over a connection whose reads are throttled
// to siteLinkBytes a second, and streams as many bytes bare over a
// connection throttled alike. On such a link the receiver's hashing and
// writing hide behind the transfer.
func overSiteLink(ctx context.Context, cfg benchConfig, r *rig, v1Path, v1, v2 string, floor *bareStream) (linkFigures, error) {
	dir := filepath.Join(r.dir, "receiver-site-link")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return linkFigures{}, err
	}
	for _, suffix := range []string{"", cache.IndexSuffix} {
		if _, err := transfer.CopyLocal(ctx, v1Path+suffix, filepath.Join(dir, v1+suffix), transfer.Writable); err != nil {
			return linkFigures{}, err
		}
	}
	wire := &transfertest.WireCounter{}
	conn, err := r.srv.dial(append(transfer.DialOptions(), grpc.WithStatsHandler(wire), throttled(siteLinkBytes))...)
	if err != nil {
		return linkFigures{}, err
	}
	defer conn.Close()
	c, err := cache.New(cache.Config{Dir: dir, Source: transfertest.OverNetwork{C: osvcv1.NewContentServiceClient(conn)}, Logger: cfg.Logger})
	if err != nil {
		return linkFigures{}, err
	}
	defer c.Close()
	bare, stopBare, err := floor.dial(throttled(siteLinkBytes))
	if err != nil {
		return linkFigures{}, err
	}
	defer stopBare()
	var out linkFigures
	mib := func(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }
	for round := range throughputRounds {
		for _, p := range []string{c.Path(v2), c.Path(v2) + cache.IndexSuffix} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return linkFigures{}, err
			}
		}
		syncDisks()
		wire.Reset()
		start := time.Now()
		if err := acquire(ctx, c, v2); err != nil {
			return linkFigures{}, err
		}
		elapsed := time.Since(start)
		n, span := wire.N.Load(), wire.ReadSpan()
		if span == 0 {
			return linkFigures{}, errors.New("distribute over a site link: version 2 was fetched without a read of the server's")
		}
		bareTime, err := bare.stream(ctx, n)
		if err != nil {
			return linkFigures{}, err
		}
		out.rate, out.bare = append(out.rate, mib(n, elapsed)), append(out.bare, mib(n, bareTime))
		out.transfer = append(out.transfer, bareTime.Seconds()/span.Seconds())
		fmt.Fprintf(cfg.Out, "distribute over a %s/s link %d/%d: version 2 fetched in %s, %s over the connection, its reads took %s; the bare stream of as many bytes %s: (a) the transfer %.3g, end to end %.3g\n",
			humanize.IBytes(siteLinkBytes), round+1, throughputRounds, elapsed.Round(time.Millisecond), humanize.IBytes(uint64(n)), span.Round(time.Millisecond),
			bareTime.Round(time.Millisecond), bareTime.Seconds()/span.Seconds(), bareTime.Seconds()/elapsed.Seconds())
	}
	return out, nil
}

// linkFigures are the samples of the fetches over a site link: the bytes
// sent ÷ each fetch's whole time and a bare stream's of as many bytes
// (MiB/s), and the transfer's ratio (the reads' span against the bare
// stream).
type linkFigures struct {
	rate, bare, transfer []float64
}

// hashTime is how long hashing the file at path whole takes (sha256, as a
// receiver checks what it fetched).
func hashTime(ctx context.Context, path string) (time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	start := time.Now()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, transfer.ChunkSize)); err != nil {
		return 0, err
	}
	return time.Since(start), ctx.Err()
}

// throttled makes a connection's reads take at most perSecond bytes a
// second, as the far end of a link of that rate would receive them.
func throttled(perSecond float64) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return &slowConn{Conn: conn, lim: rate.NewLimiter(rate.Limit(perSecond), 256<<10)}, nil
	})
}

// slowConn is a connection whose reads wait for a rate limiter.
type slowConn struct {
	net.Conn
	lim *rate.Limiter
}

func (c *slowConn) Read(p []byte) (int, error) {
	p = p[:min(len(p), c.lim.Burst())]
	n, err := c.Conn.Read(p)
	if n > 0 {
		if werr := c.lim.WaitN(context.Background(), n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

// bareStream is a gRPC server over TLS whose Read sends as many bytes as
// asked, in 1 MiB messages, from memory: the floor of a download.
type bareStream struct {
	osvcv1.UnimplementedContentServiceServer
	client osvcv1.ContentServiceClient
	data   []byte
	target target
}

// dial returns a bare stream client over a connection of its own.
func (b *bareStream) dial(opts ...grpc.DialOption) (*bareStream, func(), error) {
	conn, err := b.target.dial(append(transfer.DialOptions(), opts...)...)
	if err != nil {
		return nil, nil, err
	}
	return &bareStream{client: osvcv1.NewContentServiceClient(conn)}, func() { conn.Close() }, nil
}

func (b *bareStream) Read(req *osvcv1.ReadRequest, stream grpc.ServerStreamingServer[osvcv1.ReadResponse]) error {
	for off := int64(0); off < req.GetLimit(); off += transfer.ChunkSize {
		n := min(transfer.ChunkSize, req.GetLimit()-off)
		if err := stream.Send(&osvcv1.ReadResponse{Offset: off, Data: b.data[:n]}); err != nil {
			return err
		}
	}
	return nil
}

// stream receives n bytes from the bare server and returns how long it took.
func (b *bareStream) stream(ctx context.Context, n int64) (time.Duration, error) {
	start := time.Now()
	s, err := b.client.Read(ctx, &osvcv1.ReadRequest{Limit: n})
	if err != nil {
		return 0, err
	}
	var got int64
	for {
		resp, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("bare stream: %w", err)
		}
		got += int64(len(resp.GetData()))
	}
	if got != n {
		return 0, fmt.Errorf("bare stream: %d of %d bytes", got, n)
	}
	return time.Since(start), nil
}

// startBareStream serves a bareStream on loopback with a certificate of an
// authority of its own, under dir.
func startBareStream(ctx context.Context, dir string) (*bareStream, func(), error) {
	pkiDir := filepath.Join(dir, "bare-pki")
	ca, _, err := pki.EnsureCA(pkiDir, time.Now())
	if err != nil {
		return nil, nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	addr := lis.Addr().String()
	cert, err := ca.ServerCertificate(pki.ServerHosts(addr, nil), time.Now())
	if err != nil {
		lis.Close()
		return nil, nil, err
	}
	b := &bareStream{data: bytes.Repeat([]byte{0x5a}, transfer.ChunkSize)}
	gs := grpc.NewServer(append(transfer.ServerOptions(), grpc.Creds(credentials.NewTLS(pki.ServerConfig(cert))))...)
	osvcv1.RegisterContentServiceServer(gs, b)
	var wg sync.WaitGroup
	wg.Go(func() { _ = gs.Serve(lis) })
	t := target{addr: addr, caFile: filepath.Join(pkiDir, pki.CACertFile)}
	conn, err := t.dial(transfer.DialOptions()...)
	if err != nil {
		gs.Stop()
		wg.Wait()
		return nil, nil, err
	}
	b.client, b.target = osvcv1.NewContentServiceClient(conn), t
	return b, func() {
		conn.Close()
		gs.Stop()
		wg.Wait()
	}, nil
}

// setting is the bytes ratio of another setting.
type setting struct {
	name  string
	ratio float64
}

// otherSettings cuts the two versions at other average chunk sizes, and
// exports both solid and cuts those, and tells what version 2 would cost.
func otherSettings(ctx context.Context, cfg benchConfig, dir, v1, v2 string) ([]setting, error) {
	var out []setting
	lacking := func(a, b string, sizes chunks.Sizes) (float64, int, error) {
		var lists [2][]chunks.Chunk
		var size int64
		for i, p := range []string{a, b} {
			f, err := os.Open(p)
			if err != nil {
				return 0, 0, err
			}
			lists[i], err = chunks.OfSizes(ctx, f, sizes)
			f.Close()
			if err != nil {
				return 0, 0, err
			}
		}
		for _, c := range lists[1] {
			size += c.Size
		}
		return float64(chunks.Lacking(lists[1], lists[0])) / float64(size), len(lists[1]), nil
	}
	for _, avg := range []int{256 << 10, 512 << 10, chunks.AverageSize, 2 << 20, 4 << 20} {
		sizes := chunks.Sizes{Min: avg / 4, Average: avg, Max: avg * 4}
		r, n, err := lacking(v1, v2, sizes)
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("bytes to send at %s average chunks (%d chunks, an index of %s)", humanize.IBytes(uint64(avg)), n, humanize.IBytes(uint64(n*40)))
		out = append(out, setting{name, r})
		fmt.Fprintf(cfg.Out, "distribute: %s: %.3g of version 2\n", name, r)
	}
	var solid [2]string
	for i, src := range []string{v1, v2} {
		solid[i] = filepath.Join(dir, fmt.Sprintf("solid-%d.wim", i+1))
		cmd := exec.CommandContext(ctx, "wimlib-imagex", "export", src, "1", solid[i], "--solid")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("wimlib-imagex export --solid: %w: %s", err, out)
		}
	}
	r, _, err := lacking(solid[0], solid[1], chunks.Sizes{Min: chunks.MinSize, Average: chunks.AverageSize, Max: chunks.MaxSize})
	if err != nil {
		return nil, err
	}
	out = append(out, setting{"bytes to send, both versions exported solid (LZMS)", r})
	fmt.Fprintf(cfg.Out, "distribute: both versions exported --solid: %.3g of version 2 to send\n", r)
	return out, nil
}

// newResources is the share of the WIM v2's bytes in resources (file data
// and metadata, as stored: compressed or not) that the WIM v1 lacks, by
// their SHA-1 as wimlib-imagex info --blobs lists them.
func newResources(ctx context.Context, v1, v2 string) (float64, error) {
	var lists [2]map[string]int64
	for i, p := range []string{v1, v2} {
		out, err := exec.CommandContext(ctx, "wimlib-imagex", "info", p, "--blobs").Output()
		if err != nil {
			return 0, fmt.Errorf("wimlib-imagex info --blobs %s: %w", p, err)
		}
		lists[i] = make(map[string]int64)
		var hash string
		for line := range strings.Lines(string(out)) {
			key, value, ok := strings.Cut(line, "=")
			if !ok {
				continue
			}
			value = strings.TrimSpace(value)
			switch strings.TrimSpace(key) {
			case "Hash":
				hash = value
			case "Compressed size":
				n, err := strconv.ParseInt(strings.TrimSuffix(value, " bytes"), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("wimlib-imagex info --blobs %s: %q: %w", p, line, err)
				}
				lists[i][hash] = n
			}
		}
	}
	info, err := os.Stat(v2)
	if err != nil {
		return 0, err
	}
	var n int64
	for hash, size := range lists[1] {
		if _, ok := lists[0][hash]; !ok {
			n += size
		}
	}
	return float64(n) / float64(info.Size()), nil
}
