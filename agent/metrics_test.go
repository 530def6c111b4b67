package agent

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/admin"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/relaytest"
	"github.com/hybridconn/hybrid/rules"
)

// TestAuditCloseShape: every close line carries its bytes and duration, 0
// included; other lines leave them out.
func TestAuditCloseShape(t *testing.T) {
	tests := []struct {
		name    string
		ev      AuditEvent
		want    []string
		without []string
	}{
		{"close with zeros", AuditEvent{Event: "close", HC: "pg"},
			[]string{`"bytes_to_resource":0`, `"bytes_from_resource":0`, `"duration_ms":0`}, nil},
		{"close with bytes", AuditEvent{Event: "close", HC: "pg", BytesIn: 5, BytesOut: 7, DurationMS: 12},
			[]string{`"bytes_to_resource":5`, `"bytes_from_resource":7`, `"duration_ms":12`}, nil},
		{"http exchange with no body", AuditEvent{Event: "http", HC: "pg", Method: "GET", Status: 204, BytesOut: 0},
			[]string{`"bytes_to_resource":0`, `"bytes_from_resource":0`, `"duration_ms":0`, `"status":204`}, nil},
		{"deny", AuditEvent{Event: "deny", HC: "pg", Reason: "no"}, []string{`"reason":"no"`},
			[]string{"bytes_to_resource", "bytes_from_resource", "duration_ms"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.ev)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(string(b), w) {
					t.Errorf("%s lacks %s", b, w)
				}
			}
			for _, w := range tt.without {
				if strings.Contains(string(b), w) {
					t.Errorf("%s has %s", b, w)
				}
			}
			if strings.Count(string(b), "bytes_to_resource") > 1 {
				t.Errorf("%s: a field twice", b)
			}
			var back AuditEvent
			if err := json.Unmarshal(b, &back); err != nil || back.BytesIn != tt.ev.BytesIn || back.HC != "pg" {
				t.Errorf("round trip: %+v, %v", back, err)
			}
		})
	}
}

// TestAgentMetricsStatusReady: with a real relay, the agent reports its
// relay link up (and ready), a live stream with its bytes counted while it
// runs, per-connection results; when the relay goes, the link is down and
// the agent not ready, saying why.
func TestAgentMetricsStatusReady(t *testing.T) {
	rl := relaytest.Start(t, "pg")
	resource := relaytest.Echo(t)
	cfg := &rules.Agent{ID: "agent-7", Transport: relayclient.TransportTCP, Relays: []rules.RelayEndpoint{rl.Entry},
		Connections: []rules.AgentConnection{
			{Name: "pg", Endpoint: resource, KeyName: relaytest.ListenKeyName, Key: relaytest.ListenKey},
			{Name: "other", Endpoint: "127.0.0.1:1", KeyName: relaytest.ListenKeyName, Key: relaytest.ListenKey}, // the relay lacks it
		}}
	a, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	ad := admin.New()
	a.Register(ad)
	if ok, why := a.Ready(); ok || why != "no relay connected" {
		t.Fatalf("Ready() = %v, %q before Run", ok, why)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	relayName := rl.Name()
	relaytest.Eventually(t, "relay link up", func() bool {
		v, _ := ad.Value("hybrid_agent_relay_up", "relay", relayName, "transport", "tcp")
		return v == 1
	})
	if ok, why := a.Ready(); !ok || why != "connected to 1 of 1 relays" {
		t.Fatalf("Ready() = %v, %q", ok, why)
	}
	relaytest.Eventually(t, "the relay refusing other", func() bool {
		for _, e := range ad.Events().List() {
			if e.HC == "other" && e.Source == "agent" && strings.Contains(e.Msg, "relay refused to let us listen") {
				return true
			}
		}
		return false
	})

	octx, ocancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer ocancel()
	c, err := relayclient.New(rl.Endpoint).Open(octx, "pg", relaytest.SendToken("pg"), "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 3 << 20
	go c.Write(make([]byte, n))
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "bytes counted while the stream runs", func() bool {
		v, _ := ad.Value("hybrid_agent_stream_bytes_total", "hc", "pg", "direction", "down")
		return v >= 2<<20
	})
	relaytest.Metric(t, ad, 1, "hybrid_agent_streams_total", "hc", "pg", "result", "opened")
	relaytest.Metric(t, ad, 0, "hybrid_agent_streams_total", "hc", "other", "result", "denied")
	relaytest.Metric(t, ad, 1, "hybrid_agent_streams_active", "hc", "pg")
	relaytest.Metric(t, ad, 0, "hybrid_agent_streams_active", "hc", "other")
	st := a.Status()
	if len(st.Streams) != 1 || st.Streams[0].HC != "pg" || st.Streams[0].SenderKey != "apps" || st.Streams[0].BytesDown < 2<<20 {
		t.Errorf("streams %+v", st.Streams)
	}
	if len(st.Connections) != 2 || st.Connections[0].Name != "pg" || strings.Join(st.Connections[0].Relays, ",") != relayName ||
		st.Connections[0].StreamsActive != 1 || len(st.Connections[1].Relays) != 0 {
		t.Errorf("connections %+v", st.Connections)
	}
	c.Close()

	rl.Stop()
	relaytest.Eventually(t, "relay link down", func() bool {
		v, ok := ad.Value("hybrid_agent_relay_up", "relay", relayName)
		return ok && v == 0
	})
	if ok, why := a.Ready(); ok || !strings.HasPrefix(why, "no relay connected ("+relayName+": ") {
		t.Fatalf("Ready() = %v, %q with the relay gone", ok, why)
	}
}
