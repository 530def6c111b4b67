package relay

// The Azure protocol's details, each driven with a bare WebSocket client
// (internal/wsconn's, nothing of hybrid's client), as Microsoft's clients
// would: see docs/protocol.md's compatibility table.

import (
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

	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wsconn"
	"github.com/hybridconn/hybrid/rules"
)

type azAccept struct {
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

// rawListener is a listener speaking the bare protocol.
type rawListener struct {
	ctl     *wsconn.Conn
	notices chan azAccept
	closed  chan error
}

func listenRaw(t *testing.T, r *testRelay, hc string, hdr http.Header) *rawListener {
	t.Helper()
	u := fmt.Sprintf("ws://127.0.0.1:%d/$hc/%s?sb-hc-action=listen&sb-hc-token=%s", r.ep.HTTP, hc, url.QueryEscape(token(hc, "onprem", listenKey)))
	ctl, err := rawWS(u, hdr)
	if err != nil {
		t.Fatal(err)
	}
	l := &rawListener{ctl: ctl, notices: make(chan azAccept, 16), closed: make(chan error, 1)}
	go func() {
		for {
			var m azAccept
			if err := recvJSON(ctl, &m); err != nil {
				l.closed <- err
				return
			}
			l.notices <- m
		}
	}()
	t.Cleanup(func() { ctl.Close() })
	return l
}

func (l *rawListener) next(t *testing.T) azAccept {
	t.Helper()
	select {
	case m := <-l.notices:
		return m
	case err := <-l.closed:
		t.Fatalf("control channel ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no accept notice")
	}
	return azAccept{}
}

// closeOf waits for the end of a control channel and returns its close.
func (l *rawListener) closeOf(t *testing.T) *wsconn.CloseError {
	t.Helper()
	select {
	case err := <-l.closed:
		var ce *wsconn.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("control channel ended without a close frame: %v", err)
		}
		return ce
	case <-time.After(10 * time.Second):
		t.Fatal("control channel still open")
	}
	return nil
}

func connectURL(r *testRelay, pathAndQuery string) string {
	sep := "?"
	if strings.Contains(pathAndQuery, "?") {
		sep = "&"
	}
	hc := strings.SplitN(strings.SplitN(pathAndQuery, "?", 2)[0], "/", 2)[0]
	if i := strings.Index(pathAndQuery, "sql/reporting"); i == 0 {
		hc = "sql/reporting"
	}
	return fmt.Sprintf("ws://127.0.0.1:%d/$hc/%s%ssb-hc-action=connect&sb-hc-token=%s", r.ep.HTTP, pathAndQuery, sep,
		url.QueryEscape(token(hc, "apps", sendKey)))
}

// pair connects a raw sender to a raw listener through the relay and
// returns both WebSockets.
type dialed struct {
	c   *wsconn.Conn
	err error
}

func pair(t *testing.T, r *testRelay, l *rawListener, pathAndQuery string, hdr http.Header, protocols ...string) (sender, listener *wsconn.Conn, notice azAccept) {
	t.Helper()
	got := make(chan dialed, 1)
	go func() {
		c, err := rawWS(connectURL(r, pathAndQuery), hdr, protocols...)
		got <- dialed{c, err}
	}()
	notice = l.next(t)
	var lp []string
	if p := notice.Accept.ConnectHeaders["Sec-WebSocket-Protocol"]; p != "" {
		lp = []string{wsconn.Protocols(http.Header{"Sec-Websocket-Protocol": {p}})[0]}
	}
	listener, err := rawWS(notice.Accept.Address, nil, lp...)
	if err != nil {
		t.Fatal(err)
	}
	d := <-got
	if d.err != nil {
		t.Fatal(d.err)
	}
	t.Cleanup(func() { d.c.Close(); listener.Close() })
	return d.c, listener, notice
}

// TestAzureMessagesKept: between two WebSocket parties, messages cross the
// relay as messages: text stays text, boundaries are kept (issue row 2).
func TestAzureMessagesKept(t *testing.T) {
	r := startRelay(t)
	l := listenRaw(t, r, "pg", nil)
	s, lis, _ := pair(t, r, l, "pg", nil)
	msgs := []struct {
		op   byte
		data []byte
	}{{wsconn.OpText, []byte("hello")}, {wsconn.OpBinary, make([]byte, 100_000)}, {wsconn.OpText, []byte("bye!!")}}
	go func() {
		for _, m := range msgs {
			s.WriteMessage(m.op, m.data)
		}
		// A fragmented message stays one message too.
		mw, _ := s.NewMessageWriter(wsconn.OpText)
		mw.Write([]byte("frag"))
		mw.Write([]byte("mented"))
		mw.Close()
	}()
	for i, want := range msgs {
		op, b, err := lis.ReadMessage(1 << 20)
		if err != nil || op != want.op || len(b) != len(want.data) {
			t.Fatalf("message %d: op %d, %d bytes, %v; want op %d, %d bytes", i, op, len(b), err, want.op, len(want.data))
		}
	}
	if op, b, err := lis.ReadMessage(1 << 20); err != nil || op != wsconn.OpText || string(b) != "fragmented" {
		t.Fatalf("fragmented message: %d %q %v", op, b, err)
	}
}

// TestAzureCloseCodes: each side's close code and reason reach the other
// (issue row 3).
func TestAzureCloseCodes(t *testing.T) {
	r := startRelay(t)
	l := listenRaw(t, r, "pg", nil)
	for _, tc := range []struct {
		name   string
		fromL  bool
		code   int
		reason string
	}{
		{"listener closes", true, 4000, "listener says bye"},
		{"sender closes", false, 4001, "sender says bye"},
		{"going away", true, wsconn.CloseGoingAway, "restarting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, lis, _ := pair(t, r, l, "pg", nil)
			from, to := s, lis
			if tc.fromL {
				from, to = lis, s
			}
			from.WriteClose(tc.code, tc.reason)
			_, _, err := to.ReadMessage(1 << 20)
			var ce *wsconn.CloseError
			if !errors.As(err, &ce) || ce.Code != tc.code || ce.Reason != tc.reason {
				t.Fatalf("got %v, want close %d %q", err, tc.code, tc.reason)
			}
		})
	}
}

// TestAzureHalfClose: the .NET SDK's ShutdownAsync sends a close frame and
// goes on reading; the peer's answer after it arrives (issue row 4). With a
// bare listener, and with hybrid's agent (WebSocket transport) in front of
// a TCP resource that answers only after the request's end of file.
func TestAzureHalfClose(t *testing.T) {
	r := startRelay(t)
	t.Run("bare listener", func(t *testing.T) {
		l := listenRaw(t, r, "pg", nil)
		s, lis, _ := pair(t, r, l, "pg", nil)
		s.WriteMessage(wsconn.OpBinary, []byte("request"))
		s.WriteClose(wsconn.CloseNormal, "Shutdown")
		got, err := io.ReadAll(lis)
		if err != nil || string(got) != "request" {
			t.Fatalf("listener read %q, %v", got, err)
		}
		lis.WriteMessage(wsconn.OpBinary, []byte("answer after the sender's shutdown"))
		lis.WriteClose(wsconn.CloseNormal, "")
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		back, err := io.ReadAll(s)
		if err != nil || string(back) != "answer after the sender's shutdown" {
			t.Fatalf("sender read %q, %v", back, err)
		}
	})
	t.Run("hybrid agent", func(t *testing.T) {
		startAgentWith(t, wsClient(r), "other", func(c net.Conn) {
			// The resource: reads to EOF, then answers, then ends.
			req, _ := io.ReadAll(c)
			c.Write([]byte("got " + string(req)))
			c.Close()
		})
		s, err := rawWS(connectURL(r, "other"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.Write([]byte("everything"))
		s.CloseWrite()
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		back, err := io.ReadAll(s)
		if err != nil || string(back) != "got everything" {
			t.Fatalf("sender read %q, %v", back, err)
		}
	})
}

// TestAzureShutdown1001: a stopping relay closes control channels with
// 1001, every time (issue row 3: it was 1006 in about 1 of 6), and streams
// still live after the grace period with 1001 too.
func TestAzureShutdown1001(t *testing.T) {
	for i := 0; i < 8; i++ {
		r := startRelay(t)
		l := listenRaw(t, r, "pg", nil)
		var s *wsconn.Conn
		if i == 0 {
			s, _, _ = pair(t, r, l, "pg", nil)
		}
		r.cancel()
		if ce := l.closeOf(t); ce.Code != wsconn.CloseGoingAway {
			t.Fatalf("round %d: control channel closed with %d %q, want 1001", i, ce.Code, ce.Reason)
		}
		if s != nil {
			s.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, _, err := s.ReadMessage(1 << 10)
			var ce *wsconn.CloseError
			if !errors.As(err, &ce) || ce.Code != wsconn.CloseGoingAway {
				t.Fatalf("stream after the grace period: %v, want 1001", err)
			}
		}
	}
}

// TestAzureControlPolicy1008: a malformed control message ends the channel
// with 1008 (a bad renewToken does too: TestWSAzureStyleListener).
func TestAzureControlPolicy1008(t *testing.T) {
	r := startRelay(t)
	for _, msg := range []string{"not json", `{"renewToken":{"token":"SharedAccessSignature sr=x&sig=y&se=1&skn=onprem"}}`} {
		l := listenRaw(t, r, "pg", nil)
		l.ctl.WriteMessage(wsconn.OpText, []byte(msg))
		if ce := l.closeOf(t); ce.Code != wsconn.ClosePolicy {
			t.Fatalf("%q: closed with %d %q, want 1008", msg, ce.Code, ce.Reason)
		}
	}
}

// TestAzurePathsAndQuery: hybrid connection names with "/", a sender's
// path suffix and its non-sb- query parameters reach the listener in the
// accept address; sb- parameters (the token above all) do not (issue rows
// 5 and 6).
func TestAzurePathsAndQuery(t *testing.T) {
	r := startRelayWith(t, nil, "sql/reporting", "sql")
	for _, tc := range []struct {
		hc, path string
		wantPath string
	}{
		{"sql/reporting", "sql/reporting/orders/42?x=1&sb-hc-foo=bar&y=a%20b", "/$hc/sql/reporting/orders/42"},
		{"sql", "sql/orders?x=1&y=a%20b", "/$hc/sql/orders"},
		{"pg", "pg/a%2Fb/c?x=1&y=a%20b", "/$hc/pg/a%2Fb/c"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			l := listenRaw(t, r, tc.hc, nil)
			s, lis, n := pair(t, r, l, tc.path, nil)
			u, err := url.Parse(n.Accept.Address)
			if err != nil {
				t.Fatal(err)
			}
			q := u.Query()
			if u.EscapedPath() != tc.wantPath || q.Get("x") != "1" || q.Get("y") != "a b" || q.Has("sb-hc-token") || q.Has("sb-hc-foo") ||
				q.Get("sb-hc-action") != "accept" {
				t.Fatalf("accept address %s", n.Accept.Address)
			}
			go s.WriteMessage(wsconn.OpText, []byte("through"))
			if _, b, err := lis.ReadMessage(100); err != nil || string(b) != "through" {
				t.Fatalf("%q %v", b, err)
			}
		})
	}
	// A listener serves a hybrid connection, not a path below one.
	u := fmt.Sprintf("ws://127.0.0.1:%d/$hc/sql/orders?sb-hc-action=listen&sb-hc-token=%s", r.ep.HTTP, url.QueryEscape(token("sql", "onprem", listenKey)))
	if _, err := rawWS(u, nil); !isStatus(err, 404) {
		t.Fatalf("listen below a name: %v", err)
	}
	u = fmt.Sprintf("ws://127.0.0.1:%d/$hc/nosuch/x?sb-hc-action=connect", r.ep.HTTP)
	if _, err := rawWS(u, nil); !isStatus(err, 404) {
		t.Fatalf("unknown name: %v", err)
	}
}

func isStatus(err error, code int) bool {
	var he *wsconn.HandshakeError
	return errors.As(err, &he) && he.StatusCode == code
}

// TestAzureTrackingAndHeaders: the sender's sb-hc-id is the stream's
// tracking id (the notice's id and the address's sb-hc-id); its own
// Authorization header reaches the listener, the relay's credential does
// not (issue rows 7 and 8).
func TestAzureTrackingAndHeaders(t *testing.T) {
	r := startRelay(t)
	l := listenRaw(t, r, "pg", nil)
	hdr := http.Header{"Authorization": {"Bearer app-token"}, "X-Custom": {"one"},
		"Servicebusauthorization": {token("pg", "apps", sendKey)}, "Hybrid-Sender-Key": {"forged"}}
	s, lis, n := pair(t, r, l, "pg?sb-hc-id=4cb542c3-047a-4d40-a19f-bdc66441e736_G1", hdr)
	h := n.Accept.ConnectHeaders
	if n.Accept.ID != "4cb542c3-047a-4d40-a19f-bdc66441e736_G1" || !strings.Contains(n.Accept.Address, "sb-hc-id=4cb542c3-047a-4d40-a19f-bdc66441e736_G1") {
		t.Fatalf("tracking id: notice id %q, address %s", n.Accept.ID, n.Accept.Address)
	}
	if header(h, "Authorization") != "Bearer app-token" || header(h, "X-Custom") != "one" || header(h, "ServiceBusAuthorization") != "" ||
		header(h, "Hybrid-Sender-Key") != "apps" {
		t.Fatalf("connect headers %v", h)
	}
	go s.WriteMessage(wsconn.OpText, []byte("x"))
	if _, _, err := lis.ReadMessage(10); err != nil {
		t.Fatal(err)
	}
	// A tracking id that is not one is ignored, not passed on.
	_, _, n = pair(t, r, l, "pg?sb-hc-id=bad%20id%0A", nil)
	if strings.Contains(n.Accept.ID, "bad") || strings.Contains(n.Accept.Address, "bad") {
		t.Fatalf("bad tracking id passed on: %+v", n.Accept)
	}
}

// TestAzureSubprotocols: a sender may offer several subprotocols; the
// listener's choice is the one the sender gets (issue row 9: it was 400,
// after the listener had joined).
func TestAzureSubprotocols(t *testing.T) {
	r := startRelay(t)
	l := listenRaw(t, r, "pg", nil)
	got := make(chan dialed, 1)
	go func() {
		c, err := rawWS(connectURL(r, "pg"), nil, "chat.v2", "chat.v1")
		got <- dialed{c, err}
	}()
	n := l.next(t)
	if p := header(n.Accept.ConnectHeaders, "Sec-WebSocket-Protocol"); p != "chat.v2, chat.v1" {
		t.Fatalf("listener was offered %q", p)
	}
	lis, err := rawWS(n.Accept.Address, nil, "chat.v1") // the listener picks the second
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	d := <-got
	if d.err != nil {
		t.Fatal(d.err)
	}
	defer d.c.Close()
	if d.c.Subprotocol() != "chat.v1" || lis.Subprotocol() != "chat.v1" {
		t.Fatalf("sender got %q, listener %q; want chat.v1", d.c.Subprotocol(), lis.Subprotocol())
	}
}

// TestAzureRejectStatus: a listener's rejection reaches the sender as its
// status and reason phrase (issue row 10: they all arrived as 400).
func TestAzureRejectStatus(t *testing.T) {
	r := startRelay(t)
	l := listenRaw(t, r, "pg", nil)
	for _, tc := range []struct {
		query      string
		wantStatus string
		wantCode   string
	}{
		{"sb-hc-statusCode=409&sb-hc-statusDescription=" + url.QueryEscape("Already Connected"), "409 Already Connected", "1"},
		{"sb-hc-statusCode=418&sb-hc-statusDescription=" + url.QueryEscape("I'm a teapot"), "418 I'm a teapot", "1"},
		{"sb-hc-statusCode=451&sb-hc-statusDescription=" + url.QueryEscape("Unavailable\r\nX-Injected: yes"), "451 UnavailableX-Injected: yes", "1"},
		{"statusCode=401&statusDescription=Unauthorized", "401 Unauthorized", "2"}, // hyco-ws's spelling
		{"sb-hc-statusCode=503", "503 Service Unavailable", "12"},
		{"sb-hc-statusCode=200&sb-hc-statusDescription=fine", "400 fine", "1"}, // not an error status
	} {
		t.Run(tc.wantStatus, func(t *testing.T) {
			got := make(chan dialed, 1)
			go func() {
				c, err := rawWS(connectURL(r, "pg"), nil)
				got <- dialed{c, err}
			}()
			n := l.next(t)
			_, err := rawWS(n.Accept.Address+"&"+tc.query, nil)
			if !isStatus(err, http.StatusGone) {
				t.Fatalf("rejection answered %v, want 410", err)
			}
			d := <-got
			var he *wsconn.HandshakeError
			if !errors.As(d.err, &he) || he.Status != tc.wantStatus || he.Header.Get(HeaderStatus) != tc.wantCode || len(he.Header.Values("X-Injected")) != 0 {
				t.Fatalf("sender got %v (%+v), want %q", d.err, he, tc.wantStatus)
			}
		})
	}
}

// TestAzureListenerCap: at most max_listeners control channels per hybrid
// connection. hybrid's agent over the cap gets 429; other clients (which
// retry at once, and double their attempts on a refused handshake) are held
// and then closed with 1013, and never become listeners (issue row 12;
// TestHycoWSReconnectStorm drives the real hyco-ws).
func TestAzureListenerCap(t *testing.T) {
	r := startRelayWith(t, func(c *rules.Relay) { c.MaxListeners = 3 })
	r.srv.ws.parkTime = 300 * time.Millisecond
	for i := 0; i < 3; i++ {
		listenRaw(t, r, "pg", nil)
	}
	ctx := context.Background()
	ctl, err := wsClient(r).Listen(ctx, "agent", "v")
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if err := ctl.Attach(ctx, "pg", token("pg", "onprem", listenKey)); status.CodeOf(err) != status.Busy {
		t.Fatalf("hybrid agent over the cap: %v, want busy", err)
	}
	over := listenRaw(t, r, "pg", nil) // upgraded, but parked
	if ce := over.closeOf(t); ce.Code != wsconn.CloseTryAgainLater {
		t.Fatalf("parked listener closed with %d, want 1013", ce.Code)
	}
	r.srv.core.mu.Lock()
	n := len(r.srv.core.hcs["pg"].listeners)
	r.srv.core.mu.Unlock()
	if n != 3 {
		t.Fatalf("%d listeners, want 3", n)
	}
	if err := ctl.Attach(ctx, "other", token("other", "onprem", listenKey)); err != nil {
		t.Fatalf("the cap is per hybrid connection: %v", err)
	}
}

// TestAzureRendezvousScheme: behind a TLS-terminating load balancer the
// rendezvous addresses say wss (issue row 13): from relay.public_url, or
// from X-Forwarded-Proto.
func TestAzureRendezvousScheme(t *testing.T) {
	t.Run("X-Forwarded-Proto", func(t *testing.T) {
		r := startRelay(t)
		l := listenRaw(t, r, "pg", http.Header{"X-Forwarded-Proto": {"https"}})
		go rawWS(connectURL(r, "pg"), nil)
		n := l.next(t)
		if !strings.HasPrefix(n.Accept.Address, fmt.Sprintf("wss://127.0.0.1:%d/$hc/pg?", r.ep.HTTP)) {
			t.Fatalf("address %s", n.Accept.Address)
		}
	})
	t.Run("public_url", func(t *testing.T) {
		r := startRelayWith(t, func(c *rules.Relay) { c.PublicURL = "https://relay.example.com" })
		l := listenRaw(t, r, "pg", nil)
		go rawWS(connectURL(r, "pg"), nil)
		n := l.next(t)
		if !strings.HasPrefix(n.Accept.Address, "wss://relay.example.com/$hc/pg?") {
			t.Fatalf("address %s", n.Accept.Address)
		}
	})
	t.Run("plain", func(t *testing.T) {
		r := startRelay(t)
		l := listenRaw(t, r, "pg", nil)
		go rawWS(connectURL(r, "pg"), nil)
		n := l.next(t)
		if !strings.HasPrefix(n.Accept.Address, fmt.Sprintf("ws://127.0.0.1:%d/$hc/pg?", r.ep.HTTP)) {
			t.Fatalf("address %s", n.Accept.Address)
		}
	})
}
