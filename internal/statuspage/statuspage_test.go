package statuspage

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/agent"
	"github.com/hybridconn/hybrid/internal/admin"
	"github.com/hybridconn/hybrid/internal/events"
	"github.com/hybridconn/hybrid/proxy"
	"github.com/hybridconn/hybrid/relay"
)

// testAdmin is an Admin whose roles report fixed documents.
func testAdmin() *admin.Admin {
	ad := admin.New()
	since := time.Now().Add(-90 * time.Second).UTC().Format(time.RFC3339)
	ad.AddStatus("relay", func() any {
		return relay.Status{Namespace: "relay.example.com",
			Connections: []relay.ConnectionStatus{
				{Name: "mssql", Agents: []string{}},
				{Name: "pg", Listeners: 1, Agents: []string{"db-host-1"}, StreamsActive: 1, BytesUp: 3 << 20, RateDown: 2048},
			},
			Agents: []relay.AgentStatus{{Agent: "db-host-1", Role: "agent", Remote: "10.0.0.5:40000", Transport: "tcp",
				Since: since, Listening: []string{"pg"}, InRotation: true, Streams: 1, Parked: 4},
				{Agent: "<script>alert(1)</script>", Role: "sender", Remote: "10.0.0.9:1", Transport: "websocket", Since: since}},
			StreamsActive: 1,
			Streams: []relay.StreamStatus{{ID: "0123456789abcdef0123456789abcdef", HC: "pg", Agent: "db-host-1",
				Sender: "203.0.113.7:5000", SenderKey: "apps", Since: since, BytesUp: 100, BytesDown: 2 << 30}},
		}
	})
	ad.AddStatus("agent", func() any {
		return agent.Status{ID: "db-host-1", Relays: []agent.RelayStatus{
			{Relay: "relay-a:5671", Connected: true, Transport: "tcp", Listening: []string{"pg"}},
			{Relay: "relay-b:5671", Transport: "auto", LastError: "dial tcp: connection refused"}},
			Connections: []agent.ConnectionStatus{{Name: "pg", Endpoint: "127.0.0.1:5432", Healthy: true, Relays: []string{"relay-a:5671"}}},
			Streams:     []agent.StreamStatus{}}
	})
	ad.AddStatus("proxy", func() any {
		return proxy.Status{Forwarding: []proxy.Forward{{Listen: "127.0.0.2:5432", HC: "pg"}},
			Links:   []proxy.LinkStatus{{Relay: "relay-a:5671", Healthy: true, Session: true, Transport: "tcp", Up: true}},
			Streams: []proxy.StreamStatus{{HC: "pg", App: "127.0.0.1:50000", Since: since}}}
	})
	ad.AddStatus("config", func() any {
		return map[string]any{"file": "/etc/hybrid/hybrid.yaml", "reloads_succeeded": 2, "reloads_failed": 1,
			"last_error": "hybrid.yaml:6: proxy.connections[0].kee_name: unknown field"}
	})
	ad.AddReady("relay", func() (bool, string) { return false, "no agent listening for mssql" })
	ad.Events().Add(events.Event{Kind: events.Denial, Source: "relay", HC: "pg", Remote: "198.51.100.1:1", Reason: "unauthorized", Msg: "bad signature"})
	ad.Events().Add(events.Event{Kind: events.Denial, Source: "relay", HC: "pg", Remote: "198.51.100.1:2", Reason: "unauthorized", Msg: "bad signature"})
	return ad
}

func TestPage(t *testing.T) {
	srv := httptest.NewServer(New(testAdmin()))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	body := string(b)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
		t.Fatalf("%s %v", resp.Status, resp.Header)
	}
	tests := []struct {
		name string
		want string // a regexp over the page
	}{
		{"not ready, and why", `(?s)class="badge bad" data-ready="false">not ready<.*<li class="bad">relay: no agent listening for mssql</li>`},
		{"a connection without agent", `(?s)<tr data-connection="mssql" class="down">.*?no agent listening`},
		{"a served connection", `(?s)<tr data-connection="pg">.*?db-host-1.*?3\.0 MiB / 0 B`},
		{"its throughput", `2\.0 KiB/s`},
		{"the agent", `(?s)<tr data-agent="db-host-1" data-role="agent">.*?10\.0\.0\.5:40000.*?tcp.*?1m30s ago.*?healthy`},
		{"a hostile name, escaped", `&lt;script&gt;alert\(1\)&lt;/script&gt;`},
		{"the live stream", `(?s)<tr data-stream="0123456789abcdef0123456789abcdef" data-hc="pg">.*?203\.0\.113\.7:5000.*?apps.*?100 B / 2\.0 GiB`},
		{"an agent's relay link down", `(?s)<tr data-link="relay-b:5671" class="down">.*?not connected.*?connection refused`},
		{"a proxy link up", `(?s)<tr data-link="relay-a:5671">\s*<td data-label="relay"><b>relay-a:5671</b></td>\s*<td data-label="state"><span class="ok">up`},
		{"a proxy stream", `<tr data-stream="127\.0\.0\.1:50000" data-hc="pg">`},
		{"a folded denial", `(?s)<tr data-event="denial" class="denial">.*?denial: unauthorized <b>×2</b>.*?bad signature`},
		{"the last reload error", `last refused:</span> <span class="err">hybrid\.yaml:6: proxy\.connections\[0\]\.kee_name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !regexp.MustCompile(tt.want).MatchString(body) {
				t.Errorf("page lacks %s", tt.want)
			}
		})
	}
	if strings.Contains(body, "<script>alert") {
		t.Error("an agent's name reached the page unescaped")
	}
}

func TestAssets(t *testing.T) {
	srv := httptest.NewServer(New(testAdmin()))
	defer srv.Close()
	for _, tt := range []struct{ path, ctype, want string }{
		{"/ui/style.css", "text/css", "@media (max-width: 40em)"},
		{"/ui/page.js", "javascript", "DOMParser"},
	} {
		t.Run(tt.path, func(t *testing.T) {
			resp, err := http.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), tt.ctype) || !strings.Contains(string(b), tt.want) {
				t.Errorf("%s: %s %q", tt.path, resp.Status, resp.Header.Get("Content-Type"))
			}
		})
	}
}

func TestHumanUnits(t *testing.T) {
	for _, tt := range []struct {
		n    int64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"}, {5 << 20, "5.0 MiB"}, {3 << 40, "3.0 TiB"}} {
		if got := humanBytes(tt.n); got != tt.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{{-time.Second, "0s"}, {45 * time.Second, "45s"}, {192 * time.Second, "3m12s"},
		{2*time.Hour + 5*time.Minute, "2h05m"}, {76 * time.Hour, "3d4h"}} {
		if got := Duration(tt.d); got != tt.want {
			t.Errorf("Duration(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
	if got := humanRate(0.5); got != "–" {
		t.Errorf("humanRate(0.5) = %q", got)
	}
}
