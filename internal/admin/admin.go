// Package admin serves a process's status and metrics: /metrics (Prometheus),
// /status (JSON, read by `hybrid status`) and /healthz. The relay mounts it
// on its http listener; agent and proxy on their `admin:` address.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Admin collects what the roles of one process report.
type Admin struct {
	reg   *prometheus.Registry
	start time.Time

	mu     sync.Mutex
	status map[string]func() any
}

// New returns an Admin whose registry already has the Go runtime and
// process collectors (goroutines, fds, memory).
func New() *Admin {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Admin{reg: reg, start: time.Now(), status: map[string]func() any{}}
}

// Registry is where roles register their metrics.
func (a *Admin) Registry() prometheus.Registerer { return a.reg }

// AddStatus adds a section to /status: f is called on every request and its
// result encoded as JSON under name.
func (a *Admin) AddStatus(name string, f func() any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status[name] = f
}

// Counter registers a counter read from f.
func (a *Admin) Counter(name, help string, labels prometheus.Labels, f func() float64) {
	a.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, f))
}

// Gauge registers a gauge read from f.
func (a *Admin) Gauge(name, help string, labels prometheus.Labels, f func() float64) {
	a.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, f))
}

// Status returns the /status document.
func (a *Admin) Status() map[string]any {
	a.mu.Lock()
	names := make([]string, 0, len(a.status))
	for n := range a.status {
		names = append(names, n)
	}
	fs := a.status
	a.mu.Unlock()
	sort.Strings(names)
	out := map[string]any{"uptime_seconds": int64(time.Since(a.start).Seconds())}
	for _, n := range names {
		out[n] = fs[n]()
	}
	return out
}

// Handler serves /metrics, /status and /healthz.
func (a *Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	a.Mount(mux)
	return mux
}

// Mount adds the admin paths to mux.
func (a *Admin) Mount(mux *http.ServeMux) {
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(a.Status())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, "ok")
	})
}

// MountGuarded adds the admin paths to mux for a listener the public can
// reach: /healthz is open (it says nothing but "ok"), everything else is
// served only to requests that Allowed accepts.
func (a *Admin) MountGuarded(mux *http.ServeMux, token func() string) {
	inner := http.NewServeMux()
	a.Mount(inner)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { inner.ServeHTTP(w, r) })
	guarded := func(w http.ResponseWriter, r *http.Request) {
		if !Allowed(r, token()) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hybrid admin"`)
			http.Error(w, "status and metrics need Authorization: Bearer <relay.admin_token>, a request from loopback, or the relay.admin listener", http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, r)
	}
	for _, p := range []string{"GET /metrics", "GET /status"} {
		mux.HandleFunc(p, guarded)
	}
}

// Allowed reports whether r may read status and metrics on a public
// listener: it carries "Authorization: Bearer <token>" with the configured
// token, or it comes straight from loopback (no proxy in between: a
// request with Forwarded or X-Forwarded-For came through one, and its
// loopback address says nothing about who sent it).
func Allowed(r *http.Request, token string) bool {
	if token != "" {
		if got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok &&
			subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 {
			return true
		}
	}
	if r.Header.Get("Forwarded") != "" || r.Header.Get("X-Forwarded-For") != "" {
		return false
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// Serve listens on addr and serves h until ctx is done.
func Serve(ctx context.Context, addr string, h http.Handler, log hclog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	return ServeListener(ctx, ln, h, log)
}

// ServeListener serves h on ln until ctx is done.
func ServeListener(ctx context.Context, ln net.Listener, h http.Handler, log hclog.Logger) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})}
	log.Info("admin endpoint listening", "addr", ln.Addr().String(), "paths", "/metrics /status /healthz")
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}
