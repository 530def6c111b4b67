package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
)

func wsClient(r *testRelay) relayclient.Client {
	return relayclient.New(r.ep, relayclient.WithTransport(relayclient.TransportWebSocket))
}

func nativeClient(r *testRelay) relayclient.Client { return relayclient.New(r.ep) }

// startAgentWith is startAgent over a given client.
func startAgentWith(t *testing.T, c relayclient.Client, hc string, serve func(net.Conn)) *testAgent {
	t.Helper()
	ctx := context.Background()
	ctl, err := c.Listen(ctx, "test", "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	if err := ctl.Attach(ctx, hc, token(hc, "onprem", listenKey)); err != nil {
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
				c, err := ctl.Join(ctx, acc, token(acc.HC, "onprem", listenKey))
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

// TestWSAzureStyleListener drives the relay with the bare protocol, as an
// Azure client would: token in the query, accept JSON, rendezvous without a
// token, text frames for control.
func TestWSAzureStyleListener(t *testing.T) {
	r := startRelay(t)
	origin := "http://localhost/"
	lurl := fmt.Sprintf("ws://127.0.0.1:%d/$hc/pg?sb-hc-action=listen&sb-hc-token=%s", r.ep.HTTP, url.QueryEscape(token("pg", "onprem", listenKey)))
	ctl, err := websocket.Dial(lurl, "", origin)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	type acceptMsg struct {
		Accept struct {
			Address        string            `json:"address"`
			ID             string            `json:"id"`
			ConnectHeaders map[string]string `json:"connectHeaders"`
			RemoteEndpoint struct {
				Address string `json:"address"`
				Port    int    `json:"port"`
			} `json:"remoteEndpoint"`
		} `json:"accept"`
	}
	got := make(chan acceptMsg, 2)
	go func() {
		for {
			var m acceptMsg
			if err := websocket.JSON.Receive(ctl, &m); err != nil {
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
	if err := websocket.JSON.Send(ctl, &renew); err != nil {
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
	var m acceptMsg
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
	data, err := websocket.Dial(m.Accept.Address, "", origin) // no token: the address is the capability
	if err != nil {
		t.Fatal(err)
	}
	data.PayloadType = websocket.BinaryFrame
	go fullEcho(data)
	c := <-opened
	if c == nil {
		return
	}
	defer c.Close()
	roundTrip(t, c)
	// The address is single use.
	if _, err := websocket.Dial(m.Accept.Address, "", origin); err == nil {
		t.Fatal("rendezvous address used twice")
	}

	// A renewal with a bad token ends the channel.
	renew.RenewToken.Token = "SharedAccessSignature sr=x&sig=y&se=1&skn=onprem"
	websocket.JSON.Send(ctl, &renew)
	waitNoListener(t, r, "pg")
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
	if _, ok := c.(*websocket.Conn); !ok {
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
