// Package meter holds what relay, agent and proxy share to export
// per-connection stream metrics: the hc label, bounded by the config, and
// byte counters that count while streams run, not only when they end.
package meter

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Other is the hc label of every name that is not a configured connection,
// so that series stay bounded by the config whatever clients ask for.
const Other = "other"

// Label returns hc when known says it is a configured connection, Other if
// not.
func Label(hc string, known func(string) bool) string {
	if known(hc) {
		return hc
	}
	return Other
}

// SetupBuckets are the bounds of the stream-setup histograms, in seconds:
// a parked connection pairs in well under a millisecond on a LAN, a fresh
// dial by a far agent takes tens of milliseconds, a slow resource seconds.
var SetupBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20}

// Directions of the byte counters: up is from the app (sender) towards the
// resource, down back.
const (
	Up   = "up"
	Down = "down"
)

// Bytes counts a role's stream bytes by hc label, up and down: the totals
// of ended streams, to which a scrape adds what live streams have counted
// so far. Its zero value is ready.
type Bytes struct {
	mu       sync.Mutex
	finished map[string][2]int64
	emitted  map[string][2]int64
}

// Finish adds an ended stream's bytes to its label's totals. The stream
// must be gone from the live set the role's scrape reads, or be removed in
// the same critical section, before or as this is called: a stream missed
// for a moment is hidden by Monotonic, one counted twice is not.
func (b *Bytes) Finish(label string, up, down int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.finished == nil {
		b.finished = map[string][2]int64{}
	}
	t := b.finished[label]
	b.finished[label] = [2]int64{t[0] + up, t[1] + down}
}

// Finished returns a copy of the ended streams' totals. A scrape reads it
// before the live streams: a stream that ends in between is then missed
// for a moment (if it is removed from the live set before Finish), never
// counted twice.
func (b *Bytes) Finished() map[string][2]int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string][2]int64, len(b.finished))
	for l, t := range b.finished {
		out[l] = t
	}
	return out
}

// Monotonic raises totals where needed to what was last exported and
// records them: a counter never goes back, even while a stream that just
// ended is counted neither live nor finished.
func (b *Bytes) Monotonic(totals map[string][2]int64) map[string][2]int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.emitted == nil {
		b.emitted = map[string][2]int64{}
	}
	for l, e := range b.emitted {
		if _, ok := totals[l]; !ok {
			totals[l] = e // a label exported once stays
		}
	}
	for l, t := range totals {
		e := b.emitted[l]
		t = [2]int64{max(t[0], e[0]), max(t[1], e[1])}
		b.emitted[l] = t
		totals[l] = t
	}
	return totals
}

// Emit sends totals as desc's counters, labelled hc and direction, after
// Monotonic; every name in configured is present, at 0 when idle.
func (b *Bytes) Emit(ch chan<- prometheus.Metric, desc *prometheus.Desc, totals map[string][2]int64, configured []string) {
	for _, n := range configured {
		if _, ok := totals[n]; !ok {
			totals[n] = [2]int64{}
		}
	}
	for l, t := range b.Monotonic(totals) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(t[0]), l, Up)
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(t[1]), l, Down)
	}
}

// Add adds up and down to label's entry of totals.
func Add(totals map[string][2]int64, label string, up, down int64) {
	t := totals[label]
	totals[label] = [2]int64{t[0] + up, t[1] + down}
}

// Streams is a role's per-connection stream series: the bytes its streams
// carried (hybrid_<role>_stream_bytes_total, counted while they run) and how
// many run (hybrid_<role>_streams_active). Make one with NewStreams.
type Streams struct {
	Bytes
	bytes, active *prometheus.Desc
}

// NewStreams returns the series of role ("relay", "agent", "proxy");
// directions says in a few words what up and down mean there.
func NewStreams(role, directions string) *Streams {
	return &Streams{
		bytes: prometheus.NewDesc("hybrid_"+role+"_stream_bytes_total",
			"Bytes carried by streams, by connection (names outside the config: other) and direction ("+directions+
				"); counted while streams run, as their copies move them.", []string{"hc", "direction"}, nil),
		active: prometheus.NewDesc("hybrid_"+role+"_streams_active",
			"Streams being copied, by connection.", []string{"hc"}, nil),
	}
}

// Describe sends the descriptions of the series.
func (s *Streams) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.bytes
	ch <- s.active
}

// Emit sends the series for one scrape: totals are Finished() plus what
// the live streams counted, active the live streams by label. Every name in
// configured has its series, at 0 when idle.
func (s *Streams) Emit(ch chan<- prometheus.Metric, totals map[string][2]int64, active map[string]int, configured []string) {
	s.Bytes.Emit(ch, s.bytes, totals, configured)
	for _, n := range configured {
		if _, ok := active[n]; !ok {
			active[n] = 0
		}
	}
	for l, n := range active {
		ch <- prometheus.MustNewConstMetric(s.active, prometheus.GaugeValue, float64(n), l)
	}
}

// Flag sends desc's gauge for labels: 1 when on, 0 when not.
func Flag(ch chan<- prometheus.Metric, desc *prometheus.Desc, on bool, labels ...string) {
	v := 0.0
	if on {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
}
