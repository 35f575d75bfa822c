package agent

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/osvc/osvc/agent/dp"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// DefaultDistributionListen is where a distribution point serves by default.
const DefaultDistributionListen = ":8090"

// DistributionConfig configures the distribution point role. An agent takes
// the role when Role is set, or when the server first sends it a version to
// distribute (its site's setting names it).
type DistributionConfig struct {
	// Role asks the server for the role (osvc-agent --distribution-point).
	Role bool
	// Listen is where images are served, host:port; default ":8090".
	Listen string
	// URL is the address announced to the server for clients; default
	// http(s)://{host}:{port}/ from Listen and the host name.
	URL string
	// CertFile and KeyFile, when set, serve HTTPS with that certificate.
	CertFile, KeyFile string
	// RetryBackoff is the wait after a failed fetch; default dp's.
	RetryBackoff time.Duration
	// ProgressEvery spaces the progress reports; default dp's.
	ProgressEvery time.Duration
}

// distributionDir holds the distribution point's store and state.
func (a *Agent) distributionDir() string { return filepath.Join(a.cfg.DataDir, "distribution") }

// distributionPoint is the role once taken: the store and its server.
type distributionPoint struct {
	point  *dp.Point
	server *http.Server
	served chan struct{}
	addr   net.Addr
}

// distributionURL is the address announced for clients.
func (a *Agent) distributionURL() string {
	d := a.cfg.Distribution
	if d.URL != "" {
		return d.URL
	}
	a.mu.Lock()
	p := a.point
	a.mu.Unlock()
	if !d.Role && p == nil {
		return ""
	}
	scheme := "http"
	if d.CertFile != "" {
		scheme = "https"
	}
	listen := d.Listen
	if p != nil {
		listen = p.addr.String()
	}
	host, port, err := net.SplitHostPort(cmp.Or(listen, DefaultDistributionListen))
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = a.host
	}
	return scheme + "://" + net.JoinHostPort(host, port) + "/"
}

// distributionPoint returns the role, taking it on first use: it opens the
// store under the data folder and starts serving.
func (a *Agent) distributionPoint() (*dp.Point, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.point != nil {
		return a.point.point, nil
	}
	if a.images == nil {
		return nil, errors.New("the agent is not running")
	}
	d := a.cfg.Distribution
	point, err := dp.New(dp.Config{
		Dir:    a.distributionDir(),
		Source: a.images,
		Report: func(ctx context.Context, r *osvcv1.DistributionReport) error {
			return a.conn.Send(ctx, &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_DistributionReport{DistributionReport: r}})
		},
		URL:           a.distributionURL,
		Logger:        a.cfg.Logger,
		RetryBackoff:  d.RetryBackoff,
		ProgressEvery: d.ProgressEvery,
	})
	if err != nil {
		return nil, fmt.Errorf("agent: distribution point: %w", err)
	}
	lis, err := net.Listen("tcp", cmp.Or(d.Listen, DefaultDistributionListen))
	if err != nil {
		point.Close()
		return nil, fmt.Errorf("agent: distribution point: %w: set --dp-listen to a free address", err)
	}
	srv := &http.Server{Handler: point.Handler(), ReadHeaderTimeout: 10 * time.Second}
	if d.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(d.CertFile, d.KeyFile)
		if err != nil {
			lis.Close()
			point.Close()
			return nil, fmt.Errorf("agent: distribution point certificate: %w (--dp-tls-cert, --dp-tls-key)", err)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		lis = tls.NewListener(lis, srv.TLSConfig)
	}
	p := &distributionPoint{point: point, server: srv, served: make(chan struct{}), addr: lis.Addr()}
	go func() {
		defer close(p.served)
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.logger.Error("the distribution point stopped serving", "error", err)
		}
	}()
	a.point = p
	a.logger.Info("distribution point: serving images", "listen", lis.Addr().String(), "dir", filepath.Join(a.cfg.DataDir, "distribution"))
	return point, nil
}

// stopDistributionPoint stops serving and the fetches under way.
func (a *Agent) stopDistributionPoint() {
	a.mu.Lock()
	p := a.point
	a.point = nil
	a.mu.Unlock()
	if p == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.server.Shutdown(ctx)
	<-p.served
	p.point.Close()
}

func (h *handler) Withdraw(m *osvcv1.Withdraw) {
	a := (*Agent)(h)
	a.mu.Lock()
	p := a.point
	a.mu.Unlock()
	if p != nil {
		p.point.Withdraw(m.GetImage())
	}
}

// distributedImages are the images the agent serves as a distribution point.
func (a *Agent) distributedImages() []string {
	a.mu.Lock()
	p := a.point
	a.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.point.Images()
}

func (h *handler) Distribute(ctx context.Context, m *osvcv1.Distribute) {
	a := (*Agent)(h)
	p, err := a.distributionPoint()
	if err != nil {
		a.logger.Error("cannot take the distribution point role", "image", m.GetImage(), "error", err)
		go func() {
			_ = a.conn.Send(ctx, &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_DistributionReport{DistributionReport: &osvcv1.DistributionReport{
				Image: m.GetImage(), Version: m.GetVersion(), Sha256: m.GetSha256(),
				State: osvcv1.DistributionState_DISTRIBUTION_STATE_FAILED, Error: "this agent cannot be a distribution point: " + err.Error(),
			}}})
		}()
		return
	}
	p.Distribute(ctx, m)
}
