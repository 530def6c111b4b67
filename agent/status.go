package agent

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hybridconn/hybrid/internal/admin"
)

// Status is the agent's part of /status.
type Status struct {
	ID            string            `json:"id"`
	Relays        []RelayStatus     `json:"relays"`
	Publishing    map[string]string `json:"publishing"` // connection → endpoint
	Unhealthy     map[string]string `json:"unhealthy,omitempty"`
	StreamsActive int               `json:"streams_active"`
	Counters      map[string]int64  `json:"counters"`
	// Connections is every connection the agent publishes, by name.
	Connections []ConnectionStatus `json:"connections"`
	// Streams are the live streams, newest first, at most
	// MaxListedStreams of them (StreamsActive counts them all).
	Streams []StreamStatus `json:"streams"`
}

// MaxListedStreams bounds the streams a status document lists.
const MaxListedStreams = 100

// RelayStatus is the agent's control channel to one relay.
type RelayStatus struct {
	Relay     string `json:"relay"`
	Connected bool   `json:"connected"`
	Transport string `json:"transport"`
	// Fallback says why transport auto uses WebSocket, when it does.
	Fallback  string   `json:"fallback,omitempty"`
	Parked    int      `json:"parked"`
	Listening []string `json:"listening"`
	LastError string   `json:"last_error,omitempty"`
}

// ConnectionStatus is one published connection.
type ConnectionStatus struct {
	Name     string `json:"name"`
	Endpoint string `json:"endpoint"`
	Healthy  bool   `json:"healthy"`
	Why      string `json:"why,omitempty"` // why not healthy
	// Relays are the relays where the agent listens for it.
	Relays        []string `json:"relays"`
	StreamsActive int      `json:"streams_active"`
}

// StreamStatus is one live stream.
type StreamStatus struct {
	ID        string `json:"id"`
	HC        string `json:"hc"`
	Relay     string `json:"relay"`
	Endpoint  string `json:"endpoint"`
	Sender    string `json:"sender"` // the app side's address as the relay saw it
	SenderKey string `json:"sender_key"`
	Since     string `json:"since"`
	BytesUp   int64  `json:"bytes_up"` // towards the resource
	BytesDown int64  `json:"bytes_down"`
}

// Status reports the agent's relays, connections and streams.
func (a *Agent) Status() Status {
	cfg := a.cfg.Load()
	st := Status{ID: cfg.ID, Publishing: map[string]string{}, Counters: map[string]int64{
		"streams_opened": a.opened.Load(), "streams_denied": a.denied.Load(),
		"streams_unreachable": a.unreachable.Load(), "streams_revoked": a.revoked.Load(),
		"streams_busy": a.busy.Load(), "rogue_notices": a.rogue.Load(),
	}}
	conns := map[string]*ConnectionStatus{}
	for _, c := range cfg.Connections {
		st.Publishing[c.Name] = c.Endpoint
		conns[c.Name] = &ConnectionStatus{Name: c.Name, Endpoint: c.Endpoint, Healthy: true, Relays: []string{}}
	}
	var streams []*liveStream
	a.mu.Lock()
	st.StreamsActive = len(a.streams)
	for s := range a.streams {
		streams = append(streams, s)
		if c := conns[s.hc]; c != nil {
			c.StreamsActive++
		}
	}
	for hc, h := range a.health {
		if !h.healthy {
			if st.Unhealthy == nil {
				st.Unhealthy = map[string]string{}
			}
			st.Unhealthy[hc] = h.why
			if c := conns[hc]; c != nil {
				c.Healthy, c.Why = false, h.why
			}
		}
	}
	for _, r := range a.relays {
		r.mu.Lock()
		rs := RelayStatus{Relay: r.name, Connected: r.connected, Transport: r.transport, Fallback: r.why, Parked: r.parked,
			Listening: append([]string{}, r.listening...), LastError: r.lastError}
		r.mu.Unlock()
		sort.Strings(rs.Listening)
		st.Relays = append(st.Relays, rs)
		for _, hc := range rs.Listening {
			if c := conns[hc]; c != nil && rs.Connected {
				c.Relays = append(c.Relays, rs.Relay)
			}
		}
	}
	a.mu.Unlock()
	sort.Slice(st.Relays, func(i, j int) bool { return st.Relays[i].Relay < st.Relays[j].Relay })
	for _, c := range cfg.Connections {
		cs := conns[c.Name]
		sort.Strings(cs.Relays)
		st.Connections = append(st.Connections, *cs)
	}
	sort.Slice(streams, func(i, j int) bool { return streams[i].since.After(streams[j].since) })
	if len(streams) > MaxListedStreams {
		streams = streams[:MaxListedStreams]
	}
	st.Streams = []StreamStatus{}
	for _, s := range streams {
		up, down := s.counts()
		st.Streams = append(st.Streams, StreamStatus{ID: s.ev.Stream, HC: s.hc, Relay: s.ev.Relay, Endpoint: s.endpoint,
			Sender: s.ev.SenderAddr, SenderKey: s.ev.SenderKey, Since: s.since.UTC().Format(time.RFC3339),
			BytesUp: up, BytesDown: down})
	}
	return st
}

// Ready reports whether the agent has a control channel to at least one
// relay (otherwise no stream can reach it), and says how many.
func (a *Agent) Ready() (bool, string) {
	a.mu.Lock()
	n, up := 0, 0
	var errs []string
	for _, r := range a.relays {
		r.mu.Lock()
		n++
		if r.connected {
			up++
		} else if r.lastError != "" {
			errs = append(errs, r.name+": "+r.lastError)
		}
		r.mu.Unlock()
	}
	a.mu.Unlock()
	sort.Strings(errs)
	if up == 0 {
		why := "no relay connected"
		if len(errs) > 0 {
			why += " (" + strings.Join(errs, "; ") + ")"
		}
		return false, why
	}
	return true, fmt.Sprintf("connected to %d of %d relays", up, n)
}

// Register publishes the agent's metrics, status, readiness and events on
// ad.
func (a *Agent) Register(ad *admin.Admin) {
	a.registerMetrics(ad.Registry())
	ad.Counter("hybrid_agent_rogue_notices_total", "Accept notices dropped because the relay named a rendezvous address off the relay (a hostile or misconfigured relay); nothing was dialled.",
		nil, func() float64 { return float64(a.rogue.Load()) })
	ad.AddStatus("agent", func() any { return a.Status() })
	ad.AddReady("agent", a.Ready)
	a.obs.events.Store(ad.Events())
}
