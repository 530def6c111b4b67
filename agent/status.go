package agent

import (
	"sort"

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
}

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

// Status reports the agent's relays, connections and streams.
func (a *Agent) Status() Status {
	cfg := a.cfg.Load()
	st := Status{ID: cfg.ID, Publishing: map[string]string{}, Counters: map[string]int64{
		"streams_opened": a.opened.Load(), "streams_denied": a.denied.Load(),
		"streams_unreachable": a.unreachable.Load(), "streams_revoked": a.revoked.Load(),
		"streams_busy": a.busy.Load(), "rogue_notices": a.rogue.Load(),
	}}
	for _, c := range cfg.Connections {
		st.Publishing[c.Name] = c.Endpoint
	}
	a.mu.Lock()
	st.StreamsActive = len(a.streams)
	for hc, h := range a.health {
		if !h.healthy {
			if st.Unhealthy == nil {
				st.Unhealthy = map[string]string{}
			}
			st.Unhealthy[hc] = h.why
		}
	}
	for _, r := range a.relays {
		r.mu.Lock()
		rs := RelayStatus{Relay: r.name, Connected: r.connected, Transport: r.transport, Fallback: r.why, Parked: r.parked,
			Listening: append([]string{}, r.listening...), LastError: r.lastError}
		r.mu.Unlock()
		sort.Strings(rs.Listening)
		st.Relays = append(st.Relays, rs)
	}
	a.mu.Unlock()
	sort.Slice(st.Relays, func(i, j int) bool { return st.Relays[i].Relay < st.Relays[j].Relay })
	return st
}

// Register publishes the agent's metrics and status on ad.
func (a *Agent) Register(ad *admin.Admin) {
	for name, v := range map[string]interface{ Load() int64 }{
		"opened": &a.opened, "denied": &a.denied, "unreachable": &a.unreachable, "revoked": &a.revoked, "busy": &a.busy,
	} {
		ad.Counter("hybrid_agent_streams_total", "Streams by outcome: opened, denied (not published or outside allow), unreachable (resource down), revoked (cut by a reload), busy (over max_streams).",
			map[string]string{"result": name}, func() float64 { return float64(v.Load()) })
	}
	ad.Counter("hybrid_agent_rogue_notices_total", "Accept notices dropped because the relay named a rendezvous address off the relay (a hostile or misconfigured relay); nothing was dialled.",
		nil, func() float64 { return float64(a.rogue.Load()) })
	ad.Gauge("hybrid_agent_streams_active", "Streams being copied.", nil, func() float64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		return float64(len(a.streams))
	})
	ad.AddStatus("agent", func() any { return a.Status() })
}
