package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wsconn"
)

func wsClient(r *testRelay) relayclient.Client {
	return relayclient.New(r.ep, relayclient.WithTransport(relayclient.TransportWebSocket))
}

func nativeClient(r *testRelay) relayclient.Client { return relayclient.New(r.ep) }

// startAgentWith is startAgent over a given client.
func startAgentWith(t testing.TB, c relayclient.Client, hc string, serve func(net.Conn)) *testAgent {
	t.Helper()
	return startAgentToken(t, c, hc, token(hc, "onprem", listenKey), serve)
}

// startAgentToken is startAgentWith with a given listen token (also used
// for its joins).
func startAgentToken(t testing.TB, c relayclient.Client, hc, tok string, serve func(net.Conn)) *testAgent {
	t.Helper()
	ctx := context.Background()
	ctl, err := c.Listen(ctx, "test", "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	if err := ctl.Attach(ctx, hc, tok); err != nil {
		t.Fatal(err)
	}
	a := &testAgent{ctl: ctl, served: make(chan string, 100)}
	go func() {
		for ev := range ctl.Events() {
			if ev.Accept == nil {
				continue
			}
			acc := ev.Accept
			if serve == nil {
				ctl.Reject(acc.ID, status.Refused, "test says no")
				continue
			}
			go func() {
				c, err := ctl.Join(ctx, acc, tok)
				if err != nil {
					return
				}
				a.served <- acc.Target + "|" + acc.SenderKey
				serve(c)
			}()
		}
	}()
	return a
}

// fullEcho echoes until EOF, then closes (WebSocket has no half-close).
func fullEcho(c net.Conn) {
	io.Copy(c, c)
	c.Close()
}

func openWith(c relayclient.Client, hc, keyName, key, target string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.Open(ctx, hc, token(hc, keyName, key), target)
}

// roundTrip writes rounds of messages and reads each echo back.
func roundTrip(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	for i, size := range []int{1, 100, 64 << 10, 1 << 20} {
		msg := make([]byte, size)
		for j := range msg {
			msg[j] = byte(i*7 + j)
		}
		go c.Write(msg)
		back := make([]byte, size)
		if _, err := io.ReadFull(c, back); err != nil {
			t.Fatalf("round %d (%d bytes): %v", i, size, err)
		}
		if !bytes.Equal(msg, back) {
			t.Fatalf("round %d: echo differs", i)
		}
	}
}

func TestWSStreams(t *testing.T) {
	r := startRelay(t)
	cases := []struct {
		name           string
		agent, sender  relayclient.Client
		echo           func(net.Conn)
		wantSenderInfo bool
	}{
		{"websocket-both", wsClient(r), wsClient(r), fullEcho, true},
		{"native-agent-websocket-sender", nativeClient(r), wsClient(r), fullEcho, true},
		{"websocket-agent-native-sender", wsClient(r), nativeClient(r), fullEcho, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hc := "pg"
			a := startAgentWith(t, tc.agent, hc, tc.echo)
			c, err := openWith(tc.sender, hc, "apps", sendKey, "db.internal:5432")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			roundTrip(t, c)
			select {
			case got := <-a.served:
				if got != "db.internal:5432|apps" {
					t.Fatalf("agent saw %q, want target and sender key", got)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("agent did not report the stream")
			}
			a.ctl.Close()
			waitNoListener(t, r, hc)
		})
	}
}

func waitNoListener(t *testing.T, r *testRelay, hc string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		r.srv.core.mu.Lock()
		l := r.srv.core.hcs[hc]
		gone := l == nil || len(l.listeners) == 0
		r.srv.core.mu.Unlock()
		if gone {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("a listener for %q is still attached", hc)
}

func TestWSRefusals(t *testing.T) {
	r := startRelay(t)
	ws := wsClient(r)
	ctx := context.Background()
	// No listener yet.
	if _, err := openWith(ws, "pg", "apps", sendKey, ""); !errors.Is(err, status.Errorf(status.NoListener, "")) {
		t.Fatalf("no listener: %v", err)
	}
	// Wrong key value, wrong right, unknown hc: on the sender side…
	if _, err := openWith(ws, "pg", "apps", "wrong-key-wrong-key-wrong-key-000", ""); !errors.Is(err, status.Errorf(status.Unauthorized, "")) {
		t.Fatalf("bad key: %v", err)
	}
	if _, err := openWith(ws, "pg", "onprem", listenKey, ""); !errors.Is(err, status.Errorf(status.Forbidden, "")) {
		t.Fatalf("listen key used to send: %v", err)
	}
	if _, err := openWith(ws, "nosuch", "apps", sendKey, ""); status.CodeOf(err) == status.OK || status.CodeOf(err) == status.Internal {
		t.Fatalf("unknown hc: %v", err)
	}
	// …and on the listener side.
	ctl, err := ws.Listen(ctx, "test", "test")
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if err := ctl.Attach(ctx, "pg", token("pg", "apps", sendKey)); !errors.Is(err, status.Errorf(status.Forbidden, "")) {
		t.Fatalf("send key used to listen: %v", err)
	}
	// Rejection by the agent reaches the sender with its code and message.
	startAgentWith(t, ws, "other", nil)
	_, err = openWith(ws, "other", "apps", sendKey, "x:1")
	var se *status.Error
	if !errors.As(err, &se) || se.Code != status.Refused || !strings.Contains(se.Msg, "test says no") {
		t.Fatalf("rejected stream: %v", err)
	}
	_, err = openWith(nativeClient(r), "other", "apps", sendKey, "x:1")
	if !errors.As(err, &se) || se.Code != status.Refused || !strings.Contains(se.Msg, "test says no") {
		t.Fatalf("rejected stream, native sender: %v", err)
	}
	// Check over WebSocket.
	if err := ws.Check(ctx, "pg", token("pg", "apps", sendKey), sas.Send); err != nil {
		t.Fatalf("check: %v", err)
	}
	if err := ws.Check(ctx, "pg", token("pg", "apps", sendKey), sas.Listen); !errors.Is(err, status.Errorf(status.Forbidden, "")) {
		t.Fatalf("check with the wrong right: %v", err)
	}
}

// TestWSHTTPCodes checks the handshake refusals as an Azure client sees them.
func TestWSHTTPCodes(t *testing.T) {
	r := startRelay(t)
	base := fmt.Sprintf("http://127.0.0.1:%d/$hc/", r.ep.HTTP)
	get := func(path string, hdr map[string]string) (int, string) {
		req, _ := http.NewRequest("GET", base+path, nil)
		for k, v := range upgradeHeaders() {
			req.Header[k] = v
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		path string
		hdr  map[string]string
		want int
	}{
		{"pg?sb-hc-action=listen", nil, 401},
		{"pg?sb-hc-action=listen&sb-hc-token=" + url.QueryEscape(token("pg", "apps", sendKey)), nil, 403},
		{"pg?sb-hc-action=connect", map[string]string{"ServiceBusAuthorization": token("pg", "onprem", listenKey)}, 403},
		{"pg?sb-hc-action=connect", map[string]string{"ServiceBusAuthorization": token("pg", "apps", sendKey)}, 404},
		{"pg?sb-hc-action=accept&sb-hc-id=00112233445566778899aabbccddeeff", nil, 404},
		{"pg?sb-hc-action=bogus", nil, 400},
	} {
		if code, body := get(tc.path, tc.hdr); code != tc.want || strings.TrimSpace(body) == "" {
			t.Errorf("%s: %d %q, want %d with a body", tc.path, code, body, tc.want)
		}
	}
}

// upgradeHeaders are a WebSocket handshake's headers.
func upgradeHeaders() http.Header {
	return http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}, "Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
}

// TestWSPlainGETRefusedBeforeNotice: a connect, accept or listen request
// that is no WebSocket upgrade is refused (400) before anything happens:
// the listener hears of no stream, no pending stream is claimed.
func TestWSPlainGETRefusedBeforeNotice(t *testing.T) {
	r := startRelay(t)
	var notices atomic.Int64
	ctl, err := wsClient(r).Listen(context.Background(), "t", "v")
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if err := ctl.Attach(context.Background(), "pg", token("pg", "onprem", listenKey)); err != nil {
		t.Fatal(err)
	}
	go func() {
		for ev := range ctl.Events() {
			if ev.Accept != nil {
				notices.Add(1)
				ctl.Reject(ev.Accept.ID, status.Refused, "counted")
			}
		}
	}()
	base := fmt.Sprintf("http://127.0.0.1:%d/$hc/pg", r.ep.HTTP)
	for _, tc := range []struct {
		name, query string
		hdr         http.Header
	}{
		{"plain GET", "?sb-hc-action=connect", nil},
		{"Upgrade without Connection", "?sb-hc-action=connect", http.Header{"Upgrade": {"websocket"}}},
		{"wrong version", "?sb-hc-action=connect", http.Header{"Upgrade": {"websocket"}, "Connection": {"upgrade"}, "Sec-Websocket-Version": {"8"}}},
		{"token in the query", "?sb-hc-action=connect&sb-hc-token=" + url.QueryEscape(token("pg", "apps", sendKey)), nil},
		{"suffix", "/orders?sb-hc-action=connect", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", base+tc.query, nil)
			req.Header = tc.hdr
			if req.Header == nil {
				req.Header = http.Header{}
			}
			req.Header.Set("ServiceBusAuthorization", token("pg", "apps", sendKey))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(HeaderStatus) != "1" {
				t.Fatalf("got %s (Hybrid-Status %q), want 400", resp.Status, resp.Header.Get(HeaderStatus))
			}
		})
	}
	// A real handshake does reach the listener, and is the only notice it got.
	_, err = rawWS(fmt.Sprintf("ws://127.0.0.1:%d/$hc/pg?sb-hc-action=connect&sb-hc-token=%s", r.ep.HTTP,
		url.QueryEscape(token("pg", "apps", sendKey))), nil)
	var he *wsconn.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != http.StatusBadGateway {
		t.Fatalf("real handshake: %v, want the listener's refusal", err)
	}
	if n := notices.Load(); n != 1 {
		t.Fatalf("listener got %d notices, want 1", n)
	}
}

// waitFor polls cond until it holds, or fails after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWSAzureStyleListener drives the relay with the bare protocol, as an
// Azure client would: token in the query, accept JSON, rendezvous without a
// token, text frames for control.
func TestWSAzureStyleListener(t *testing.T) {
	r := startRelay(t)
	lurl := fmt.Sprintf("ws://127.0.0.1:%d/$hc/pg?sb-hc-action=listen&sb-hc-token=%s", r.ep.HTTP, url.QueryEscape(token("pg", "onprem", listenKey)))
	ctl, err := rawWS(lurl, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	got := make(chan azAccept, 2)
	closed := make(chan error, 1)
	go func() {
		for {
			var m azAccept
			if err := recvJSON(ctl, &m); err != nil {
				closed <- err
				return
			}
			got <- m
		}
	}()
	// Renewal is silent on success.
	var renew struct {
		RenewToken struct {
			Token string `json:"token"`
		} `json:"renewToken"`
	}
	renew.RenewToken.Token = token("pg", "onprem", listenKey)
	if err := sendJSON(ctl, &renew); err != nil {
		t.Fatal(err)
	}

	opened := make(chan net.Conn, 1)
	go func() {
		c, err := openWith(wsClient(r), "pg", "apps", sendKey, "10.0.0.1:22")
		if err != nil {
			t.Error(err)
			close(opened)
			return
		}
		opened <- c
	}()
	var m azAccept
	select {
	case m = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no accept notice")
	}
	if !strings.HasPrefix(m.Accept.Address, fmt.Sprintf("ws://127.0.0.1:%d/$hc/pg?sb-hc-action=accept&sb-hc-id=", r.ep.HTTP)) ||
		!strings.HasSuffix(m.Accept.Address, m.Accept.ID) || m.Accept.ConnectHeaders["Hybrid-Target"] != "10.0.0.1:22" ||
		m.Accept.ConnectHeaders["Hybrid-Sender-Key"] != "apps" || m.Accept.RemoteEndpoint.Address != "127.0.0.1" || m.Accept.RemoteEndpoint.Port == 0 {
		t.Fatalf("accept notice: %+v", m)
	}
	data, err := rawWS(m.Accept.Address, nil) // no token: the address is the capability
	if err != nil {
		t.Fatal(err)
	}
	go fullEcho(data)
	c := <-opened
	if c == nil {
		return
	}
	defer c.Close()
	roundTrip(t, c)
	// The address is single use.
	if _, err := rawWS(m.Accept.Address, nil); err == nil {
		t.Fatal("rendezvous address used twice")
	}

	// A renewal with a bad token ends the channel, with 1008.
	renew.RenewToken.Token = "SharedAccessSignature sr=x&sig=y&se=1&skn=onprem"
	sendJSON(ctl, &renew)
	waitNoListener(t, r, "pg")
	select {
	case err := <-closed:
		var ce *wsconn.CloseError
		if !errors.As(err, &ce) || ce.Code != wsconn.ClosePolicy {
			t.Fatalf("control channel ended with %v, want close 1008", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("control channel not closed after a bad renewal")
	}
}

// rawWS dials a WebSocket as a bare Azure client would: nothing of
// hybrid's client, only the handshake (headers and subprotocols given).
func rawWS(rawURL string, hdr http.Header, protocols ...string) (*wsconn.Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return wsconn.Dial(ctx, conn, u, wsconn.DialOptions{Header: hdr, Protocols: protocols})
}

func sendJSON(ws *wsconn.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return ws.WriteMessage(wsconn.OpText, b)
}

func recvJSON(ws *wsconn.Conn, v any) error {
	_, b, err := ws.ReadMessage(1 << 20)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func TestWSRenewAndShutdown(t *testing.T) {
	r := startRelay(t)
	ws := wsClient(r)
	ctx := context.Background()
	a := startAgentWith(t, ws, "pg", fullEcho)
	if err := a.ctl.Renew(ctx, "pg", token("pg", "onprem", listenKey)); err != nil {
		t.Fatal(err)
	}
	c, err := openWith(ws, "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
	c.Close()
	// A bad renewal ends the control channel.
	if err := a.ctl.Renew(ctx, "pg", "SharedAccessSignature sr=x&sig=y&se=1&skn=onprem"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.ctl.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("control channel still up after a refused renewal")
	}
	// Relay shutdown closes a WebSocket control channel (hijacked, so not
	// http.Server's to close).
	b := startAgentWith(t, ws, "other", fullEcho)
	r.cancel()
	select {
	case <-b.ctl.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("control channel still up after relay shutdown")
	}
}

func TestAutoFallsBack(t *testing.T) {
	r := startRelay(t)
	ep := r.ep
	dead := lis(t)
	ep.Control = port(dead)
	dead.Close() // nothing listens there now
	auto := relayclient.New(ep, relayclient.WithTransport(relayclient.TransportAuto), relayclient.WithProbeTimeout(time.Second))
	startAgentWith(t, auto, "pg", fullEcho)
	c, err := openWith(auto, "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c)
	if _, ok := c.(*wsconn.Conn); !ok {
		t.Fatalf("auto gave a %T, want the websocket fallback", c)
	}
	// With the native ports up, auto uses them.
	c2, err := openWith(relayclient.New(r.ep, relayclient.WithTransport(relayclient.TransportAuto)), "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, ok := c2.(*net.TCPConn); !ok {
		t.Fatalf("auto gave a %T with native up", c2)
	}
	roundTrip(t, c2)
}

// TestWSIdleControlSurvives: a quiet control channel outlives the write
// timeout and a client ping (the library's pong must not hit a stale write
// deadline), and still takes streams.
func TestWSIdleControlSurvives(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 20 s")
	}
	r := startRelay(t)
	ws := wsClient(r)
	a := startAgentWith(t, ws, "pg", fullEcho)
	select {
	case <-a.ctl.Done():
		t.Fatalf("control channel ended while idle: %v", a.ctl.Err())
	case <-time.After(writeTimeout + 10*time.Second):
	}
	c, err := openWith(ws, "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c)
}
