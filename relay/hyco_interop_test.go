package relay

// Microsoft's own npm clients against the relay: hyco-ws (WebSocket
// listener and sender) and hyco-https (HTTP-mode listener), installed by
// internal/nodetest (in CI: .ci/run installs nodejs and npm; these tests
// fail there, rather than skip, when they cannot run).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/nodetest"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/rules"
)

// nodeProc is a Node script running for a test, its output lines in a
// channel.
type nodeProc struct {
	cmd   *exec.Cmd
	lines chan string
	all   strings.Builder
	mu    sync.Mutex
}

func startNode(t *testing.T, p nodetest.Package, script string, args ...string) *nodeProc {
	t.Helper()
	node, modules := nodetest.Install(t, p)
	abs, err := filepath.Abs(filepath.Join("testdata", script))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := nodetest.Command(ctx, node, modules, abs, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	np := &nodeProc{cmd: cmd, lines: make(chan string, 4096)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			np.mu.Lock()
			np.all.WriteString(sc.Text() + "\n")
			np.mu.Unlock()
			select {
			case np.lines <- sc.Text():
			default: // a storm of lines nobody waits for
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		<-done
	})
	return np
}

// wait returns the first line starting with prefix, or fails.
func (n *nodeProc) wait(t *testing.T, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l := <-n.lines:
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			n.mu.Lock()
			defer n.mu.Unlock()
			t.Fatalf("no %q from node within %s; output:\n%s", prefix, timeout, n.all.String())
			return ""
		}
	}
}

// runNode runs a script to its end and returns its output.
func runNode(t *testing.T, p nodetest.Package, script string, args ...string) string {
	t.Helper()
	node, modules := nodetest.Install(t, p)
	abs, _ := filepath.Abs(filepath.Join("testdata", script))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := nodetest.Command(ctx, node, modules, abs, args...).CombinedOutput()
	if err != nil {
		t.Logf("node %s %v: %v", script, args, err)
	}
	return strings.TrimSpace(string(b))
}

func hcURL(r *testRelay, hc, action string) string {
	return fmt.Sprintf("ws://127.0.0.1:%d/$hc/%s?sb-hc-action=%s", r.ep.HTTP, hc, action)
}

func startHycoListener(t *testing.T, r *testRelay, hc string) *nodeProc {
	t.Helper()
	n := startNode(t, nodetest.HycoWS, "hyco.js", "listen", hcURL(r, hc, "listen"), token(hc, "onprem", listenKey))
	n.wait(t, "LISTENING", 30*time.Second)
	return n
}

// TestHycoWSInterop: Microsoft's listener with hybrid's WebSocket and
// native senders (1 MiB each way, intact), and Microsoft's sender with
// hybrid's WebSocket agent.
func TestHycoWSInterop(t *testing.T) {
	r := startRelay(t)
	startHycoListener(t, r, "pg")
	for name, sender := range map[string]relayclient.Client{"websocket": wsClient(r), "native": nativeClient(r)} {
		conn, err := openWith(sender, "pg", "apps", sendKey, "")
		if err != nil {
			t.Fatalf("%s sender to hyco-ws listener: %v", name, err)
		}
		roundTrip(t, conn)
		conn.Close()
	}
	// hyco-ws sends on "other" to hybrid's WebSocket agent; the token
	// travels in the query this time.
	startAgentWith(t, wsClient(r), "other", fullEcho)
	out := runNode(t, nodetest.HycoWS, "hyco.js", "send-bytes",
		hcURL(r, "other", "connect")+"&sb-hc-token="+url.QueryEscape(token("other", "apps", sendKey)), "")
	if !strings.Contains(out, "ECHO OK") {
		t.Fatalf("hyco-ws sender to hybrid's agent: %s", out)
	}
}

// TestHycoWSMessagesCloseCodesProtocols: between two hyco-ws parties
// messages keep their type and boundaries, the listener's close code and
// reason reach the sender, and several subprotocols may be offered.
func TestHycoWSMessagesCloseCodesProtocols(t *testing.T) {
	r := startRelay(t)
	lis := startHycoListener(t, r, "pg")
	connect := hcURL(r, "pg", "connect")
	tok := token("pg", "apps", sendKey)
	if out := runNode(t, nodetest.HycoWS, "hyco.js", "send", connect, tok); !strings.Contains(out, "ECHO OK") {
		t.Fatalf("messages: %s", out)
	}
	if out := runNode(t, nodetest.HycoWS, "hyco.js", "close", connect, tok, "4000:listener says bye"); !strings.Contains(out, "CLOSE 4000 listener says bye") {
		t.Fatalf("close code: %s", out)
	}
	lis.wait(t, "STREAM CLOSE 4000", 10*time.Second)
	if out := runNode(t, nodetest.HycoWS, "hyco.js", "protocols", connect, tok, "chat.v2,chat.v1"); !strings.Contains(out, "PROTOCOL chat.v2") {
		t.Fatalf("subprotocols: %s", out)
	}
	lis.wait(t, "CONNECTION chat.v2", 10*time.Second)
}

// TestHycoWSRejectAndPlainGET: Node's own HTTP client sees a listener's
// rejection as its status and reason phrase; a plain GET on connect is
// refused before the listener hears of it.
func TestHycoWSRejectAndPlainGET(t *testing.T) {
	r := startRelay(t)
	l := listenRaw(t, r, "pg", nil)
	got := make(chan string, 1)
	go func() {
		got <- runNode(t, nodetest.HycoWS, "hyco.js", "status", hcURL(r, "pg", "connect"), token("pg", "apps", sendKey))
	}()
	n := l.next(t)
	if _, err := rawWS(n.Accept.Address+"&sb-hc-statusCode=451&sb-hc-statusDescription="+url.QueryEscape("Not From There"), nil); !isStatus(err, 410) {
		t.Fatalf("rejection: %v", err)
	}
	if out := <-got; out != "STATUS 451 Not From There" {
		t.Fatalf("Node saw %q", out)
	}
	// A plain GET (Node's http, no Upgrade) is refused at once.
	resp, err := http.Get(hcURL(r, "pg", "connect")[len("ws"):] + "&sb-hc-token=" + url.QueryEscape(token("pg", "apps", sendKey)))
	if err == nil {
		resp.Body.Close()
	}
	_ = resp
	select {
	case n := <-l.notices:
		t.Fatalf("listener notified of a plain GET: %+v", n)
	default:
	}
}

// TestHycoWSShutdown1001: hyco-ws sees 1001 when the relay stops.
func TestHycoWSShutdown1001(t *testing.T) {
	r := startRelay(t)
	lis := startHycoListener(t, r, "pg")
	r.cancel()
	if l := lis.wait(t, "CONTROL CLOSE", 15*time.Second); !strings.HasPrefix(l, "CONTROL CLOSE 1001") {
		t.Fatalf("hyco-ws saw %q, want 1001", l)
	}
}

// TestHycoWSReconnectStorm: hyco-ws reconnects with no delay, and doubles
// its attempts on every failed handshake (it handles both 'error' and
// 'close'); after a 0.5 s relay outage it used to hold hundreds of control
// channels. Now at most max_listeners become listeners; the rest are parked
// and closed with 1013 (or, over the per-source connection cap, refused),
// and the relay keeps serving others.
func TestHycoWSReconnectStorm(t *testing.T) {
	keys := []rules.Key{
		{Name: "apps", Rights: []string{"send"}, Primary: sendKey},
		{Name: "onprem", Rights: []string{"listen"}, Primary: listenKey},
	}
	// The production defaults, the per-source connection cap included: a
	// storm from one process is one source.
	cfg := &rules.Relay{Namespace: ns, Connections: []rules.RelayConnection{{Name: "pg", Keys: keys}, {Name: "other", Keys: keys}},
		MaxListeners: rules.DefaultMaxListeners, MaxHTTPBody: rules.DefaultMaxHTTPBody,
		Limits: rules.RelayLimits{Connections: rules.DefaultLimitConnections, PerSource: rules.DefaultLimitPerSource,
			Pending: rules.DefaultLimitPending, PendingPerKey: rules.DefaultLimitPendingPerKey}}
	ln := func(addr string) net.Listener {
		// The outage frees the ports; another socket of the machine may hold
		// one for a moment (an ephemeral port of a connection): try again.
		var err error
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			var l net.Listener
			if l, err = net.Listen("tcp", addr); err == nil {
				return l
			}
		}
		t.Fatal(err)
		return nil
	}
	serve := func(l *Listeners, park time.Duration) (*Server, context.CancelFunc, chan struct{}) {
		c := *cfg
		c.Listen = rules.RelayListen{Control: l.Control.Addr().String(), Data: l.Data.Addr().String(), HTTP: l.HTTP.Addr().String()}
		srv, err := New(&c, hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		srv.Grace = 100 * time.Millisecond
		srv.ws.parkTime = park
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { srv.Serve(ctx, l); close(done) }()
		return srv, cancel, done
	}
	l1 := &Listeners{Control: ln("127.0.0.1:0"), Data: ln("127.0.0.1:0"), HTTP: ln("127.0.0.1:0")}
	addrs := [3]string{l1.Control.Addr().String(), l1.Data.Addr().String(), l1.HTTP.Addr().String()}
	srv, cancel, done := serve(l1, parkTime)
	r := &testRelay{srv: srv, ep: relayclient.Endpoint{Host: "127.0.0.1", HTTP: l1.HTTP.Addr().(*net.TCPAddr).Port,
		Control: l1.Control.Addr().(*net.TCPAddr).Port, Data: l1.Data.Addr().(*net.TCPAddr).Port, Namespace: ns}}
	startHycoListener(t, r, "pg")

	cancel() // the outage
	<-done
	time.Sleep(500 * time.Millisecond) // the outage's length is what this test is about
	l2 := &Listeners{Control: ln(addrs[0]), Data: ln(addrs[1]), HTTP: ln(addrs[2])}
	srv2, cancel2, done2 := serve(l2, time.Second)
	defer func() { cancel2(); <-done2 }()
	r.srv = srv2

	listeners := func() int {
		srv2.core.mu.Lock()
		defer srv2.core.mu.Unlock()
		if l := srv2.core.hcs["pg"]; l != nil {
			return len(l.listeners)
		}
		return 0
	}
	waitFor(t, "hyco-ws back", func() bool { return listeners() > 0 })
	// Give the storm time to do its worst: three park periods.
	deadline := time.Now().Add(3 * time.Second)
	maxSeen, parked := 0, 0
	for time.Now().Before(deadline) {
		maxSeen = max(maxSeen, listeners())
		parked = max(parked, srv2.ws.Parked())
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("after a 0.5 s outage: at most %d listeners, %d parked at once", maxSeen, parked)
	if maxSeen > rules.DefaultMaxListeners {
		t.Fatalf("%d control channels became listeners, cap %d", maxSeen, rules.DefaultMaxListeners)
	}
	// The relay still serves others while the storm goes on (the storming
	// process itself may be too busy to: that is hyco-ws's to fix). Others
	// come from another source address: the storm has used up 127.0.0.1's
	// share of connections.
	other := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	elsewhere := relayclient.New(r.ep, relayclient.WithTransport(relayclient.TransportWebSocket), relayclient.WithDialer(other.DialContext))
	startAgentWith(t, elsewhere, "other", fullEcho)
	conn, err := openWith(elsewhere, "other", "apps", sendKey, "")
	if err != nil {
		t.Fatalf("stream during the storm: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	conn.Write([]byte("still here"))
	back := make([]byte, 10)
	if _, err := io.ReadFull(conn, back); err != nil || string(back) != "still here" {
		t.Fatalf("echo during the storm: %q %v", back, err)
	}
}

// TestHycoHTTPS: Microsoft's HTTP-mode listener behind the relay, with Go's
// HTTP client as the sender: requests and responses small (control
// channel) and large (rendezvous), headers, and the 504 of a listener that
// never answers.
func TestHycoHTTPS(t *testing.T) {
	r := startRelayWith(t, nil, "api")
	r.srv.ws.requestTimeout = 3 * time.Second
	lis := startNode(t, nodetest.HycoHTTPS, "hycohttps.js", hcURL(r, "api", "listen"), token("api", "onprem", listenKey))
	lis.wait(t, "LISTENING", 30*time.Second)
	tok := token("api", "apps", sendKey)
	type info struct {
		Method  string            `json:"method"`
		URL     string            `json:"url"`
		Headers map[string]string `json:"headers"`
		BodyLen int               `json:"bodyLen"`
		BodySha string            `json:"bodySha"`
	}
	do := func(method, path string, body []byte, hdr http.Header) (*http.Response, []byte) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, _ := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d/%s", r.ep.HTTP, path), rd)
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}
	auth := http.Header{"Servicebusauthorization": {tok}}
	for _, tc := range []struct {
		name, method, path string
		size               int
		hdr                http.Header
	}{
		{"get, token in the query", "GET", "api/echo/x?a=1&sb-hc-token=" + url.QueryEscape(tok), 0, http.Header{"Authorization": {"Bearer app"}}},
		{"small post", "POST", "api/echo", 10_000, auth},
		{"1 MiB post over a rendezvous", "POST", "api/echo", 1 << 20, auth},
		{"token in Authorization", "PUT", "api/echo", 3, http.Header{"Authorization": {tok}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body []byte
			if tc.size > 0 {
				body = make([]byte, tc.size)
				for i := range body {
					body[i] = byte(i * 13)
				}
			}
			resp, b := do(tc.method, tc.path, body, tc.hdr)
			var got info
			if err := json.Unmarshal(b, &got); err != nil || resp.StatusCode != 201 {
				t.Fatalf("%s %q %v", resp.Status, b, err)
			}
			sum := sha256.Sum256(body)
			if got.Method != tc.method || got.BodyLen != tc.size || got.BodySha != hex.EncodeToString(sum[:]) ||
				resp.Header.Get("X-Listener") != "hyco-https" || resp.Header.Get("Via") != "1.1 "+ns {
				t.Fatalf("listener saw %+v; response headers %v", got, resp.Header)
			}
			if got.Headers["servicebusauthorization"] != "" || strings.HasPrefix(got.Headers["authorization"], "SharedAccessSignature") {
				t.Fatalf("the relay's credential reached the listener: %v", got.Headers)
			}
			if tc.name == "get, token in the query" && (got.URL != "/api/echo/x?a=1" || got.Headers["authorization"] != "Bearer app" || got.Headers["via"] != "1.1 "+ns) {
				t.Fatalf("listener saw %+v", got)
			}
		})
	}
	t.Run("1 MiB response over a rendezvous", func(t *testing.T) {
		resp, b := do("GET", "api/big", nil, auth)
		if resp.StatusCode != 200 || len(b) != 1<<20 || b[0] != 'z' {
			t.Fatalf("%s, %d bytes", resp.Status, len(b))
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/api/echo?i=%d", r.ep.HTTP, i), nil)
				req.Header.Set("ServiceBusAuthorization", tok)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					errs <- err
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !strings.Contains(string(b), fmt.Sprintf(`"url":"/api/echo?i=%d"`, i)) {
					errs <- fmt.Errorf("request %d got %s", i, b)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	t.Run("listener never answers", func(t *testing.T) {
		if resp, _ := do("GET", "api/never", nil, auth); resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get("Via") != "" {
			t.Fatalf("%s (Via %q), want 504 from the relay", resp.Status, resp.Header.Get("Via"))
		}
	})
	// The listener stays healthy after all that.
	if resp, _ := do("GET", "api/echo", nil, auth); resp.StatusCode != 201 {
		t.Fatalf("after: %s", resp.Status)
	}
}
