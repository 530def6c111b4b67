package integration

// The status page, metrics, readiness and logs, end to end: relay, agent
// and proxy as separate processes, the page rendered by a real headless
// Chromium (Debian's chromium) while a stream is live, the metrics the
// shipped alerts use scraped from all three, /readyz in both states.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hybridconn/hybrid/agent"
	"github.com/hybridconn/hybrid/internal/testenv"
	"github.com/hybridconn/hybrid/relay"
)

// chromiumFlags are what Chromium needs here: no sandbox as root, no GPU,
// and nothing that calls home (the machine's network is closed).
var chromiumFlags = []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"}

// chromium returns the path of Debian's chromium, or skips (fails under CI).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.SkipOrFail(t, "chromium not found (Debian package chromium; see .ci/run)")
	return ""
}

// renderedDOM loads url in headless Chromium, lets its scripts run for
// budget of virtual time (the page refreshes itself meanwhile) and returns
// the DOM as rendered then.
func renderedDOM(t *testing.T, url string, budget time.Duration, extra ...string) string {
	t.Helper()
	bin := chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append(append(append([]string{}, chromiumFlags...), extra...), "--user-data-dir="+t.TempDir(),
		fmt.Sprintf("--virtual-time-budget=%d", budget.Milliseconds()), "--dump-dom", url)
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || !strings.Contains(string(out), "</html>") {
		t.Fatalf("chromium --dump-dom %s: %v\n%s\nstderr:\n%s", url, err, out, tailLines(stderr.String(), 20))
	}
	return string(out)
}

// row returns the table row of dom whose opening tag has attr="value".
func row(t *testing.T, dom, attr, value string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<tr [^>]*` + regexp.QuoteMeta(attr+`="`+value+`"`) + `[^>]*>.*?</tr>`).FindString(dom)
	if m == "" {
		t.Fatalf("no row with %s=%q in the rendered page:\n%s", attr, value, dom)
	}
	return m
}

// httpGet returns the status and body of a GET.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// getStatus decodes a role's /status.
func getStatus(t *testing.T, base string) (st struct {
	Relay *relay.Status `json:"relay"`
	Agent *agent.Status `json:"agent"`
}) {
	t.Helper()
	code, body := httpGet(t, base+"/status")
	if code != 200 {
		t.Fatalf("%s/status: %d %s", base, code, body)
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("%s/status: %v", base, err)
	}
	return st
}

// alertMetrics returns the hybrid_* metric names the expressions of
// deploy/prometheus/alerts.yaml use.
func alertMetrics(t *testing.T) []string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "prometheus", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	seen := map[string]bool{}
	var out []string
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			for _, m := range regexp.MustCompile(`\bhybrid_[a-z_]+`).FindAllString(r.Expr, -1) {
				if !seen[m] {
					seen[m] = true
					out = append(out, m)
				}
			}
		}
	}
	if len(out) < 5 {
		t.Fatalf("alerts.yaml uses only %v", out)
	}
	return out
}

// TestE2EStatusAndMetrics runs relay, agent and proxy with a live stream
// and a refused one, then checks the three status pages as Chromium renders
// them, the metrics the alerts use, and the log lines a stream leaves.
func TestE2EStatusAndMetrics(t *testing.T) {
	e := newRLEnv(t, "sink", "mssql")
	sink := startSinkSource(t)
	e.startAgent(t, rlAgentCfg{Pubs: pubs(sink, "sink")})
	proxyAdmin := freeAddr(t, "127.0.0.4")
	sinkListen, mssqlListen := freeAddr(t, "127.0.0.2"), freeAddr(t, "127.0.0.2")
	pcfg := rlProxyCfg{Admin: proxyAdmin, Maps: []rlMap{{Name: "sink", Listen: sinkListen}, {Name: "mssql", Listen: mssqlListen}}}
	px := e.writeProxy(t, pcfg)

	// A live stream: the sink/source's echo, used once, then held open.
	live, err := net.Dial("tcp", sinkListen)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	live.SetDeadline(time.Now().Add(time.Minute))
	if _, err := live.Write([]byte("Ehello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(live, make([]byte, 5)); err != nil {
		t.Fatalf("echo through the tunnel: %v", err)
	}
	// A refused one: mssql has no agent.
	if c, err := net.Dial("tcp", mssqlListen); err == nil {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.Copy(io.Discard, c)
		c.Close()
	}

	var rst *relay.Status
	waitFor(t, "the relay to list the live stream", 10*time.Second, func() bool {
		rst = getStatus(t, e.RelayURL()).Relay
		return rst != nil && len(rst.Streams) == 1 && rst.Streams[0].Sender != ""
	})
	streamID := rst.Streams[0].ID
	agentID := getStatus(t, e.AgentAdmin).Agent.ID
	if agentID == "" || rst.Streams[0].Agent != agentID {
		t.Fatalf("agent id %q, relay's stream %+v", agentID, rst.Streams[0])
	}
	relayLink := fmt.Sprintf("127.0.0.1:%d", e.Control)

	t.Run("relay page in chromium", func(t *testing.T) {
		dom := renderedDOM(t, e.RelayURL()+"/", 6*time.Second)
		if !regexp.MustCompile(`<body [^>]*data-refreshed="[1-9]`).MatchString(dom) {
			t.Errorf("the page did not refresh itself: %s", regexp.MustCompile(`<body[^>]*>`).FindString(dom))
		}
		if r := row(t, dom, "data-connection", "sink"); !strings.Contains(r, agentID) {
			t.Errorf("connection sink without its agent %q: %s", agentID, r)
		}
		if r := row(t, dom, "data-connection", "mssql"); !strings.Contains(r, `class="down"`) || !strings.Contains(r, "no agent listening") {
			t.Errorf("mssql not shown as without agent: %s", r)
		}
		if r := row(t, dom, "data-agent", agentID); !strings.Contains(r, "sink") || !strings.Contains(r, "tcp") {
			t.Errorf("agent row: %s", r)
		}
		if r := row(t, dom, "data-stream", streamID); !strings.Contains(r, "sink") || !strings.Contains(r, agentID) || !strings.Contains(r, "apps") {
			t.Errorf("live stream row: %s", r)
		}
		if r := row(t, dom, "data-event", "refusal"); !strings.Contains(r, "mssql") || !strings.Contains(r, "no_listener") {
			t.Errorf("refusal row: %s", r)
		}
		if !strings.Contains(dom, "not ready") || !strings.Contains(dom, "no agent listening for mssql") {
			t.Error("the page does not say the relay is not ready, and why")
		}
	})
	t.Run("relay page on a phone", func(t *testing.T) {
		// A narrow viewport: 500 CSS pixels, the narrowest window headless
		// Chromium makes, is inside the phone layout (max-width: 40em).
		// The page must fit its width, as page.js measures once laid out
		// (data-width: the window's width / the page's).
		dom := renderedDOM(t, e.RelayURL()+"/", time.Second, "--window-size=500,900")
		body := regexp.MustCompile(`<body[^>]*>`).FindString(dom)
		m := regexp.MustCompile(`data-width="(\d+)/(\d+)"`).FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("page.js did not measure the page: %s", body)
		}
		if w, _ := strconv.Atoi(m[1]); w > 640 {
			t.Fatalf("the window is %d px wide, not a phone's: %s", w, body)
		}
		if !strings.Contains(body, `data-overflow="none"`) {
			t.Errorf("the page is wider than a phone's screen: %s", body)
		}
		if r := row(t, dom, "data-connection", "sink"); !strings.Contains(r, agentID) {
			t.Errorf("connection sink without its agent %q: %s", agentID, r)
		}
	})
	t.Run("agent page in chromium", func(t *testing.T) {
		dom := renderedDOM(t, e.AgentAdmin+"/", time.Second)
		if r := row(t, dom, "data-link", relayLink); !strings.Contains(r, "connected") || strings.Contains(r, "not connected") {
			t.Errorf("relay link: %s", r)
		}
		if r := row(t, dom, "data-stream", streamID); !strings.Contains(r, "sink") {
			t.Errorf("live stream row: %s", r)
		}
	})
	t.Run("proxy page in chromium", func(t *testing.T) {
		dom := renderedDOM(t, "http://"+proxyAdmin+"/", time.Second)
		if r := row(t, dom, "data-link", relayLink); !strings.Contains(r, ">up<") {
			t.Errorf("relay link: %s", r)
		}
		if r := row(t, dom, "data-stream", live.LocalAddr().String()); !strings.Contains(r, "sink") {
			t.Errorf("live stream row: %s", r)
		}
	})
	t.Run("metrics the alerts use", func(t *testing.T) {
		exported := map[string]float64{} // "name{labels}" → value, of all three roles
		names := map[string]bool{}
		build := 0 // roles exporting hybrid_build_info
		for _, base := range []string{e.RelayURL(), e.AgentAdmin, "http://" + proxyAdmin} {
			m, err := metrics(base)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range m {
				exported[k] = v
				names[strings.SplitN(k, "{", 2)[0]] = true
				if strings.HasPrefix(k, "hybrid_build_info{commit=") && strings.Contains(k, `goversion="`+runtime.Version()+`",version=`) && v == 1 {
					build++
				}
			}
		}
		if build != 3 {
			t.Errorf("hybrid_build_info{commit,goversion,version} 1 from %d of the 3 roles", build)
		}
		for _, m := range alertMetrics(t) {
			if !names[m] {
				t.Errorf("alerts.yaml uses %s, which no role exports", m)
			}
		}
		for series, want := range map[string]float64{
			`hybrid_relay_listeners{hc="mssql"}`:                                 0,
			`hybrid_relay_listeners{hc="sink"}`:                                  1,
			`hybrid_relay_streams_failed_total{hc="mssql",reason="no_listener"}`: 1,
			`hybrid_relay_streams_opened_total{hc="sink"}`:                       1,
			`hybrid_relay_streams_active{hc="sink"}`:                             1,
			`hybrid_relay_stream_setup_seconds_count{hc="sink"}`:                 1,
			`hybrid_proxy_stream_setup_seconds_count{hc="sink"}`:                 1,
			`hybrid_agent_relay_up{relay="` + relayLink + `",transport="tcp"}`:   1,
			`hybrid_proxy_relay_up{relay="` + relayLink + `",transport="tcp"}`:   1,
			`hybrid_proxy_streams_failed_total{hc="mssql",reason="no_listener"}`: 1,
			`hybrid_agent_streams_total{hc="sink",result="opened"}`:              1,
			`hybrid_agent_streams_active{hc="sink"}`:                             1,
			`hybrid_proxy_streams_total{hc="mssql",result="refused"}`:            1,
			`hybrid_relay_stream_bytes_total{direction="up",hc="mssql"}`:         0,
		} {
			if got, ok := exported[series]; !ok || got != want {
				t.Errorf("%s = %v (exported: %v), want %v", series, got, ok, want)
			}
		}
	})
	t.Run("log lines when the stream ends", func(t *testing.T) {
		// The proxy logs JSON from now on.
		pcfg.Format = "json"
		mark := px.Mark()
		saveRename(t, px.Config, e.proxyYAML(pcfg))
		px.WaitLogAfter(t, mark, `"@message":"config reloaded"`, 10*time.Second)
		live.Close()
		access := regexp.MustCompile(`\[INFO\]  relay: stream closed: hc=sink stream=` + streamID + ` sender=127\.0\.0\.1:\d+ sender_key=apps agent=` +
			regexp.QuoteMeta(agentID) + ` agent_addr=127\.0\.0\.1:\d+ bytes_up=6 bytes_down=5 duration=\d+(\.\d+)?(µs|ms|s) result=ok`)
		e.Relay.WaitLog(t, access, 10*time.Second)
		// In JSON too, durations are in human units, not nanoseconds.
		m := px.WaitLogAfter(t, mark, regexp.MustCompile(`\{[^\n]*"@message":"stream closed"[^\n]*\}`), 10*time.Second)
		var line map[string]any
		if err := json.Unmarshal([]byte(m[0]), &line); err != nil {
			t.Fatal(err)
		}
		if d, ok := line["duration"].(string); !ok || !regexp.MustCompile(`^\d+(\.\d+)?(µs|ms|s)$`).MatchString(d) {
			t.Errorf("proxy's JSON stream closed line: duration %#v, want a string in human units: %s", line["duration"], m[0])
		}
		audit := e2eWaitAudit(t, e.Audit, "the close line", 10*time.Second, func(l auditLine) bool { return l.Event == "close" })
		for _, l := range audit {
			if l.Event == "close" && (l.BytesIn != 6 || l.BytesOut != 5) {
				t.Errorf("audit close line %+v", l)
			}
		}
	})
}

// TestE2EReadyz: /readyz is 503 while the relay has no agent for a
// configured connection (unless that check is excluded, as a load balancer
// that also carries the agents must), and for an agent or proxy without a
// relay; 200 otherwise, with a body that says why. /healthz stays 200
// throughout.
func TestE2EReadyz(t *testing.T) {
	// ready waits until base's /readyz (with query) answers code with a
	// body containing want.
	ready := func(t *testing.T, base, query string, code int, want string) {
		t.Helper()
		var got int
		var body string
		waitFor(t, fmt.Sprintf("%s/readyz%s %d %q", base, query, code, want), 20*time.Second, func() bool {
			got, body = httpGet(t, base+"/readyz"+query)
			return got == code && strings.Contains(body, want)
		})
		if h, _ := httpGet(t, base+"/healthz"); h != 200 {
			t.Errorf("%s/healthz = %d", base, h)
		}
	}
	e := newRLEnv(t, "sink")
	ready(t, e.RelayURL(), "", 503, "not ready\nlisteners: no agent listening for sink\nrelay: serving\n")
	ready(t, e.RelayURL(), "?exclude=listeners", 200, "ready\nrelay: serving\n")
	e.startAgent(t, rlAgentCfg{Pubs: pubs(startSinkSource(t), "sink")})
	ready(t, e.RelayURL(), "", 200, "ready\nlisteners: every connection (1) has an agent listening\nrelay: serving\n")
	ready(t, e.AgentAdmin, "", 200, "ready\nagent: connected to 1 of 1 relays\n")
	proxyAdmin := "http://" + freeAddr(t, "127.0.0.4")
	e.writeProxy(t, rlProxyCfg{Admin: strings.TrimPrefix(proxyAdmin, "http://"), Maps: []rlMap{{Name: "sink", Listen: freeAddr(t, "127.0.0.2")}}})
	ready(t, proxyAdmin, "", 200, "ready\nproxy: 1 of 1 relay links up\n")

	e.Relay.Stop(t)
	ready(t, e.AgentAdmin, "", 503, "not ready\nagent: no relay connected")
	ready(t, proxyAdmin, "", 503, "not ready\nproxy: no relay link up")
}

// TestE2EStatusPageGuard: on the relay's public port the page needs the
// admin token (a browser's login, the token as password) unless the request
// comes straight from loopback; /readyz answers anyone but says why only to
// those; relay.admin serves the page to anyone who reaches it.
func TestE2EStatusPageGuard(t *testing.T) {
	c := newCluster(t, "echo")
	admin := freeAddr(t, "127.0.0.1")
	const token = "admin-token-0123456789abcdef"
	r := c.startRelay(t, fmt.Sprintf("  admin: %s\n  admin_token: %q\n", admin, token))
	proxied := map[string]string{"X-Forwarded-For": "203.0.113.7"}
	basic := func(pw string) map[string]string {
		req, _ := http.NewRequest("GET", "/", nil)
		req.SetBasicAuth("admin", pw)
		return map[string]string{"X-Forwarded-For": "203.0.113.7", "Authorization": req.Header.Get("Authorization")}
	}
	for _, tt := range []struct {
		name, url string
		hdr       map[string]string
		code      int
		body      string // contained
		notBody   string
	}{
		{"page from loopback", r.url() + "/", nil, 200, `<tr data-connection="echo" class="down">`, ""},
		{"page through a proxy", r.url() + "/", proxied, 401, "", "data-connection"},
		{"page with a login", r.url() + "/", basic(token), 200, "no agent listening", ""},
		{"page with a wrong login", r.url() + "/", basic("guess"), 401, "", "data-connection"},
		{"assets with a login", r.url() + "/ui/page.js", basic(token), 200, "DOMParser", ""},
		{"readyz through a proxy", r.url() + "/readyz", proxied, 503, "not ready", "echo"},
		{"readyz from loopback", r.url() + "/readyz", nil, 503, "listeners: no agent listening for echo", ""},
		{"page on relay.admin", "http://" + admin + "/", proxied, 200, "no agent listening", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", tt.url, nil)
			for k, v := range tt.hdr {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body := string(b)
			if resp.StatusCode != tt.code || !strings.Contains(body, tt.body) || tt.notBody != "" && strings.Contains(body, tt.notBody) {
				t.Errorf("%d %q, want %d with %q and without %q", resp.StatusCode, tailLines(body, 5), tt.code, tt.body, tt.notBody)
			}
			if resp.StatusCode == 401 && !strings.Contains(strings.Join(resp.Header.Values("WWW-Authenticate"), ","), "Basic") {
				t.Errorf("401 without a Basic challenge: a browser would not ask for a login")
			}
		})
	}
}
