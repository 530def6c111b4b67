package proxy

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/agent"
	"github.com/hybridconn/hybrid/internal/admin"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/relaytest"
	"github.com/hybridconn/hybrid/rules"
)

// TestProxyMetricsStatusReady: with a real relay and agent, the proxy
// reports its relay link up (and ready), a live stream with its bytes
// while it runs and its setup time, failures by connection and reason,
// SOCKS requests no connection matches as "other"; when the relay goes,
// the link is down and the proxy not ready.
func TestProxyMetricsStatusReady(t *testing.T) {
	rl := relaytest.Start(t, "pg")
	acfg := &rules.Agent{ID: "agent-1", Transport: relayclient.TransportTCP, Relays: []rules.RelayEndpoint{rl.Entry},
		Connections: []rules.AgentConnection{{Name: "pg", Endpoint: echoServer(t), KeyName: relaytest.ListenKeyName, Key: relaytest.ListenKey}}}
	ag, err := agent.New(acfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(context.Background())
	adone := make(chan struct{})
	go func() { ag.Run(actx); close(adone) }()
	defer func() { acancel(); <-adone }()
	waitUntil(t, "the agent", func() bool { ok, _ := ag.Ready(); return ok })

	cfg := &rules.Proxy{Relays: []rules.RelayEndpoint{rl.Entry}, Transport: relayclient.TransportTCP, Socks: "127.0.0.1:0",
		Connections: []rules.ProxyConnection{
			{Name: "pg", Listen: "127.0.0.1:0", KeyName: relaytest.SendKeyName, Key: relaytest.SendKey},
			{Name: "nobody", Listen: "127.0.0.3:0", KeyName: relaytest.SendKeyName, Key: relaytest.SendKey}, // not at the relay
		}}
	p, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	ad := admin.New()
	p.Register(ad)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, "the relay link up", func() bool {
		v, _ := ad.Value("hybrid_proxy_relay_up", "relay", rl.Name(), "transport", "tcp")
		return v == 1
	})
	if ok, why := p.Ready(); !ok || why != "1 of 1 relay links up" {
		t.Fatalf("Ready() = %v, %q", ok, why)
	}
	listen := map[string]string{}
	for _, f := range p.Status().Forwarding {
		listen[f.HC] = f.Listen
	}

	c, err := net.Dial("tcp", listen["pg"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 3 << 20
	go c.Write(make([]byte, n))
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "bytes counted while the stream runs", func() bool {
		v, _ := ad.Value("hybrid_proxy_stream_bytes_total", "hc", "pg", "direction", "up")
		return v >= 2<<20
	})
	relaytest.Metric(t, ad, 1, "hybrid_proxy_streams_total", "hc", "pg", "result", "opened")
	relaytest.Metric(t, ad, 1, "hybrid_proxy_stream_setup_seconds", "hc", "pg")
	relaytest.Metric(t, ad, 1, "hybrid_proxy_streams_active", "hc", "pg")
	relaytest.Metric(t, ad, 0, "hybrid_proxy_streams_active", "hc", "nobody")
	st := p.Status()
	if len(st.Streams) != 1 || st.Streams[0].HC != "pg" || st.Streams[0].App != c.LocalAddr().String() || st.Streams[0].BytesUp < 2<<20 {
		t.Errorf("streams %+v, want pg from %s", st.Streams, c.LocalAddr())
	}
	if len(st.Links) != 1 || !st.Links[0].Up || !st.Links[0].Session {
		t.Errorf("links %+v", st.Links)
	}

	// A connection the relay does not have: refused, with its reason.
	if bad, err := net.Dial("tcp", listen["nobody"]); err == nil { // the reset may even beat the dial
		io.Copy(io.Discard, bad) // reset at once
		bad.Close()
	}
	waitUntil(t, "the failure counted", func() bool {
		v, _ := ad.Value("hybrid_proxy_streams_failed_total", "hc", "nobody", "reason", "not_found")
		return v == 1
	})
	relaytest.Metric(t, ad, 1, "hybrid_proxy_streams_total", "hc", "nobody", "result", "refused")
	// A SOCKS target no connection publishes counts as other.
	if code, _ := socksRequest(t, p.SocksAddr(), "", "", cmdConnect, "elsewhere.invalid", 80); code == 0 {
		t.Fatal("unmatched SOCKS target accepted")
	}
	relaytest.Metric(t, ad, 1, "hybrid_proxy_streams_total", "hc", "other", "result", "refused")
	reasons := map[string]bool{}
	for _, e := range ad.Events().List() {
		reasons[e.Reason] = true
	}
	if !reasons["not_found"] || !reasons["no_connection"] {
		t.Errorf("events %+v, want not_found and no_connection", ad.Events().List())
	}

	rl.Stop()
	waitUntil(t, "the relay link down", func() bool {
		v, ok := ad.Value("hybrid_proxy_relay_up", "relay", rl.Name())
		return ok && v == 0
	})
	if ok, why := p.Ready(); ok || !strings.HasPrefix(why, "no relay link up") {
		t.Fatalf("Ready() = %v, %q with the relay gone", ok, why)
	}
}
