// Package admin serves a process's status and metrics: /metrics (Prometheus),
// /status (JSON, read by `hybrid status`), the status page at / (set by
// SetPage), /readyz (readiness) and /healthz (liveness). The relay mounts it
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
	"net/http/pprof"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hybridconn/hybrid/internal/buildinfo"
	"github.com/hybridconn/hybrid/internal/events"
)

// Admin collects what the roles of one process report.
type Admin struct {
	reg    *prometheus.Registry
	start  time.Time
	events *events.Ring

	mu     sync.Mutex
	status map[string]func() any
	ready  map[string]ReadyFunc
	page   http.Handler
}

// ReadyFunc says whether a role is ready to serve, and why (or why not) in
// a few words.
type ReadyFunc func() (ready bool, why string)

// New returns an Admin whose registry already has the Go runtime and
// process collectors (goroutines, fds, memory) and hybrid_build_info.
func New() *Admin {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hybrid_build_info",
		Help: "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": buildinfo.Version, "commit": buildinfo.CommitOrUnknown(),
			"goversion": runtime.Version()}}, func() float64 { return 1 }))
	return &Admin{reg: reg, start: time.Now(), events: events.New(events.DefaultSize),
		status: map[string]func() any{}, ready: map[string]ReadyFunc{}}
}

// Registry is where roles register their metrics.
func (a *Admin) Registry() prometheus.Registerer { return a.reg }

// Value returns the current value of the series name with the given
// label pairs ("hc", "pg", ...; other labels may have any value): a
// counter's or gauge's value, a histogram's sample count, summed over the
// series that match. ok is false when none does.
func (a *Admin) Value(name string, labels ...string) (v float64, ok bool) {
	mfs, err := a.reg.Gather()
	if err != nil {
		return 0, false
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			ok = true
			switch {
			case m.Counter != nil:
				v += m.GetCounter().GetValue()
			case m.Gauge != nil:
				v += m.GetGauge().GetValue()
			case m.Histogram != nil:
				v += float64(m.GetHistogram().GetSampleCount())
			case m.Untyped != nil:
				v += m.GetUntyped().GetValue()
			}
		}
	}
	return v, ok
}

// Events is the process's ring of recent denials, refusals and reload
// errors; roles add to it, /status and the page show it.
func (a *Admin) Events() *events.Ring { return a.events }

// AddReady adds a named readiness check to /readyz: the process is ready
// when every check is, except those a request excludes
// (/readyz?exclude=name, as Kubernetes' own /readyz does).
func (a *Admin) AddReady(name string, f ReadyFunc) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ready[name] = f
}

// Check is the result of one readiness check.
type Check struct {
	Name string
	OK   bool
	Why  string
}

// String is the check's line in /readyz: "listeners: no agent listening for pg".
func (c Check) String() string { return c.Name + ": " + c.Why }

// Ready runs every readiness check but the excluded ones, in name order,
// and returns whether all passed and each one's result.
func (a *Admin) Ready(exclude ...string) (bool, []Check) {
	a.mu.Lock()
	names := make([]string, 0, len(a.ready))
	for n := range a.ready {
		if !slices.Contains(exclude, n) {
			names = append(names, n)
		}
	}
	fs := a.ready
	a.mu.Unlock()
	sort.Strings(names)
	ok := true
	var checks []Check
	for _, n := range names {
		r, why := fs[n]()
		ok = ok && r
		checks = append(checks, Check{Name: n, OK: r, Why: why})
	}
	return ok, checks
}

// SetPage sets the handler of the status page: GET / and GET /ui/... (its
// assets). Without one, those paths are not served.
func (a *Admin) SetPage(h http.Handler) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.page = h
}

func (a *Admin) pageHandler() http.Handler {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.page
}

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
	out := map[string]any{"uptime_seconds": int64(time.Since(a.start).Seconds()),
		"version": buildinfo.Version, "events": a.events.List()}
	for _, n := range names {
		out[n] = fs[n]()
	}
	return out
}

// Handler serves /metrics, /status, /readyz, /healthz and the status page.
func (a *Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	a.Mount(mux)
	return mux
}

// Mount adds the admin paths to mux.
func (a *Admin) Mount(mux *http.ServeMux) {
	a.mount(mux, func(*http.Request) bool { return true })
}

// mount adds the admin paths to mux; /readyz gives its reasons only to
// requests for which detail is true.
func (a *Admin) mount(mux *http.ServeMux, detail func(*http.Request) bool) {
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
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, checks := a.Ready(r.URL.Query()["exclude"]...)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		word := "ready"
		if !ok {
			word = "not ready"
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, word)
		if detail(r) {
			for _, c := range checks {
				fmt.Fprintln(w, c)
			}
		}
	})
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := a.pageHandler(); h != nil {
			h.ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
	})
	mux.Handle("GET /{$}", page)
	mux.Handle("GET /ui/", page)
	// Go's profiles (heap, goroutines, CPU, trace): what docs/performance.md
	// measures with, for an operator chasing memory or CPU in production.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// MountGuarded adds the admin paths to mux for a listener the public can
// reach: /healthz is open (it says nothing but "ok"), /readyz is open but
// says why only to requests that Allowed accepts (load balancers and
// Kubernetes probes carry no token), and everything else — metrics, status,
// the page — is served only to requests that Allowed accepts.
func (a *Admin) MountGuarded(mux *http.ServeMux, token func() string) {
	inner := http.NewServeMux()
	a.mount(inner, func(r *http.Request) bool { return Allowed(r, token()) })
	open := func(w http.ResponseWriter, r *http.Request) { inner.ServeHTTP(w, r) }
	mux.HandleFunc("GET /healthz", open)
	mux.HandleFunc("GET /readyz", open)
	guarded := func(w http.ResponseWriter, r *http.Request) {
		if !Allowed(r, token()) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hybrid admin"`)
			// Browsers prompt for Basic credentials: the status page
			// takes the token as the password.
			w.Header().Add("WWW-Authenticate", `Basic realm="hybrid admin"`)
			http.Error(w, "status, metrics and the status page need Authorization: Bearer <relay.admin_token> "+
				"(or a browser login with the token as password), a request from loopback, or the relay.admin listener", http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, r)
	}
	for _, p := range []string{"GET /metrics", "GET /status", "GET /{$}", "GET /ui/", "GET /debug/pprof/"} {
		mux.HandleFunc(p, guarded)
	}
}

// Allowed reports whether r may read status and metrics on a public
// listener: it carries the configured token, as "Authorization: Bearer
// <token>" or as the password of Basic credentials (any user name: what a
// browser sends for the status page), or it comes straight from loopback
// (no proxy in between: a request with Forwarded or X-Forwarded-For came
// through one, and its loopback address says nothing about who sent it).
func Allowed(r *http.Request, token string) bool {
	if token != "" {
		if got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok &&
			subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 {
			return true
		}
		if _, pw, ok := r.BasicAuth(); ok && subtle.ConstantTimeCompare([]byte(pw), []byte(token)) == 1 {
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
	log.Info("admin endpoint listening", "addr", ln.Addr().String(), "paths", "/ /metrics /status /readyz /healthz")
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
