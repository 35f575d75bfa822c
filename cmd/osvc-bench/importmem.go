package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf16"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
)

const (
	// importMemoryRounds is how many fresh servers the import-memory
	// benchmark measures; the medians are reported.
	importMemoryRounds = 3
	// idleSettle lets a fresh server finish its start-up work (etcd's first
	// snapshot, the scheduler's first pass) before its idle RSS is read.
	idleSettle = 2 * time.Second
	// importTimeout bounds one import call, waiting for its turn included.
	importTimeout = 5 * time.Minute
	// serverStopTimeout bounds the server's graceful stop on SIGTERM.
	serverStopTimeout = 30 * time.Second
)

// benchImportMemory measures what concurrent imports of hostile WIMs cost a
// real osvc-server process: its idle RSS (the floor), then the peak RSS
// (VmHWM, reset once the WIMs are uploaded) while -n imports run at once, each of
// a WIM whose XML info declares -xml-bytes (the server's cap by default)
// filled with deeply nested elements, one huge element text, a flood of
// images or of attributes. An import may be refused as invalid (what a
// hostile WIM should get) or accepted; any other error fails the benchmark.
// The ratio is peak ÷ idle.
func benchImportMemory(ctx context.Context, cfg benchConfig) (*Result, error) {
	bin, cleanup, err := serverBinary(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	wimDir, err := os.MkdirTemp("", "osvc-bench-wims-*")
	if err != nil {
		return nil, fmt.Errorf("WIM directory: %w", err)
	}
	defer os.RemoveAll(wimDir)
	wims, err := writeHostileWIMs(wimDir, cfg.XMLBytes)
	if err != nil {
		return nil, err
	}

	idle := Figure{Name: "idle RSS", Unit: "MB"}
	peak := Figure{Name: fmt.Sprintf("peak RSS during %d concurrent hostile imports", cfg.N), Unit: "MB"}
	for round := range importMemoryRounds {
		idleMB, peakMB, err := importMemoryRound(ctx, cfg, bin, wims, round)
		if err != nil {
			return nil, err
		}
		idle.Samples = append(idle.Samples, idleMB)
		peak.Samples = append(peak.Samples, peakMB)
		fmt.Fprintf(cfg.Out, "import-memory %d/%d: idle %.0f MB, peak %.0f MB\n", round+1, importMemoryRounds, idleMB, peakMB)
	}
	idle.Value, peak.Value = median(idle.Samples), median(peak.Samples)
	return &Result{Osvc: peak, Floor: idle}, nil
}

// importMemoryRound starts a server, reads its idle RSS, resets its peak,
// runs the imports and reads the peak.
func importMemoryRound(ctx context.Context, cfg benchConfig, bin string, wims []string, round int) (idleMB, peakMB float64, err error) {
	dataDir, err := os.MkdirTemp("", "osvc-bench-server-*")
	if err != nil {
		return 0, 0, fmt.Errorf("server data directory: %w", err)
	}
	defer os.RemoveAll(dataDir)
	addr, err := loopbackAddr()
	if err != nil {
		return 0, 0, err
	}
	cmd := exec.Command(bin, "--data-dir", dataDir, "--listen", addr, "--log-level", cfg.LogLevel)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, 0, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer stopServer(cmd, exited)

	startCtx, cancel := context.WithTimeout(ctx, startupTimeout)
	defer cancel()
	srv := target{addr: addr, caFile: filepath.Join(dataDir, "pki", pki.CACertFile), tokenFile: filepath.Join(dataDir, "admin.token")}
	if err := waitServing(startCtx, target{addr: srv.addr, caFile: srv.caFile}); err != nil {
		return 0, 0, err
	}
	select {
	case err := <-exited:
		return 0, 0, fmt.Errorf("osvc-server exited: %v", err)
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	case <-time.After(idleSettle):
	}
	pid := cmd.Process.Pid
	idleKB, err := procStatusKB(pid, "VmRSS")
	if err != nil {
		return 0, 0, err
	}

	conn, err := srv.dial(transfer.DialOptions()...)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	shas := make([]string, len(wims))
	for i, wim := range wims {
		c, err := transfer.Upload(ctx, osvcv1.NewContentServiceClient(conn), wim, "application/x-ms-wim", nil)
		if err != nil {
			return 0, 0, fmt.Errorf("upload %s: %w", wim, err)
		}
		shas[i] = c.GetSha256()
	}
	if err := createSite(ctx, conn, "PS1"); err != nil {
		return 0, 0, err
	}
	// The peak from here on is the imports', not the start-up's or the uploads'.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return 0, 0, fmt.Errorf("reset the server's peak RSS: %w", err)
	}
	images := osvcv1.NewImageServiceClient(conn)
	var wg sync.WaitGroup
	errs := make([]error, cfg.N)
	for i := range cfg.N {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, importTimeout)
			defer cancel()
			_, err := images.ImportImage(ctx, &osvcv1.ImportImageRequest{
				ImageId:       fmt.Sprintf("hostile-%d-%d", round, i),
				Site:          "PS1",
				ContentSha256: shas[i%len(shas)],
			})
			// A refusal as invalid is what a hostile WIM should get; any
			// other error (a crash, a timeout) spoils the measurement.
			if err = errdefs.ToNative(err); err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				errs[i] = fmt.Errorf("import of %s: %w", filepath.Base(wims[i%len(wims)]), err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, 0, err
	}
	peakKB, err := procStatusKB(pid, "VmHWM")
	if err != nil {
		return 0, 0, err
	}
	return float64(idleKB) / 1024, float64(peakKB) / 1024, nil
}

// stopServer sends SIGTERM and waits, killing the server after a deadline.
func stopServer(cmd *exec.Cmd, exited <-chan error) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(serverStopTimeout):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// loopbackAddr returns a loopback address with a port the OS just handed out.
func loopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("pick a port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// procStatusKB reads a "Name:  123 kB" line of /proc/<pid>/status.
func procStatusKB(pid int, name string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read the server's memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		value, ok := strings.CutPrefix(sc.Text(), name+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/status %s %q: %w", pid, name, value, err)
		}
		return kb, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read /proc/%d/status: %w", pid, err)
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s line", pid, name)
}

// hostileShape fills a WIM's XML info: the text before the filler, the unit
// repeated until the XML reaches its declared size, the text after it, and
// the image count the header claims for n units.
type hostileShape struct {
	name                 string
	prefix, unit, suffix string
	images               func(units int) uint32
}

var hostileShapes = []hostileShape{
	{name: "nested", prefix: `<WIM><IMAGE INDEX="1">`, unit: `<a>`, images: func(int) uint32 { return 1 }},
	{name: "huge-text", prefix: `<WIM><IMAGE INDEX="1"><NAME>`, unit: `A`, suffix: `</NAME></IMAGE></WIM>`, images: func(int) uint32 { return 1 }},
	{name: "many-images", prefix: `<WIM>`, unit: `<IMAGE/>`, suffix: `</WIM>`, images: func(n int) uint32 { return uint32(n) }},
	{name: "many-attributes", prefix: `<WIM><IMAGE INDEX="1"><X `, unit: `a="b" `, suffix: `/></IMAGE></WIM>`, images: func(int) uint32 { return 1 }},
}

// writeHostileWIMs writes one WIM per hostile shape into dir, each with
// XML info of exactly xmlBytes bytes (UTF-16LE with a byte-order mark).
func writeHostileWIMs(dir string, xmlBytes int) ([]string, error) {
	var paths []string
	for _, s := range hostileShapes {
		// Two bytes per character, two for the byte-order mark.
		units := (xmlBytes/2 - 1 - len(s.prefix) - len(s.suffix)) / len(s.unit)
		if units < 1 {
			return nil, fmt.Errorf("-xml-bytes %d is too small for a hostile XML info", xmlBytes)
		}
		text := s.prefix + strings.Repeat(s.unit, units) + s.suffix
		xml := make([]byte, 0, xmlBytes)
		xml = append(xml, 0xFF, 0xFE)
		for _, c := range utf16.Encode([]rune(text)) {
			xml = binary.LittleEndian.AppendUint16(xml, c)
		}
		// Pad with spaces to the exact declared size.
		for len(xml)+2 <= xmlBytes {
			xml = append(xml, ' ', 0)
		}
		path := filepath.Join(dir, s.name+".wim")
		if err := os.WriteFile(path, append(wimHeader(len(xml), s.images(units)), xml...), 0o644); err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
		paths = append(paths, path)
	}
	return paths, nil
}

// wimHeaderSize is the size of a WIM header; the XML info follows it here.
const wimHeaderSize = 208

// wimHeader is a WIM header (see pkg/wiminfo) whose uncompressed XML info
// of xmlBytes bytes follows it, describing images images.
func wimHeader(xmlBytes int, images uint32) []byte {
	h := make([]byte, wimHeaderSize)
	copy(h, "MSWIM\x00\x00\x00")
	le := binary.LittleEndian
	le.PutUint32(h[8:], wimHeaderSize)
	le.PutUint32(h[44:], images)
	le.PutUint64(h[72:], uint64(xmlBytes)) // size in the WIM, flags 0
	le.PutUint64(h[80:], wimHeaderSize)    // offset
	le.PutUint64(h[88:], uint64(xmlBytes)) // original size
	return h
}
