// Package metrics is osvc-server's Prometheus metrics, served on a
// listener of their own (osvc-server --metrics-listen). Every name starts
// with osvc_; the README lists them.
//
// A replica exports what it sees: the agents whose streams it holds, the
// content it sends and receives, its etcd requests, the reports it fenced
// out. The run metrics (runs by state, run and step durations, updates by
// result, leases lost) come from the elected replica, which follows every
// run (Runs), so that no run is counted twice; sum them over replicas.
package metrics

import (
	"context"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// Metrics holds a server's collectors. A nil *Metrics records nothing, so
// components take one optionally.
type Metrics struct {
	reg *prometheus.Registry

	runs          *prometheus.GaugeVec
	runDuration   *prometheus.HistogramVec
	stepDuration  *prometheus.HistogramVec
	updates       *prometheus.CounterVec
	leasesLost    prometheus.Counter
	fencedReports prometheus.Counter
	contentBytes  *prometheus.CounterVec
	etcdLatency   *prometheus.HistogramVec

	// followed, for tests, is told each time the run follower has applied
	// what it read (the first listing, then each watch response).
	followed func()
}

// durationBuckets spans a servicing run: seconds for a step of a small
// image, hours for a cumulative update on an image of every edition.
var durationBuckets = []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400}

// New makes the collectors, with Go's and the process's.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		runs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "osvc_runs", Help: "Runs by state (PENDING, LEASED, IN_PROCESS, SUCCEEDED, FAILED, CANCELED) and kind, as the elected replica follows them.",
		}, []string{"state", "kind"}),
		runDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "osvc_run_duration_seconds", Help: "How long ended runs took, from their first lease to their end, by kind and result.",
			Buckets: durationBuckets,
		}, []string{"kind", "result"}),
		stepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "osvc_step_duration_seconds", Help: "How long the pipeline steps of ended runs took, by step.",
			Buckets: durationBuckets,
		}, []string{"step"}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "osvc_updates_total", Help: "Updates of ended runs by result (APPLIED, ALREADY_INSTALLED, NOT_APPLICABLE, UNSUPPORTED, FAILED, ...).",
		}, []string{"result"}),
		leasesLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "osvc_leases_lost_total", Help: "Runs whose agent's lease ended while it held them (requeued, or failed after their last attempt).",
		}),
		fencedReports: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "osvc_fenced_reports_total", Help: "Agent reports refused because their fencing token was no longer the run's.",
		}),
		contentBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "osvc_content_bytes_total", Help: "Content bytes this replica received (in: ContentService.Write) and sent (out: ContentService.Read).",
		}, []string{"direction"}),
		etcdLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "osvc_etcd_request_duration_seconds", Help: "Latency of this replica's etcd requests (unary: Range, Txn, Put, LeaseGrant, ...), by method and outcome.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"method", "outcome"}),
	}
	// Both directions show from the start, at 0.
	m.contentBytes.WithLabelValues("in")
	m.contentBytes.WithLabelValues("out")
	m.reg.MustRegister(m.runs, m.runDuration, m.stepDuration, m.updates, m.leasesLost, m.fencedReports, m.contentBytes, m.etcdLatency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Register adds more collectors (e.g. the agents connected by site).
func (m *Metrics) Register(c prometheus.Collector) {
	if m != nil {
		m.reg.MustRegister(c)
	}
}

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Serve serves /metrics on lis until ctx ends.
func (m *Metrics) Serve(ctx context.Context, lis net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(lis); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
}

// LeaseLost counts a run whose agent's lease ended while it held it.
func (m *Metrics) LeaseLost() {
	if m != nil {
		m.leasesLost.Inc()
	}
}

// FencedReport counts a report refused for its stale fencing token.
func (m *Metrics) FencedReport() {
	if m != nil {
		m.fencedReports.Inc()
	}
}

// ContentInterceptor counts the data ContentService.Read sends and
// ContentService.Write receives.
func (m *Metrics) ContentInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if m != nil {
			switch info.FullMethod {
			case osvcv1.ContentService_Read_FullMethodName:
				ss = &countingStream{ServerStream: ss, out: m.contentBytes.WithLabelValues("out")}
			case osvcv1.ContentService_Write_FullMethodName:
				ss = &countingStream{ServerStream: ss, in: m.contentBytes.WithLabelValues("in")}
			}
		}
		return handler(srv, ss)
	}
}

type countingStream struct {
	grpc.ServerStream
	in, out prometheus.Counter
}

func (s *countingStream) SendMsg(msg any) error {
	err := s.ServerStream.SendMsg(msg)
	if r, ok := msg.(*osvcv1.ReadResponse); ok && err == nil && s.out != nil {
		s.out.Add(float64(len(r.GetData())))
	}
	return err
}

func (s *countingStream) RecvMsg(msg any) error {
	err := s.ServerStream.RecvMsg(msg)
	if w, ok := msg.(*osvcv1.WriteRequest); ok && err == nil && s.in != nil {
		s.in.Add(float64(len(w.GetData())))
	}
	return err
}

// EtcdInterceptor times the etcd client's unary requests.
func (m *Metrics) EtcdInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		start := time.Now()
		err := invoker(ctx, method, req, reply, cc, opts...)
		if m != nil {
			outcome := "ok"
			if err != nil {
				outcome = "error"
			}
			m.etcdLatency.WithLabelValues(method[strings.LastIndexByte(method, '/')+1:], outcome).Observe(time.Since(start).Seconds())
		}
		return err
	}
}

// agentsDesc describes osvc_agents_connected.
var agentsDesc = prometheus.NewDesc("osvc_agents_connected",
	"Agents whose stream this replica holds, by site.", []string{"site"}, nil)

// agentsCollector reads the connected agents at each scrape.
type agentsCollector struct{ count func() map[string]int }

func (a agentsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- agentsDesc }

func (a agentsCollector) Collect(ch chan<- prometheus.Metric) {
	for site, n := range a.count() {
		ch <- prometheus.MustNewConstMetric(agentsDesc, prometheus.GaugeValue, float64(n), site)
	}
}

// AgentsConnected exports osvc_agents_connected{site} from count, the
// agents connected to this replica by site, read at each scrape.
func (m *Metrics) AgentsConnected(count func() map[string]int) {
	m.Register(agentsCollector{count: count})
}
