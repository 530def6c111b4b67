package relay

import (
	"sort"
	"time"

	"github.com/hybridconn/hybrid/internal/admin"
)

// Status is the relay's part of /status.
type Status struct {
	Namespace     string         `json:"namespace"`
	Agents        []AgentStatus  `json:"agents"`
	Listening     map[string]int `json:"listening"` // agents per hybrid connection
	StreamsActive int            `json:"streams_active"`
	// Fleet is set when the relay belongs to a fleet.
	Fleet    *FleetStatus     `json:"fleet,omitempty"`
	Counters map[string]int64 `json:"counters"`
}

// AgentStatus is one control channel: an agent's, or a sender's (role
// "sender": a proxy's session).
type AgentStatus struct {
	Agent     string   `json:"agent"`
	Role      string   `json:"role"`
	Remote    string   `json:"remote"`
	Since     string   `json:"since"`
	Listening []string `json:"listening"`
	// Unhealthy lists the connections whose endpoint the agent reports
	// unreachable, with why.
	Unhealthy map[string]string `json:"unhealthy,omitempty"`
	// InRotation is false while the agent is skipped for new streams (it
	// missed a join or a ping).
	InRotation bool `json:"in_rotation"`
	Streams    int  `json:"streams"`
	Parked     int  `json:"parked"`
}

// Status reports who is connected and what moved.
func (s *Server) Status() Status {
	c := s.core
	st := Status{Namespace: s.cfg.Load().Namespace, Listening: map[string]int{}, Counters: c.counters()}
	for _, conn := range s.cfg.Load().Connections {
		st.Listening[conn.Name] = 0 // shown even with no agent
	}
	now := time.Now()
	c.mu.Lock()
	for sess := range c.sessions {
		rank, load := sess.rank("", now)
		sess.mu.Lock()
		as := AgentStatus{Agent: sess.name, Role: roleName(sess.role), Remote: sess.remote,
			Since: sess.since.UTC().Format(time.RFC3339), Listening: []string{}, InRotation: rank < 2,
			Streams: load, Parked: len(sess.parked)}
		for hc, a := range sess.attached {
			as.Listening = append(as.Listening, hc)
			if !a.healthy {
				if as.Unhealthy == nil {
					as.Unhealthy = map[string]string{}
				}
				as.Unhealthy[hc] = a.why
			}
		}
		sess.mu.Unlock()
		sort.Strings(as.Listening)
		st.Agents = append(st.Agents, as)
	}
	for hc, l := range c.hcs {
		if len(l.listeners) > 0 || s.known(hc) {
			st.Listening[hc] = len(l.listeners)
		}
	}
	st.StreamsActive = len(c.streams)
	if c.fleet != nil {
		fs := c.fleet.Status()
		st.Fleet = &fs
	}
	c.mu.Unlock()
	sort.Slice(st.Agents, func(i, j int) bool { return st.Agents[i].Remote < st.Agents[j].Remote })
	return st
}

// known reports whether hc is a configured connection.
func (s *Server) known(hc string) bool {
	for _, c := range s.cfg.Load().Connections {
		if c.Name == hc {
			return true
		}
	}
	return false
}

func (c *Core) counters() map[string]int64 {
	return map[string]int64{
		"streams_opened":  c.stats.StreamsOpened.Load(),
		"streams_failed":  c.stats.StreamsFailed.Load(),
		"auth_failures":   c.stats.AuthFailures.Load(),
		"bytes_up":        c.stats.BytesUp.Load(),
		"bytes_down":      c.stats.BytesDown.Load(),
		"streams_retried": c.stats.Retried.Load(),
		"streams_busy":    c.stats.Busy.Load(),
	}
}

// Register publishes the relay's metrics and status on a; the relay then
// also serves a's /metrics and /status on its http listener.
func (s *Server) Register(a *admin.Admin) {
	c := s.core
	count := func(name, help string, v func() int64) {
		a.Counter(name, help, nil, func() float64 { return float64(v()) })
	}
	count("hybrid_relay_streams_opened_total", "Streams paired and started.", c.stats.StreamsOpened.Load)
	count("hybrid_relay_streams_failed_total", "Streams refused or failed before starting.", c.stats.StreamsFailed.Load)
	count("hybrid_relay_auth_failures_total", "Failed authentications (bad, expired, or wrong-right tokens).", c.stats.AuthFailures.Load)
	count("hybrid_relay_bytes_up_total", "Bytes from senders to agents, counted when streams end.", c.stats.BytesUp.Load)
	count("hybrid_relay_bytes_down_total", "Bytes from agents to senders, counted when streams end.", c.stats.BytesDown.Load)
	gauge := func(name, help string, f func() int) {
		a.Gauge(name, help, nil, func() float64 {
			c.mu.Lock()
			defer c.mu.Unlock()
			return float64(f())
		})
	}
	gauge("hybrid_relay_agents", "Agent control channels connected.", func() int { return len(c.sessions) })
	gauge("hybrid_relay_streams_active", "Streams being copied.", func() int { return len(c.streams) })
	a.AddStatus("relay", func() any { return s.Status() })
	s.admin = a
}
