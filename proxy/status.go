package proxy

import (
	"fmt"
	"sort"
	"time"

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
	// Streams are the live streams, newest first, at most
	// MaxListedStreams of them (StreamsActive counts them all).
	Streams []StreamStatus `json:"streams"`
}

// MaxListedStreams bounds the streams a status document lists.
const MaxListedStreams = 100

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
	// Up is what hybrid_proxy_relay_up says: in the spread with its
	// session connected (WebSocket links have none).
	Up bool `json:"up"`
}

// Forward is one local listener.
type Forward struct {
	Listen string `json:"listen"`
	HC     string `json:"hc"`
}

// StreamStatus is one live stream.
type StreamStatus struct {
	HC        string `json:"hc"`
	App       string `json:"app"` // the app's address
	Since     string `json:"since"`
	BytesUp   int64  `json:"bytes_up"` // from the app
	BytesDown int64  `json:"bytes_down"`
}

// links returns each relay link as it is now.
func (p *Proxy) links() []LinkStatus {
	var out []LinkStatus
	for _, l := range p.relays.Load().links {
		l.mu.Lock()
		ls := LinkStatus{Relay: l.client.String(), Healthy: !l.down, Session: l.ctl != nil, Transport: l.client.Transport(),
			Fallback: fallbackOf(l.client), Warm: len(l.warm), Streams: l.opened.Load(), LastError: l.lastErr}
		l.mu.Unlock()
		ls.Up = linkUp(ls)
		out = append(out, ls)
	}
	return out
}

// Status reports the proxy's listeners and streams.
func (p *Proxy) Status() Status {
	st := Status{Counters: map[string]int64{"streams_opened": p.opened.Load(), "streams_refused": p.refused.Load(),
		"socks_bad_handshakes": p.socksBad.Load(), "socks_busy": p.socksBusy.Load()}}
	st.Links = p.links()
	for _, l := range st.Links {
		st.Relays = append(st.Relays, l.Relay)
	}
	var streams []*flow
	p.mu.Lock()
	for _, m := range p.mappings {
		st.Forwarding = append(st.Forwarding, Forward{Listen: m.ln.Addr().String(), HC: m.conn.Load().Name})
	}
	st.StreamsActive = len(p.streams)
	for _, s := range p.streams {
		streams = append(streams, s)
	}
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
	sort.Slice(streams, func(i, j int) bool { return streams[i].since.After(streams[j].since) })
	if len(streams) > MaxListedStreams {
		streams = streams[:MaxListedStreams]
	}
	st.Streams = []StreamStatus{}
	for _, s := range streams {
		st.Streams = append(st.Streams, StreamStatus{HC: s.hc, App: s.app, Since: s.since.UTC().Format(time.RFC3339),
			BytesUp: s.up.Load(), BytesDown: s.down.Load()})
	}
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

// Ready reports whether at least one relay link serves streams (see
// LinkStatus.Up).
func (p *Proxy) Ready() (bool, string) {
	ls := p.links()
	up := 0
	last := ""
	for _, l := range ls {
		if l.Up {
			up++
		} else if l.LastError != "" {
			last = l.Relay + ": " + l.LastError
		}
	}
	if up == 0 {
		why := "no relay link up"
		if last != "" {
			why += " (" + last + ")"
		}
		return false, why
	}
	return true, fmt.Sprintf("%d of %d relay links up", up, len(ls))
}

// Register publishes the proxy's metrics, status, readiness and events on
// a.
func (p *Proxy) Register(a *admin.Admin) {
	p.registerMetrics(a.Registry())
	a.Gauge("hybrid_proxy_listeners", "Local listeners open.", nil, func() float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		return float64(len(p.mappings))
	})
	a.Counter("hybrid_proxy_socks_failed_handshakes_total", "SOCKS5 handshakes that failed: garbage, stalled, bad credentials, or over the limit of clients in their handshake.",
		nil, func() float64 { return float64(p.socksBad.Load() + p.socksBusy.Load()) })
	a.AddStatus("proxy", func() any { return p.Status() })
	a.AddReady("proxy", p.Ready)
	p.obs.events.Store(a.Events())
}
