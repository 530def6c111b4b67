package relay

// What the relay measures beyond Stats: per-connection Prometheus series,
// the ring of recent denials and refusals, and one access line per stream.
// The core keeps one observer (Core.obs); the front doors call observeOpen
// when an open is decided, Splice calls streamStarted and streamEnded, and
// authorize calls denied. Everything else is read from the state the core
// keeps anyway (its sessions, listeners and live streams) when a scrape or
// a status request comes.

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hybridconn/hybrid/internal/events"
	"github.com/hybridconn/hybrid/internal/meter"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
)

// reasonAborted is the failure reason of a stream whose side went away
// between pairing and the start of the copy.
const reasonAborted = "aborted"

// observer is the core's measuring kit; its zero value is ready (the
// series are made on first use).
type observer struct {
	once   sync.Once
	opened *prometheus.CounterVec   // hc
	failed *prometheus.CounterVec   // hc, reason
	setup  *prometheus.HistogramVec // hc
	events atomic.Pointer[events.Ring]

	streams *meter.Streams

	mu    sync.Mutex
	peers map[*activeStream][2]string // live streams' sender and agent-side addresses, for status
	rates rateSample                  // for the status page's throughput
}

func (o *observer) init() {
	o.once.Do(func() {
		o.opened = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hybrid_relay_streams_opened_total",
			Help: "Streams paired and started, by hybrid connection (names outside the config: other)."}, []string{"hc"})
		o.failed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hybrid_relay_streams_failed_total",
			Help: "Streams refused or failed before starting, by hybrid connection and reason (unauthorized, forbidden, " +
				"not_found, no_listener, refused, unreachable, timeout, busy, shutting_down, aborted, ...)."}, []string{"hc", "reason"})
		o.setup = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hybrid_relay_stream_setup_seconds",
			Help:    "Time from a sender's open to the agent joining (the relay's part of a new stream's latency), by hybrid connection.",
			Buckets: meter.SetupBuckets}, []string{"hc"})
		o.streams = meter.NewStreams("relay", "up: sender to agent; down: agent to sender")
		o.peers = map[*activeStream][2]string{}
	})
}

func (c *Core) observer() *observer {
	c.obs.init()
	return &c.obs
}

// setEvents makes the core record denials and refusals in r.
func (c *Core) setEvents(r *events.Ring) { c.obs.events.Store(r) }

// hcLabel returns hc when it is a configured connection, meter.Other if
// not.
func (c *Core) hcLabel(hc string) string {
	conns := c.auth.Load().connections
	return meter.Label(hc, func(n string) bool { _, ok := conns[n]; return ok })
}

// configured returns the configured connection names, sorted.
func (c *Core) configured() []string {
	conns := c.auth.Load().connections
	out := make([]string, 0, len(conns))
	for n := range conns {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// observeOpen records the outcome of a sender's open that started at
// start: its setup time, or its failure and why. Denials (bad keys,
// unknown names) are recorded as events by authorize; others here.
func (c *Core) observeOpen(hc, remote string, start time.Time, err error) {
	o := c.observer()
	label := c.hcLabel(hc)
	if err == nil {
		o.setup.WithLabelValues(label).Observe(time.Since(start).Seconds())
		return
	}
	code := status.CodeOf(err)
	o.failed.WithLabelValues(label, code.Reason()).Inc()
	switch code {
	case status.Unauthorized, status.Forbidden, status.NotFound:
		return // authorize recorded it
	}
	o.events.Load().Add(events.Event{Kind: events.Refusal, Source: "relay", HC: hc, Remote: remote,
		Reason: code.Reason(), Msg: err.Error()})
}

// openAborted records a stream that was paired but whose sender went away
// before it started (a failed WebSocket upgrade).
func (c *Core) openAborted(hc string) {
	c.observer().failed.WithLabelValues(c.hcLabel(hc), reasonAborted).Inc()
}

// denied records a failed authentication as an event.
func (c *Core) denied(hc string, need sas.Rights, remote string, err error) {
	c.obs.events.Load().Add(events.Event{Kind: events.Denial, Source: "relay", HC: hc, Remote: remote,
		Reason: status.CodeOf(err).Reason(), Msg: need.String() + ": " + err.Error()})
}

// streamStarted counts a stream whose copy starts, keeps the addresses of
// its sender and agent side for status, and counts the early bytes (the
// app's first bytes, which reached the agent with the accept or before the
// copy).
func (c *Core) streamStarted(st *activeStream, sender, agent string, early int) {
	st.joint.AToB.Add(int64(early))
	o := c.observer()
	o.opened.WithLabelValues(c.hcLabel(st.hc)).Inc()
	o.mu.Lock()
	o.peers[st] = [2]string{sender, agent}
	o.mu.Unlock()
}

// peersOf returns the sender's and the agent side's addresses of a live
// stream, or "" for each until it starts.
func (o *observer) peersOf(st *activeStream) (sender, agent string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	p := o.peers[st]
	return p[0], p[1]
}

// streamEnded is called by Splice once a stream is over and no longer in
// c.streams: its bytes move to the finished totals, and its access line is
// written. aborted, if not empty, says why it ended before it started.
func (c *Core) streamEnded(st *activeStream, sender, agent *Peer, aborted string) {
	o := c.observer()
	label := c.hcLabel(st.hc)
	up, down := st.joint.AToB.Load(), st.joint.BToA.Load()
	o.mu.Lock()
	delete(o.peers, st)
	o.mu.Unlock()
	o.streams.Finish(label, up, down)
	result := "ok"
	switch {
	case aborted != "":
		result = reasonAborted
		o.failed.WithLabelValues(label, reasonAborted).Inc()
	case st.joint.Cut():
		result = "cut" // revoked, rotated past its grace, or the relay stopped
	}
	agentName := ""
	if st.agentSession != nil {
		agentName = st.agentSession.name
	}
	args := []any{"hc", st.hc, "stream", st.id.String(), "sender", sender.Addr, "sender_key", st.senderKey,
		"agent", agentName, "agent_addr", agent.Addr, "bytes_up", up, "bytes_down", down,
		"duration", time.Since(st.start).Round(time.Millisecond), "result", result}
	switch {
	case st.forwarded: // sender is the relay it landed at
		args = append(args, "fleet", "from another relay")
	case st.agentSession == nil: // agent_addr is the relay whose agent took it
		args = append(args, "fleet", "to another relay")
	}
	if aborted != "" {
		args = append(args, "reason", aborted)
	}
	c.log.Info("stream closed", args...)
}

// byteTotals returns the bytes moved so far by hc label — by ended streams
// and by live ones, as far as their copies have counted — and the live
// streams by label. The finished totals are read before the live streams:
// a stream that ends in between is then missed for a moment, never counted
// twice (Splice removes it from c.streams before adding it to the
// totals).
func (c *Core) byteTotals() (map[string][2]int64, map[string]int) {
	out := c.observer().streams.Finished()
	active := map[string]int{}
	c.mu.Lock()
	for st := range c.streams {
		l := c.hcLabel(st.hc)
		meter.Add(out, l, st.joint.AToB.Load(), st.joint.BToA.Load())
		active[l]++
	}
	c.mu.Unlock()
	return out, active
}

// rateSample is the byte totals at one moment, and the rates computed
// against the sample before.
type rateSample struct {
	at    time.Time
	total map[string][2]int64
	rate  map[string][2]float64 // bytes per second, up and down
}

// minRateWindow is the shortest window a throughput is computed over: a
// status page refreshed by several viewers at once still shows rates over
// at least this long.
const minRateWindow = 2 * time.Second

// throughput returns bytes per second by hc label, up and down, over the
// time since the previous sample at least minRateWindow old.
func (o *observer) throughput(now time.Time, totals map[string][2]int64) map[string][2]float64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	r := &o.rates
	if r.at.IsZero() {
		r.at, r.total = now, totals
		return nil
	}
	if dt := now.Sub(r.at); dt >= minRateWindow {
		r.rate = map[string][2]float64{}
		for l, t := range totals {
			p := r.total[l]
			r.rate[l] = [2]float64{float64(max(t[0]-p[0], 0)) / dt.Seconds(), float64(max(t[1]-p[1], 0)) / dt.Seconds()}
		}
		r.at, r.total = now, totals
	}
	return r.rate
}

// descListeners describes a series the collector computes at each scrape.
var descListeners = prometheus.NewDesc("hybrid_relay_listeners",
	"Agents listening, by hybrid connection; 0 for a configured connection no agent serves.", []string{"hc"}, nil)

// collector computes the relay's per-connection gauges and byte counters
// from the core's state at each scrape.
type collector struct{ c *Core }

// Describe implements prometheus.Collector.
func (k collector) Describe(ch chan<- *prometheus.Desc) {
	k.c.observer().streams.Describe(ch)
	ch <- descListeners
}

// Collect implements prometheus.Collector. Every configured connection has
// its series, at 0 when idle.
func (k collector) Collect(ch chan<- prometheus.Metric) {
	c := k.c
	totals, active := c.byteTotals()
	c.observer().streams.Emit(ch, totals, active, c.configured())
	for l, n := range c.listenerCounts() {
		ch <- prometheus.MustNewConstMetric(descListeners, prometheus.GaugeValue, float64(n), l)
	}
}

// listenerCounts returns the agents listening by hc label: every configured
// connection (0 when none), and other when agents listen for names the
// config no longer has.
func (c *Core) listenerCounts() map[string]int {
	out := map[string]int{}
	for _, n := range c.configured() {
		out[n] = 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for hc, h := range c.hcs {
		if len(h.listeners) > 0 {
			out[c.hcLabel(hc)] += len(h.listeners)
		}
	}
	return out
}

// registerMetrics publishes the observer's series and the collector on reg.
func (c *Core) registerMetrics(reg prometheus.Registerer) {
	o := c.observer()
	reg.MustRegister(o.opened, o.failed, o.setup, collector{c})
	for _, n := range c.configured() {
		o.opened.WithLabelValues(n) // present at 0 from the start
	}
}

// transportOf names the transport of a session's control channel.
func transportOf(conn ListenerConn) string {
	if _, ok := conn.(*nativeControl); ok {
		return "tcp"
	}
	return "websocket"
}
