package proxy

import (
	"sort"

	"github.com/hybridconn/hybrid/internal/admin"
	"github.com/hybridconn/hybrid/internal/relayclient"
)

// Status is the proxy's part of /status.
type Status struct {
	Forwarding []Forward         `json:"forwarding"`
	Socks      string            `json:"socks,omitempty"`      // SOCKS5 listen address
	HostsFile  string            `json:"hosts_file,omitempty"` // hosts mode's file
	Hosts      map[string]string `json:"hosts,omitempty"`      // name → loopback address
	Relays     []string          `json:"relays"`
	// Links is each relay as the proxy sees it: in the spread or out of it
	// (and why), its session and warm connections.
	Links         []LinkStatus     `json:"links"`
	StreamsActive int              `json:"streams_active"`
	Counters      map[string]int64 `json:"counters"`
}

// LinkStatus is the proxy's view of one relay.
type LinkStatus struct {
	Relay     string `json:"relay"`
	Healthy   bool   `json:"healthy"`
	Session   bool   `json:"session"`
	Transport string `json:"transport"`
	Fallback  string `json:"fallback,omitempty"` // why transport auto uses WebSocket
	Warm      int    `json:"warm"`
	Streams   int64  `json:"streams_opened"`
	LastError string `json:"last_error,omitempty"`
}

// Forward is one local listener.
type Forward struct {
	Listen string `json:"listen"`
	HC     string `json:"hc"`
}

// Status reports the proxy's listeners and streams.
func (p *Proxy) Status() Status {
	st := Status{Counters: map[string]int64{"streams_opened": p.opened.Load(), "streams_refused": p.refused.Load(),
		"socks_bad_handshakes": p.socksBad.Load(), "socks_busy": p.socksBusy.Load()}}
	for _, l := range p.relays.Load().links {
		st.Relays = append(st.Relays, l.client.String())
		l.mu.Lock()
		st.Links = append(st.Links, LinkStatus{Relay: l.client.String(), Healthy: !l.down,
			Session: l.ctl != nil, Transport: l.client.Transport(), Fallback: fallbackOf(l.client), Warm: len(l.warm), Streams: l.opened.Load(), LastError: l.lastErr})
		l.mu.Unlock()
	}
	p.mu.Lock()
	for _, m := range p.mappings {
		st.Forwarding = append(st.Forwarding, Forward{Listen: m.ln.Addr().String(), HC: m.conn.Load().Name})
	}
	st.StreamsActive = len(p.streams)
	if p.socks != nil {
		st.Socks = p.socks.ln.Addr().String()
	}
	if p.hosts != nil {
		st.HostsFile = p.hosts.file
		st.Hosts = map[string]string{}
		for _, e := range p.hosts.entries {
			st.Hosts[e.Name] = e.Addr.String()
		}
	}
	p.mu.Unlock()
	sort.Slice(st.Forwarding, func(i, j int) bool { return st.Forwarding[i].Listen < st.Forwarding[j].Listen })
	return st
}

// fallbackOf says why c (transport auto) uses WebSocket, or "".
func fallbackOf(c relayclient.Client) string {
	if f, ok := c.(relayclient.Fallbacker); ok {
		if err := f.Fallback(); err != nil {
			return err.Error()
		}
	}
	return ""
}

// Register publishes the proxy's metrics and status on a.
func (p *Proxy) Register(a *admin.Admin) {
	a.Counter("hybrid_proxy_streams_total", "Streams by outcome.", map[string]string{"result": "opened"},
		func() float64 { return float64(p.opened.Load()) })
	a.Counter("hybrid_proxy_streams_total", "Streams by outcome.", map[string]string{"result": "refused"},
		func() float64 { return float64(p.refused.Load()) })
	a.Gauge("hybrid_proxy_streams_active", "Streams being copied.", nil, func() float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		return float64(len(p.streams))
	})
	a.Gauge("hybrid_proxy_listeners", "Local listeners open.", nil, func() float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		return float64(len(p.mappings))
	})
	a.Counter("hybrid_proxy_socks_failed_handshakes_total", "SOCKS5 handshakes that failed: garbage, stalled, bad credentials, or over the limit of clients in their handshake.",
		nil, func() float64 { return float64(p.socksBad.Load() + p.socksBusy.Load()) })
	a.AddStatus("proxy", func() any { return p.Status() })
}
