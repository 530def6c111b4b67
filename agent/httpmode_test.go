package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/relay"
	"github.com/hybridconn/hybrid/rules"
)

func TestTargetURL(t *testing.T) {
	tests := []struct {
		base, hc, target string
		want             string // "" = refused
	}{
		{"http://127.0.0.1:8080", "api", "/api", "http://127.0.0.1:8080"},
		{"http://127.0.0.1:8080", "api", "/api/", "http://127.0.0.1:8080/"},
		{"http://127.0.0.1:8080", "api", "/api/orders/42?x=1&y=2", "http://127.0.0.1:8080/orders/42?x=1&y=2"},
		{"http://127.0.0.1:8080/base", "api", "/API/orders", "http://127.0.0.1:8080/base/orders"},
		{"http://127.0.0.1:8080/base", "sql/reporting", "/sql/reporting/r?id=1", "http://127.0.0.1:8080/base/r?id=1"},
		{"http://127.0.0.1:8080", "api", "/api/a%2Fb", "http://127.0.0.1:8080/a%2Fb"},
		{"https://api.corp.local:443/v1", "api", "/api/x", "https://api.corp.local:443/v1/x"},
		// never another host, never above the base
		{"http://127.0.0.1:8080", "api", "/api//evil.example/x", ""},
		{"http://127.0.0.1:8080/base", "api", "/api/../secret", ""},
		{"http://127.0.0.1:8080/base", "api", "/api/a/./b", ""},
		{"http://127.0.0.1:8080", "api", "http://evil.example/api/x", ""},
		{"http://127.0.0.1:8080", "api", "/apix/y", ""},
		{"http://127.0.0.1:8080", "api", "/other/api", ""},
		{"http://127.0.0.1:8080", "api", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			u, err := targetURL(tt.base, tt.hc, tt.target)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("%s: allowed as %s", tt.target, u)
				}
				return
			}
			if err != nil || u.String() != tt.want {
				t.Fatalf("got %v, %v; want %s", u, err, tt.want)
			}
			if u.Host != strings.Split(strings.TrimPrefix(strings.TrimPrefix(tt.base, "http://"), "https://"), "/")[0] {
				t.Fatalf("host %s", u.Host)
			}
		})
	}
}

const (
	ns        = "relay.test"
	sendKey   = "send-key-for-tests-only-000000000"
	listenKey = "listen-key-for-tests-only-11111111"
)

// startRelayHTTP runs an in-process relay with the given hybrid
// connections and returns its http port.
func startRelayHTTP(t *testing.T, hcs ...string) int {
	t.Helper()
	keys := []rules.Key{
		{Name: "apps", Rights: []string{"send"}, Primary: sendKey},
		{Name: "onprem", Rights: []string{"listen"}, Primary: listenKey},
	}
	cfg := &rules.Relay{Namespace: ns, MaxListeners: 25, MaxHTTPBody: 64 << 20}
	for _, hc := range hcs {
		cfg.Connections = append(cfg.Connections, rules.RelayConnection{Name: hc, Keys: keys})
	}
	lis := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	l := &relay.Listeners{Control: lis(), Data: lis(), HTTP: lis()}
	cfg.Listen = rules.RelayListen{Control: l.Control.Addr().String(), Data: l.Data.Addr().String(), HTTP: l.HTTP.Addr().String()}
	srv, err := relay.New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	srv.Grace = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return l.HTTP.Addr().(*net.TCPAddr).Port
}

// TestHTTPModeAgent: curl-like requests through the relay reach the HTTP
// API the agent publishes, at exactly its endpoint, with the path below
// the hybrid connection appended, and the audit log records them.
func TestHTTPModeAgent(t *testing.T) {
	type seenReq struct {
		Host, URI, Auth, Via string
		BodyLen              int
	}
	gotFirst := make(chan struct{})
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/base/events" { // server-sent events: the first must arrive before the second is written
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: one\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-gotFirst:
			case <-time.After(15 * time.Second):
			}
			fmt.Fprint(w, "data: two\n\n")
			return
		}
		if r.URL.Path == "/base/early" { // answers before reading the body (the relay must cope)
			w.WriteHeader(http.StatusTeapot)
			return
		}
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/base/big" {
			w.Write(bytes.Repeat([]byte("z"), 1<<20))
			return
		}
		if r.URL.Path == "/base/redirect" {
			http.Redirect(w, r, "http://127.0.0.2:1/elsewhere", http.StatusFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(seenReq{r.Host, r.URL.RequestURI(), r.Header.Get("Authorization"), r.Header.Get("Via"), len(b)})
	}))
	defer api.Close()
	apiAddr := api.Listener.Addr().String()
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()

	port := startRelayHTTP(t, "api", "tcp", "down")
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	cfg := &rules.Agent{
		Relays:    []rules.RelayEndpoint{{Host: "127.0.0.1", Control: 1, Data: 1, HTTP: port, Namespace: ns}},
		Transport: rules.TransportWebSocket,
		Audit:     audit,
		Connections: []rules.AgentConnection{
			{Name: "api", Endpoint: apiAddr, HTTP: "http://" + apiAddr + "/base", KeyName: "onprem", Key: listenKey},
			{Name: "tcp", Endpoint: apiAddr, KeyName: "onprem", Key: listenKey},
			{Name: "down", Endpoint: deadAddr, HTTP: "http://" + deadAddr, KeyName: "onprem", Key: listenKey},
		},
	}
	_, stop := runAgent(t, cfg)

	do := func(method, path string, body io.Reader, hdr http.Header) (*http.Response, []byte) {
		t.Helper()
		hc := strings.Split(path, "/")[1]
		req, _ := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), body)
		for k, v := range hdr {
			req.Header[k] = v
		}
		req.Header.Set("ServiceBusAuthorization", sas.NewToken(sas.ResourceURI(ns, hc), "apps", sendKey, time.Now().Add(time.Hour)))
		noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := noFollow.Do(req)
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
	// Wait until the agent listens: the relay answers 502 until then.
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, _ := do("GET", "/api/ping", nil, nil)
		if resp.StatusCode != http.StatusBadGateway {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("agent never listened")
		}
		time.Sleep(20 * time.Millisecond)
	}

	resp, b := do("GET", "/api/orders/42?x=1", nil, http.Header{"Authorization": {"Bearer app"}})
	var s seenReq
	json.Unmarshal(b, &s)
	if resp.StatusCode != 202 || s.Host != apiAddr || s.URI != "/base/orders/42?x=1" || s.Auth != "Bearer app" || s.Via != "1.1 "+ns {
		t.Fatalf("%s: API saw %+v", resp.Status, s)
	}
	resp, b = do("POST", "/api/upload", bytes.NewReader(make([]byte, 2<<20)), nil)
	json.Unmarshal(b, &s)
	if resp.StatusCode != 202 || s.BodyLen != 2<<20 {
		t.Fatalf("upload: %s, API saw %d bytes", resp.Status, s.BodyLen)
	}
	if resp, b = do("GET", "/api/big", nil, nil); resp.StatusCode != 200 || len(b) != 1<<20 {
		t.Fatalf("download: %s, %d bytes", resp.Status, len(b))
	}
	if resp, _ = do("POST", "/api/early", bytes.NewReader(make([]byte, 4<<20)), nil); resp.StatusCode != http.StatusTeapot {
		t.Fatalf("an API answering before reading the body: %s", resp.Status)
	}
	// A response that trickles reaches the sender as it comes (agent and
	// relay both stream): the API holds its second event until the sender
	// has read the first.
	ereq, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/api/events", port), nil)
	ereq.Header.Set("ServiceBusAuthorization", sas.NewToken(sas.ResourceURI(ns, "api"), "apps", sendKey, time.Now().Add(time.Hour)))
	first := make(chan string, 1)
	var eresp *http.Response
	var br *bufio.Reader
	go func() {
		var err error
		if eresp, err = http.DefaultClient.Do(ereq); err != nil {
			first <- err.Error()
			return
		}
		br = bufio.NewReader(eresp.Body)
		l, _ := br.ReadString('\n')
		first <- l
	}()
	select {
	case l := <-first:
		if l != "data: one\n" {
			t.Fatalf("first event %q", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first server-sent event did not reach the sender while the API held the second: the response is buffered")
	}
	close(gotFirst)
	rest, err := io.ReadAll(br)
	eresp.Body.Close()
	if err != nil || string(rest) != "\ndata: two\n\n" {
		t.Fatalf("rest of the events %q, %v", rest, err)
	}
	if resp, _ = do("GET", "/api/redirect", nil, nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("redirect followed: %s", resp.Status)
	}
	if resp, _ = do("GET", "/tcp/x", nil, nil); resp.StatusCode != http.StatusNotImplemented {
		t.Fatalf("TCP connection: %s", resp.Status)
	}
	if resp, _ = do("GET", "/down/x", nil, nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("unreachable endpoint: %s", resp.Status)
	}

	stop()
	f, err := os.Open(audit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var evs []AuditEvent
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev AuditEvent
		json.Unmarshal(sc.Bytes(), &ev)
		evs = append(evs, ev)
	}
	find := func(event, path string) AuditEvent {
		for _, ev := range evs {
			if ev.Event == event && strings.HasPrefix(ev.Path, path) {
				return ev
			}
		}
		t.Fatalf("no %s event for %s in %+v", event, path, evs)
		return AuditEvent{}
	}
	if ev := find("http", "/api/orders/42"); ev.Method != "GET" || ev.Status != 202 || ev.BytesOut == 0 || ev.SenderKey != "apps" || ev.Endpoint != "http://"+apiAddr+"/base" {
		t.Fatalf("audit %+v", ev)
	}
	if ev := find("http", "/api/upload"); ev.Method != "POST" || ev.BytesIn != 2<<20 {
		t.Fatalf("audit %+v", ev)
	}
	if ev := find("http", "/api/big"); ev.BytesOut != 1<<20 || ev.Status != 200 {
		t.Fatalf("audit %+v", ev)
	}
	if ev := find("deny", "/tcp/x"); ev.Status != 501 {
		t.Fatalf("audit %+v", ev)
	}
	if ev := find("unreachable", "/down/x"); ev.Status != 503 {
		t.Fatalf("audit %+v", ev)
	}
}
