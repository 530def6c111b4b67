package relay

import (
	"fmt"
	"sort"
	"strings"
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
	// Connections is every configured hybrid connection (and "other" for
	// streams or agents of names the config no longer has), by name.
	Connections []ConnectionStatus `json:"connections"`
	// Streams are the live streams, newest first, at most MaxListedStreams
	// of them (StreamsActive counts them all).
	Streams []StreamStatus `json:"streams"`
}

// MaxListedStreams bounds the streams a status document lists.
const MaxListedStreams = 100

// AgentStatus is one control channel: an agent's, or a sender's (role
// "sender": a proxy's session).
type AgentStatus struct {
	Agent     string   `json:"agent"` // the agent's id (agent.id: its host name by default)
	Role      string   `json:"role"`
	Remote    string   `json:"remote"`
	Transport string   `json:"transport"` // tcp (native) or websocket
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

// ConnectionStatus is one hybrid connection at the relay.
type ConnectionStatus struct {
	Name string `json:"name"`
	// Listeners is how many agents listen for it here; 0: its streams are
	// refused with "no agent listening", unless Remote.
	Listeners int `json:"listeners"`
	// Remote is true when another relay of the fleet has an agent for it:
	// streams landing here are carried there.
	Remote bool `json:"remote,omitempty"`
	// Agents are the ids of the agents listening.
	Agents        []string `json:"agents"`
	StreamsActive int      `json:"streams_active"`
	// BytesUp (sender to agent) and BytesDown count every stream's bytes
	// so far, live ones included.
	BytesUp   int64 `json:"bytes_up"`
	BytesDown int64 `json:"bytes_down"`
	// RateUp and RateDown are bytes per second over the last few seconds
	// (between status reads at least 2 s apart; on the first read, the
	// live streams' averages since they started).
	RateUp   float64 `json:"bytes_per_second_up"`
	RateDown float64 `json:"bytes_per_second_down"`
}

// StreamStatus is one live stream.
type StreamStatus struct {
	ID          string `json:"id"`
	HC          string `json:"hc"`
	Agent       string `json:"agent"`        // the agent's id
	AgentRemote string `json:"agent_remote"` // its control channel's address (for a stream carried to another relay of the fleet: that relay's)
	Sender      string `json:"sender"`       // the sender's address ("" until the stream starts)
	SenderKey   string `json:"sender_key"`
	Since       string `json:"since"`
	BytesUp     int64  `json:"bytes_up"`
	BytesDown   int64  `json:"bytes_down"`
}

// Status reports who is connected and what moved.
func (s *Server) Status() Status {
	c := s.core
	st := Status{Namespace: s.cfg.Load().Namespace, Listening: map[string]int{}, Counters: c.counters()}
	for _, conn := range s.cfg.Load().Connections {
		st.Listening[conn.Name] = 0 // shown even with no agent
	}
	totals, active := c.byteTotals()
	now := time.Now()
	rates := c.observer().throughput(now, totals)
	conns := map[string]*ConnectionStatus{}
	connOf := func(label string) *ConnectionStatus {
		cs := conns[label]
		if cs == nil {
			cs = &ConnectionStatus{Name: label, Agents: []string{}}
			conns[label] = cs
		}
		return cs
	}
	for _, n := range c.configured() {
		connOf(n)
	}
	type live struct {
		st    *activeStream
		agent string
		addr  string
	}
	var streams []live
	c.mu.Lock()
	for sess := range c.sessions {
		rank, load := sess.rank("", now)
		sess.mu.Lock()
		as := AgentStatus{Agent: sess.name, Role: roleName(sess.role), Remote: sess.remote, Transport: transportOf(sess.conn),
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
		if len(l.listeners) > 0 {
			cs := connOf(c.hcLabel(hc))
			cs.Listeners += len(l.listeners)
			for _, sess := range l.listeners {
				cs.Agents = append(cs.Agents, sess.name)
			}
		}
	}
	st.StreamsActive = len(c.streams)
	if c.fleet != nil {
		fs := c.fleet.Status()
		st.Fleet = &fs
	}
	average := map[string][2]float64{} // the live streams' rates since they started
	for a := range c.streams {
		if age := now.Sub(a.start).Seconds(); age > 0 {
			l := c.hcLabel(a.hc)
			r := average[l]
			average[l] = [2]float64{r[0] + float64(a.joint.AToB.Load())/age, r[1] + float64(a.joint.BToA.Load())/age}
		}
		l := live{st: a}
		if a.agentSession != nil {
			l.agent, l.addr = a.agentSession.name, a.agentSession.remote
		}
		streams = append(streams, l)
	}
	c.mu.Unlock()
	sort.Slice(st.Agents, func(i, j int) bool { return st.Agents[i].Remote < st.Agents[j].Remote })
	if rates == nil {
		rates = average // no sample to compare with yet
	}
	for label, t := range totals {
		cs := connOf(label)
		cs.BytesUp, cs.BytesDown = t[0], t[1]
		cs.StreamsActive = active[label]
		r := rates[label]
		cs.RateUp, cs.RateDown = r[0], r[1]
	}
	for _, n := range sortedKeys(conns) {
		cs := conns[n]
		cs.Remote = c.fleet != nil && s.known(n) && c.fleet.HasRemote(n)
		sort.Strings(cs.Agents)
		st.Connections = append(st.Connections, *cs)
	}

	sort.Slice(streams, func(i, j int) bool { return streams[i].st.start.After(streams[j].st.start) })
	if len(streams) > MaxListedStreams {
		streams = streams[:MaxListedStreams]
	}
	st.Streams = []StreamStatus{}
	for _, l := range streams {
		a := l.st
		sender, agentSide := c.obs.peersOf(a)
		if l.addr == "" {
			l.addr = agentSide // carried to another relay
		}
		st.Streams = append(st.Streams, StreamStatus{ID: a.id.String(), HC: a.hc, Agent: l.agent, AgentRemote: l.addr,
			Sender: sender, SenderKey: a.senderKey, Since: a.start.UTC().Format(time.RFC3339),
			BytesUp: a.joint.AToB.Load(), BytesDown: a.joint.BToA.Load()})
	}
	return st
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Serving reports whether the relay takes new control channels and
// streams: false once it is stopping (it told its clients to go away).
func (s *Server) Serving() (bool, string) {
	c := s.core
	c.mu.Lock()
	stopping := c.goingAway
	c.mu.Unlock()
	if stopping {
		return false, "stopping: clients were told to go away"
	}
	return true, "serving"
}

// Ready reports whether every configured connection has an agent
// listening here, or in a fleet at another relay, and if not which lack
// one: a load balancer that carries only senders should send them
// elsewhere meanwhile. (One that also carries the agents' control channels
// must not gate on it: a relay without agents would then never get one.
// See docs/decisions.md.)
func (s *Server) Ready() (bool, string) {
	c := s.core
	counts := c.listenerCounts()
	var missing []string
	n := 0
	for _, name := range c.configured() {
		n++
		if counts[name] == 0 && (c.fleet == nil || !c.fleet.HasRemote(name)) {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return false, fmt.Sprintf("no agent listening for %s", strings.Join(missing, ", "))
	}
	return true, fmt.Sprintf("every connection (%d) has an agent listening", n)
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

// Register publishes the relay's metrics, status, readiness and events on
// a; the relay then also serves a's paths on its http listener.
func (s *Server) Register(a *admin.Admin) {
	c := s.core
	count := func(name, help string, v func() int64) {
		a.Counter(name, help, nil, func() float64 { return float64(v()) })
	}
	c.registerMetrics(a.Registry())
	count("hybrid_relay_auth_failures_total", "Failed authentications (bad, expired, or wrong-right tokens).", c.stats.AuthFailures.Load)
	count("hybrid_relay_bytes_up_total", "Deprecated (use hybrid_relay_stream_bytes_total): bytes from senders to agents, counted when streams end.", c.stats.BytesUp.Load)
	count("hybrid_relay_bytes_down_total", "Deprecated (use hybrid_relay_stream_bytes_total): bytes from agents to senders, counted when streams end.", c.stats.BytesDown.Load)
	a.Gauge("hybrid_relay_agents", "Control channels connected (agents, and proxies' sessions).", nil, func() float64 {
		return float64(c.sessionCount())
	})
	a.AddStatus("relay", func() any { return s.Status() })
	a.AddReady("relay", s.Serving)
	a.AddReady("listeners", s.Ready)
	c.setEvents(a.Events())
	s.admin = a
}
