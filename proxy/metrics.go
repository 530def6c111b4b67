package proxy

// What the proxy measures beyond its counters: streams and failures by
// connection and reason, stream setup time, bytes while streams run, relay
// links up, and recent refusals for the status page. Open calls
// observeOpen; the SOCKS rules call refusedUnmatched; the rest is read from
// the proxy's state at each scrape.

import (
	"errors"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hybridconn/hybrid/internal/events"
	"github.com/hybridconn/hybrid/internal/meter"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/status"
)

// reasonNoRelay is the failure reason of a stream no relay answered for
// (unreachable, frozen, or the connection broke): no relay's word says why.
const reasonNoRelay = "relay_unreachable"

// observer is the proxy's measuring kit; its zero value is ready.
type observer struct {
	once    sync.Once
	streams *prometheus.CounterVec   // hc, result
	failed  *prometheus.CounterVec   // hc, reason
	setup   *prometheus.HistogramVec // hc
	live    *meter.Streams
	events  atomic.Pointer[events.Ring]
}

func (p *Proxy) observer() *observer {
	p.obs.once.Do(func() {
		p.obs.streams = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hybrid_proxy_streams_total",
			Help: "Streams by connection (names outside the config, and SOCKS requests no connection matches: other) " +
				"and outcome: opened, refused."}, []string{"hc", "result"})
		p.obs.failed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hybrid_proxy_streams_failed_total",
			Help: "Streams the relays refused or could not open, by connection and reason (unauthorized, forbidden, not_found, " +
				"no_listener, refused, unreachable, timeout, busy, shutting_down, relay_unreachable, ...)."}, []string{"hc", "reason"})
		p.obs.setup = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hybrid_proxy_stream_setup_seconds",
			Help:    "Time to open a stream through the relay, as the app waits for it (relay, agent and resource dial), by connection.",
			Buckets: meter.SetupBuckets}, []string{"hc"})
		p.obs.live = meter.NewStreams("proxy", "up: from the app; down: to the app")
	})
	return &p.obs
}

// hcLabel returns hc when the proxy has it configured, meter.Other if not.
func (p *Proxy) hcLabel(hc string) string {
	cfg := p.cfg.Load()
	return meter.Label(hc, func(n string) bool {
		for _, c := range cfg.Connections {
			if c.Name == n {
				return true
			}
		}
		return false
	})
}

// configured returns the proxy's connection names, sorted.
func (p *Proxy) configured() []string {
	var out []string
	for _, c := range p.cfg.Load().Connections {
		out = append(out, c.Name)
	}
	sort.Strings(out)
	return out
}

// observeOpen records the outcome of an open that started at start.
func (p *Proxy) observeOpen(hc string, start time.Time, err error) {
	o := p.observer()
	label := p.hcLabel(hc)
	if err == nil {
		o.setup.WithLabelValues(label).Observe(time.Since(start).Seconds())
		o.streams.WithLabelValues(label, "opened").Inc()
		return
	}
	reason := reasonNoRelay
	var se *status.Error
	if errors.As(err, &se) {
		reason = se.Code.Reason()
	}
	o.streams.WithLabelValues(label, "refused").Inc()
	o.failed.WithLabelValues(label, reason).Inc()
	kind := events.Refusal
	if reason == "unauthorized" || reason == "forbidden" || reason == "refused" {
		kind = events.Denial
	}
	o.events.Load().Add(events.Event{Kind: kind, Source: "proxy", HC: hc, Reason: reason, Msg: err.Error()})
}

// refusedUnmatched records a SOCKS request refused before any connection
// matched it.
func (p *Proxy) refusedUnmatched(client, reason, msg string) {
	o := p.observer()
	o.streams.WithLabelValues(meter.Other, "refused").Inc()
	o.events.Load().Add(events.Event{Kind: events.Refusal, Source: "proxy", Remote: client, Reason: reason, Msg: msg})
}

// flow is a stream the proxy carries, as status and metrics see it.
type flow struct {
	hc       string
	app      string // the app's address
	since    time.Time
	up, down *atomic.Int64 // bytes so far: from the app, to the app
	cut      func()        // ends the stream at once; nil: close app
}

func newFlow(hc string, app net.Conn, up, down *atomic.Int64) *flow {
	return &flow{hc: hc, app: app.RemoteAddr().String(), since: time.Now(), up: up, down: down}
}

// dropStreamLocked forgets the stream of app (if any), adding its bytes to
// the totals; the caller holds p.mu.
func (p *Proxy) dropStreamLocked(app net.Conn) {
	if s := p.streams[app]; s != nil {
		delete(p.streams, app)
		p.observer().live.Finish(p.hcLabel(s.hc), s.up.Load(), s.down.Load())
	}
}

// linkUp says whether a relay link serves streams: in the spread, and with
// its session connected (native; a WebSocket link has none and is judged
// by its streams).
func linkUp(ls LinkStatus) bool {
	return ls.Healthy && (ls.Session || ls.Transport == relayclient.TransportWebSocket)
}

var descRelayUp = prometheus.NewDesc("hybrid_proxy_relay_up",
	"1 while a relay is in the proxy's spread with its session connected (WebSocket: while its streams succeed), 0 otherwise.",
	[]string{"relay", "transport"}, nil)

// collector computes the proxy's gauges and byte counters at each scrape.
type collector struct{ p *Proxy }

// Describe implements prometheus.Collector.
func (k collector) Describe(ch chan<- *prometheus.Desc) {
	k.p.observer().live.Describe(ch)
	ch <- descRelayUp
}

// Collect implements prometheus.Collector.
func (k collector) Collect(ch chan<- prometheus.Metric) {
	p := k.p
	totals := p.observer().live.Finished() // before the live streams: see meter.Bytes
	active := map[string]int{}
	p.mu.Lock()
	for _, s := range p.streams {
		l := p.hcLabel(s.hc)
		meter.Add(totals, l, s.up.Load(), s.down.Load())
		active[l]++
	}
	p.mu.Unlock()
	p.obs.live.Emit(ch, totals, active, p.configured())
	for _, ls := range p.links() {
		meter.Flag(ch, descRelayUp, ls.Up, ls.Relay, ls.Transport)
	}
}

// registerMetrics publishes the observer's series and the collector on reg.
func (p *Proxy) registerMetrics(reg prometheus.Registerer) {
	o := p.observer()
	reg.MustRegister(o.streams, o.failed, o.setup, collector{p})
	for _, n := range p.configured() {
		o.streams.WithLabelValues(n, "opened") // present at 0 from the start
		o.streams.WithLabelValues(n, "refused")
	}
}
