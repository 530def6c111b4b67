package agent

// What the agent measures beyond its counters: streams by connection and
// result, bytes while streams run, relay links up, and recent denials and
// refusals for the status page. record and note are the two calls the rest
// of the agent makes; the rest is read from the agent's state at each
// scrape.

import (
	"sort"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hybridconn/hybrid/internal/events"
	"github.com/hybridconn/hybrid/internal/meter"
)

// streamResults maps audit events to the result label of
// hybrid_agent_streams_total, and to the kind of event they are for the
// status page ("" for none).
var streamResults = map[string]struct{ result, kind string }{
	"open":        {"opened", ""},
	"http":        {"opened", ""}, // an HTTP-mode exchange, when it ends
	"deny":        {"denied", events.Denial},
	"unreachable": {"unreachable", events.Refusal},
	"busy":        {"busy", events.Refusal},
	"revoke":      {"revoked", events.Denial},
}

// observer is the agent's measuring kit; its zero value is ready.
type observer struct {
	once    sync.Once
	streams *prometheus.CounterVec // hc, result
	live    *meter.Streams
	events  atomic.Pointer[events.Ring]
}

func (a *Agent) observer() *observer {
	a.obs.once.Do(func() {
		a.obs.streams = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hybrid_agent_streams_total",
			Help: "Streams by connection (names outside the config: other) and outcome: opened, denied (not published or " +
				"outside allow), unreachable (resource down), revoked (cut by a reload), busy (over max_streams)."},
			[]string{"hc", "result"})
		a.obs.live = meter.NewStreams("agent", "up: towards the resource; down: back to the app")
	})
	return &a.obs
}

// hcLabel returns hc when the agent publishes it, meter.Other if not.
func (a *Agent) hcLabel(hc string) string {
	cfg := a.cfg.Load()
	return meter.Label(hc, func(n string) bool {
		for _, c := range cfg.Connections {
			if c.Name == n {
				return true
			}
		}
		return false
	})
}

// record writes ev to the audit log, counts it, and keeps denials and
// refusals for the status page.
func (a *Agent) record(ev AuditEvent) {
	a.audit.Load().Record(ev)
	r, ok := streamResults[ev.Event]
	if !ok {
		return
	}
	label := a.hcLabel(ev.HC)
	a.observer().streams.WithLabelValues(label, r.result).Inc()
	if ev.Event == "http" {
		a.obs.live.Finish(label, ev.BytesIn, ev.BytesOut)
	}
	if r.kind != "" {
		a.obs.events.Load().Add(events.Event{Kind: r.kind, Source: "agent", HC: ev.HC, Remote: ev.SenderAddr,
			Reason: r.result, Msg: ev.Reason})
	}
}

// note keeps an event of the agent's relay links for the status page.
func (a *Agent) note(kind, reason, hc, relay, msg string) {
	a.obs.events.Load().Add(events.Event{Kind: kind, Source: "agent", HC: hc, Remote: relay, Reason: reason, Msg: msg})
}

// counts returns the bytes a stream moved so far, up and down; an
// HTTP-mode exchange counts its bytes when it ends (record).
func (s *liveStream) counts() (up, down int64) {
	if s.joint == nil {
		return 0, 0
	}
	return s.joint.AToB.Load(), s.joint.BToA.Load()
}

// finished adds an ended stream's bytes to the totals; the caller holds
// a.mu and has just removed s from a.streams.
func (a *Agent) finished(s *liveStream) {
	up, down := s.counts()
	a.observer().live.Finish(a.hcLabel(s.hc), up, down)
}

var descRelayUp = prometheus.NewDesc("hybrid_agent_relay_up",
	"1 while the agent's control channel to a relay is connected, 0 while it is not.", []string{"relay", "transport"}, nil)

// collector computes the agent's gauges and byte counters at each scrape.
type collector struct{ a *Agent }

// Describe implements prometheus.Collector.
func (k collector) Describe(ch chan<- *prometheus.Desc) {
	k.a.observer().live.Describe(ch)
	ch <- descRelayUp
}

// Collect implements prometheus.Collector.
func (k collector) Collect(ch chan<- prometheus.Metric) {
	a := k.a
	totals := a.observer().live.Finished() // before the live streams: see meter.Bytes
	active := map[string]int{}
	type link struct {
		relay, transport string
		up               bool
	}
	var links []link
	a.mu.Lock()
	for s := range a.streams {
		l := a.hcLabel(s.hc)
		up, down := s.counts()
		meter.Add(totals, l, up, down)
		active[l]++
	}
	for _, r := range a.relays {
		r.mu.Lock()
		links = append(links, link{r.name, r.transport, r.connected})
		r.mu.Unlock()
	}
	a.mu.Unlock()
	a.obs.live.Emit(ch, totals, active, a.configured())
	for _, l := range links {
		tr := l.transport
		if tr == "" {
			tr = "none"
		}
		meter.Flag(ch, descRelayUp, l.up, l.relay, tr)
	}
}

// configured returns the names the agent publishes, sorted.
func (a *Agent) configured() []string {
	var out []string
	for _, c := range a.cfg.Load().Connections {
		out = append(out, c.Name)
	}
	sort.Strings(out)
	return out
}

// registerMetrics publishes the observer's series and the collector on reg.
func (a *Agent) registerMetrics(reg prometheus.Registerer) {
	o := a.observer()
	reg.MustRegister(o.streams, collector{a})
	for _, n := range a.configured() {
		for _, r := range streamResults {
			o.streams.WithLabelValues(n, r.result) // present at 0 from the start
		}
	}
}
