package relay

import (
	"sort"

	"github.com/hybridconn/hybrid/internal/admin"
)

// Status is the relay's part of /status.
type Status struct {
	Namespace     string           `json:"namespace"`
	Agents        []AgentStatus    `json:"agents"`
	Listening     map[string]int   `json:"listening"` // agents per hybrid connection
	StreamsActive int              `json:"streams_active"`
	Counters      map[string]int64 `json:"counters"`
}

// AgentStatus is one control channel.
type AgentStatus struct {
	Agent     string   `json:"agent"`
	Remote    string   `json:"remote"`
	Listening []string `json:"listening"`
}

// Status reports who is connected and what moved.
func (s *Server) Status() Status {
	c := s.core
	st := Status{Namespace: s.cfg.Load().Namespace, Listening: map[string]int{}, Counters: c.counters()}
	c.mu.Lock()
	for sess := range c.sessions {
		sess.mu.Lock()
		as := AgentStatus{Agent: sess.agent, Remote: sess.remote, Listening: []string{}}
		for hc := range sess.attached {
			as.Listening = append(as.Listening, hc)
		}
		sess.mu.Unlock()
		sort.Strings(as.Listening)
		st.Agents = append(st.Agents, as)
	}
	for hc, l := range c.hcs {
		st.Listening[hc] = len(l.sessions)
	}
	st.StreamsActive = len(c.streams)
	c.mu.Unlock()
	sort.Slice(st.Agents, func(i, j int) bool { return st.Agents[i].Remote < st.Agents[j].Remote })
	return st
}

func (c *Core) counters() map[string]int64 {
	return map[string]int64{
		"streams_opened": c.stats.StreamsOpened.Load(),
		"streams_failed": c.stats.StreamsFailed.Load(),
		"auth_failures":  c.stats.AuthFailures.Load(),
		"bytes_up":       c.stats.BytesUp.Load(),
		"bytes_down":     c.stats.BytesDown.Load(),
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
