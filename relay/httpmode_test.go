package relay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/httphdr"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/wsconn"
	"github.com/hybridconn/hybrid/rules"
)

// httpListener serves HTTP-mode requests of hc with h, through hybrid's
// relay client (the agent's code path).
func httpListener(t *testing.T, r *testRelay, hc string, h func(*relayclient.Request)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ctl, err := wsClient(r).Listen(ctx, "t", "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := ctl.Attach(ctx, hc, token(hc, "onprem", listenKey)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range ctl.Events() {
			if ev.Request != nil {
				go h(ev.Request)
			}
		}
	}()
	t.Cleanup(func() { cancel(); ctl.Close(); <-done })
}

func httpURL(r *testRelay, pathAndQuery string) string {
	return fmt.Sprintf("http://127.0.0.1:%d/%s", r.ep.HTTP, pathAndQuery)
}

// seen is what a listener saw of a request.
type seen struct {
	Method, Target string
	Header         http.Header
	BodyLen        int
	BodySum        [32]byte
}

// echoListener answers every request with what it saw, as JSON, and a body
// of the size the X-Want-Bytes header asks for.
func echoListener(t *testing.T, r *testRelay, hc string, got chan<- seen) {
	httpListener(t, r, hc, func(req *relayclient.Request) {
		ctx := context.Background()
		if err := req.Open(ctx); err != nil {
			t.Logf("request not opened (the relay may have cut it): %v", err)
			return
		}
		b, err := io.ReadAll(req.Body)
		if err != nil {
			t.Logf("request body cut: %v", err)
			return
		}
		s := seen{Method: req.Method, Target: req.Target, Header: req.Header, BodyLen: len(b), BodySum: sha256.Sum256(b)}
		if got != nil {
			got <- s
		}
		var n int
		fmt.Sscan(req.Header.Get("X-Want-Bytes"), &n)
		hdr := http.Header{"X-Listener": {"yes"}, "Connection": {"X-Listener"}, "Content-Type": {"application/octet-stream"}}
		body := bytes.Repeat([]byte("r"), n)
		if n == 0 {
			body, _ = json.Marshal(s)
		}
		req.Respond(ctx, http.StatusCreated, "Made It", hdr, bytes.NewReader(body))
	})
}

func TestHTTPModeRoundTrips(t *testing.T) {
	r := startRelayWith(t, nil, "api/v1")
	got := make(chan seen, 10)
	echoListener(t, r, "api/v1", got)
	tests := []struct {
		name      string
		method    string
		path      string
		hdr       http.Header
		body      io.Reader
		bodyLen   int
		wantBytes int
	}{
		{"get", "GET", "api/v1/orders/42?x=1&sb-hc-token=" + url.QueryEscape(token("api/v1", "apps", sendKey)), nil, nil, 0, 0},
		{"small post, control channel", "POST", "api/v1/items", nil, bytes.NewReader(make([]byte, 10_000)), 10_000, 0},
		{"64 KiB post, control channel", "POST", "api/v1/items", nil, bytes.NewReader(make([]byte, 64<<10)), 64 << 10, 0},
		{"1 MiB post, rendezvous", "PUT", "api/v1/blob", nil, bytes.NewReader(bytes.Repeat([]byte("b"), 1<<20)), 1 << 20, 0},
		{"chunked post, rendezvous", "POST", "api/v1/stream", nil, io.MultiReader(strings.NewReader("chunk one "), strings.NewReader("chunk two")), 19, 0},
		{"large response, rendezvous", "GET", "api/v1/big", http.Header{"X-Want-Bytes": {"3000000"}}, nil, 0, 3000000},
		{"small response", "GET", "api/v1/small", http.Header{"X-Want-Bytes": {"100"}}, nil, 0, 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, httpURL(r, tc.path), tc.body)
			if tc.name == "chunked post, rendezvous" {
				req.ContentLength = -1
			}
			for k, v := range tc.hdr {
				req.Header[k] = v
			}
			if !strings.Contains(tc.path, "sb-hc-token") {
				req.Header.Set("ServiceBusAuthorization", token("api/v1", "apps", sendKey))
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			// The listener's statusDescription is the reason phrase.
			if err != nil || resp.Status != "201 Made It" || resp.Header.Get("Via") != "1.1 "+ns || resp.Header.Get("X-Listener") != "" {
				t.Fatalf("%s %v via %q x-listener %q (hop-by-hop by Connection)", resp.Status, err, resp.Header.Get("Via"), resp.Header.Get("X-Listener"))
			}
			if tc.wantBytes > 0 && len(b) != tc.wantBytes {
				t.Fatalf("response body %d bytes, want %d", len(b), tc.wantBytes)
			}
			s := <-got
			if s.Method != tc.method || s.BodyLen != tc.bodyLen {
				t.Fatalf("listener saw %s with %d bytes", s.Method, s.BodyLen)
			}
			if tc.name == "get" {
				if s.Target != "/api/v1/orders/42?x=1" || s.Header.Get("Via") != "1.1 "+ns || s.Header.Get("Hybrid-Sender-Key") != "apps" {
					t.Fatalf("listener saw target %q, headers %v", s.Target, s.Header)
				}
			}
		})
	}
}

// TestHTTPModeHeaders: credentials and hop-by-hop headers stay at the
// relay; the application's own Authorization passes when the relay's
// token came another way.
func TestHTTPModeHeaders(t *testing.T) {
	r := startRelay(t)
	got := make(chan seen, 10)
	echoListener(t, r, "pg", got)
	do := func(hdr http.Header, query string) (*http.Response, seen) {
		req, _ := http.NewRequest("GET", httpURL(r, "pg/x"+query), nil)
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 201 {
			t.Fatalf("%s", resp.Status)
		}
		return resp, <-got
	}
	tok := token("pg", "apps", sendKey)
	_, s := do(http.Header{"Servicebusauthorization": {tok}, "Authorization": {"Bearer app"}, "Connection": {"X-Hop"},
		"X-Hop": {"1"}, "Keep-Alive": {"timeout=5"}, "Te": {"trailers"}, "Via": {"1.0 upstream"}, "X-App": {"kept"},
		"Hybrid-Sender-Key": {"forged"}}, "")
	if s.Header.Get("Authorization") != "Bearer app" || s.Header.Get("Servicebusauthorization") != "" || s.Header.Get("X-Hop") != "" ||
		s.Header.Get("Keep-Alive") != "" || s.Header.Get("Te") != "" || s.Header.Get("X-App") != "kept" ||
		s.Header.Get("Via") != "1.0 upstream, 1.1 "+ns || s.Header.Get("Hybrid-Sender-Key") != "apps" || s.Header.Get("Connection") != "" {
		t.Fatalf("listener saw %v", s.Header)
	}
	_, s = do(http.Header{"Authorization": {tok}}, "")
	if s.Header.Get("Authorization") != "" {
		t.Fatalf("Authorization used as the token was forwarded: %v", s.Header)
	}
	_, s = do(http.Header{"Authorization": {"Bearer app"}}, "?sb-hc-token="+url.QueryEscape(tok)+"&keep=1")
	if s.Header.Get("Authorization") != "Bearer app" || s.Target != "/pg/x?keep=1" {
		t.Fatalf("listener saw %q %v", s.Target, s.Header)
	}
}

func TestHTTPModeRefusals(t *testing.T) {
	r := startRelayWith(t, func(c *rules.Relay) { c.MaxHTTPBody = 1000 }, "slow", "native", "quiet")
	r.srv.ws.requestTimeout = 500 * time.Millisecond
	echoListener(t, r, "pg", nil)
	startAgent(t, r, "native", echo) // a native listener cannot take HTTP requests
	httpListener(t, r, "slow", func(req *relayclient.Request) {
		req.Open(context.Background())
		time.Sleep(2 * time.Second) // answers after the relay gave up
		req.Respond(context.Background(), 200, "", nil, nil)
	})
	tests := []struct {
		name, method, path, tok string
		body                    string
		want                    int
		via                     bool
	}{
		{"unknown connection", "GET", "nosuch/x", token("pg", "apps", sendKey), "", 404, false},
		{"no token", "GET", "pg/x", "", "", 401, false},
		{"listen key", "GET", "pg/x", token("pg", "onprem", listenKey), "", 403, false},
		{"no listener", "GET", "other/x", token("other", "apps", sendKey), "", 502, false},
		{"native listener only", "GET", "native/x", token("native", "apps", sendKey), "", 503, false},
		{"timeout", "GET", "slow/x", token("slow", "apps", sendKey), "", 504, false},
		{"body over the limit", "POST", "pg/x", token("pg", "apps", sendKey), strings.Repeat("x", 1001), 413, false},
		{"CONNECT", "CONNECT", "pg/x", token("pg", "apps", sendKey), "", 405, false},
		{"within the limit", "POST", "pg/x", token("pg", "apps", sendKey), strings.Repeat("x", 1000), 201, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, httpURL(r, tc.path), strings.NewReader(tc.body))
			if tc.tok != "" {
				req.Header.Set("ServiceBusAuthorization", tc.tok)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want || (resp.Header.Get("Via") != "") != tc.via {
				t.Fatalf("got %s (Via %q), want %d", resp.Status, resp.Header.Get("Via"), tc.want)
			}
		})
	}
	// A chunked body over the limit is cut at the rendezvous.
	req, _ := http.NewRequest("POST", httpURL(r, "pg/x"), io.MultiReader(strings.NewReader(strings.Repeat("y", 600)), strings.NewReader(strings.Repeat("y", 600))))
	req.ContentLength = -1
	req.Header.Set("ServiceBusAuthorization", token("pg", "apps", sendKey))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("chunked body over the limit: %s", resp.Status)
	}
	// A response over the limit is cut: the sender sees an error, not a
	// short body passed off as whole.
	req, _ = http.NewRequest("GET", httpURL(r, "pg/x"), nil)
	req.Header.Set("ServiceBusAuthorization", token("pg", "apps", sendKey))
	req.Header.Set("X-Want-Bytes", "5000")
	resp, err = http.DefaultClient.Do(req)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatal("a response over max_http_body arrived whole")
	}
}

// TestHTTPModeBareListener: the request and response messages on the wire,
// as Azure's listeners see them: JSON on the control channel, the body as
// the next binary message; statusCode as a string and header values as
// numbers are taken too.
func TestHTTPModeBareListener(t *testing.T) {
	r := startRelay(t)
	u := fmt.Sprintf("ws://127.0.0.1:%d/$hc/pg?sb-hc-action=listen&sb-hc-token=%s", r.ep.HTTP, url.QueryEscape(token("pg", "onprem", listenKey)))
	ctl, err := rawWS(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	type result struct {
		resp *http.Response
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("POST", httpURL(r, "pg/a/b?q=1"), strings.NewReader("hello body"))
		req.Header.Set("ServiceBusAuthorization", token("pg", "apps", sendKey))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			res <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{resp, string(b), err}
	}()
	var m struct {
		Request struct {
			Address        string            `json:"address"`
			ID             string            `json:"id"`
			RequestTarget  string            `json:"requestTarget"`
			Method         string            `json:"method"`
			RequestHeaders map[string]string `json:"requestHeaders"`
			Body           bool              `json:"body"`
			RemoteEndpoint struct{ Address string }
		} `json:"request"`
	}
	if err := recvJSON(ctl, &m); err != nil {
		t.Fatal(err)
	}
	q := m.Request
	if q.Method != "POST" || q.RequestTarget != "/pg/a/b?q=1" || !q.Body || q.RemoteEndpoint.Address != "127.0.0.1" ||
		!strings.Contains(q.Address, "sb-hc-action=request") || !strings.Contains(q.Address, "/$hc/pg/a/b?q=1&") {
		t.Fatalf("request message %+v", q)
	}
	op, body, err := ctl.ReadMessage(1 << 16)
	if err != nil || op != wsconn.OpBinary || string(body) != "hello body" {
		t.Fatalf("body %d %q %v", op, body, err)
	}
	resp := fmt.Sprintf(`{"response":{"requestId":%q,"statusCode":"202","statusDescription":"Taken","responseHeaders":{"Content-Length":3,"X-Num":42},"body":true}}`, q.ID)
	ctl.WriteMessage(wsconn.OpText, []byte(resp))
	mw, _ := ctl.NewMessageWriter(wsconn.OpBinary)
	mw.Write([]byte("o"))
	mw.Write([]byte("k!"))
	mw.Close()
	got := <-res
	if got.err != nil || got.resp.StatusCode != 202 || got.body != "ok!" || got.resp.Header.Get("X-Num") != "42" {
		t.Fatalf("sender got %+v", got)
	}
}

// FuzzResponse: whatever a listener puts in a response message, the relay
// derives a valid status or refuses it, and passes no hop-by-hop header.
func FuzzResponse(f *testing.F) {
	f.Add([]byte(`{"response":{"requestId":"x","statusCode":200,"responseHeaders":{"Content-Type":"text/plain"},"body":true}}`))
	f.Add([]byte(`{"response":{"requestId":"x","statusCode":"404","statusDescription":"Nope","responseHeaders":{"Connection":"X-A, close","X-A":1,"Set-Cookie":["a","b"]}}}`))
	f.Add([]byte(`{"response":{"statusCode":101,"responseHeaders":{"Transfer-Encoding":"chunked","":"x"}}}`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var m struct {
			Response *wsResponse `json:"response"`
		}
		if json.Unmarshal(msg, &m) != nil || m.Response == nil {
			return
		}
		if s := m.Response.status(); s != 0 && (s < 100 || s > 599 || s == 101) {
			t.Fatalf("status %d passed", s)
		}
		h := m.Response.headers()
		for k := range h {
			if httphdr.HopByHop(h, k) {
				t.Fatalf("header %q passed", k)
			}
		}
		for _, v := range h.Values("Connection") {
			t.Fatalf("Connection %q passed", v)
		}
	})
}

// TestHTTPModeReasonPhrase: the listener's statusDescription reaches the
// sender as the reason phrase, with the body; one that tries to inject a
// header is flattened to printable text; none means the standard phrase.
func TestHTTPModeReasonPhrase(t *testing.T) {
	r := startRelay(t)
	httpListener(t, r, "pg", func(req *relayclient.Request) {
		ctx := context.Background()
		req.Open(ctx)
		io.Copy(io.Discard, req.Body)
		switch req.Target {
		case "/pg/teapot":
			req.Respond(ctx, 418, "Short and stout", nil, strings.NewReader("tea"))
		case "/pg/inject":
			req.Respond(ctx, 409, "Busy\r\nX-Injected: 1", nil, nil)
		default:
			req.Respond(ctx, 200, "", nil, strings.NewReader("plain"))
		}
	})
	tests := []struct{ path, status, body string }{
		{"pg/teapot", "418 Short and stout", "tea"},
		{"pg/inject", "409 BusyX-Injected: 1", ""},
		{"pg/plain", "200 OK", "plain"},
	}
	for _, tc := range tests {
		req, _ := http.NewRequest("GET", httpURL(r, tc.path), nil)
		req.Header.Set("ServiceBusAuthorization", token("pg", "apps", sendKey))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.Status != tc.status || string(b) != tc.body || resp.Header.Get("X-Injected") != "" ||
			resp.Header.Get("Via") != "1.1 "+ns {
			t.Errorf("%s: %q %q %v, headers %v", tc.path, resp.Status, b, err, resp.Header)
		}
	}
}

// gatedReader yields first, then waits for open to close, then yields rest.
type gatedReader struct {
	first, rest io.Reader
	open        <-chan struct{}
	waited      bool
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if n, err := g.first.Read(p); n > 0 || err != io.EOF {
		return n, err
	}
	if !g.waited {
		<-g.open
		g.waited = true
	}
	return g.rest.Read(p)
}

// TestHTTPModeStreamsResponses: a response body reaches the sender while
// the listener is still writing it: the relay streams, it does not buffer
// the whole body. The listener writes 200 KiB, then waits until the sender
// has read them before it writes the rest; a relay that buffered would
// never hand the sender the first part.
func TestHTTPModeStreamsResponses(t *testing.T) {
	r := startRelayWith(t, nil, "api", "api2")
	const part = 200 << 10
	for hc, reason := range map[string]string{"api": "", "api2": "Streaming"} { // net/http's writer, and the relay's own for a reason phrase
		open := make(chan struct{})
		httpListener(t, r, hc, func(req *relayclient.Request) {
			ctx := context.Background()
			if err := req.Open(ctx); err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			body := &gatedReader{first: bytes.NewReader(bytes.Repeat([]byte("a"), part)), rest: bytes.NewReader(bytes.Repeat([]byte("b"), part)), open: open}
			req.Respond(ctx, http.StatusOK, reason, http.Header{"Content-Type": {"application/octet-stream"}}, body)
		})
		req, _ := http.NewRequest(http.MethodGet, httpURL(r, hc+"/stream"), nil)
		req.Header.Set("ServiceBusAuthorization", token(hc, "apps", sendKey))
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan error, 1)
		go func() {
			b := make([]byte, part)
			_, err := io.ReadFull(resp.Body, b)
			if err == nil && !bytes.Equal(b, bytes.Repeat([]byte("a"), part)) {
				err = fmt.Errorf("first part garbled")
			}
			got <- err
		}()
		select {
		case err := <-got:
			if err != nil {
				t.Fatalf("reason %q: first part: %v", reason, err)
			}
		case <-time.After(10 * time.Second):
			close(open)
			t.Fatalf("reason %q: the first 200 KiB did not reach the sender while the listener held back the rest: the relay buffers responses", reason)
		}
		close(open)
		rest, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(rest, bytes.Repeat([]byte("b"), part)) {
			t.Fatalf("reason %q: rest: %d bytes, %v", reason, len(rest), err)
		}
		if resp.Status != "200 "+map[string]string{"": "OK"}[reason]+reason {
			t.Fatalf("status %q", resp.Status)
		}
	}
}
