package relayclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wsconn"
)

// recordingDialer records every TCP connection the client tries to open
// and opens none.
type recordingDialer struct {
	mu    sync.Mutex
	addrs []string
}

var errRecorded = errors.New("recorded, not dialled")

func (r *recordingDialer) dial(_ context.Context, _, addr string) (net.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addrs = append(r.addrs, addr)
	return nil, errRecorded
}

func (r *recordingDialer) dialled() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.addrs...)
}

const (
	testRelayHost = "relay.example.com"
	testRelayHTTP = 8443
)

// testControl is a WebSocket control channel to relay.example.com whose
// dials are recorded. With tlsOn the relay entry uses TLS.
func testControl(tlsOn bool) (*wsControl, *recordingDialer) {
	rec := &recordingDialer{}
	n := &native{ep: Endpoint{Host: testRelayHost, Control: 5671, Data: 9352, HTTP: testRelayHTTP,
		RendezvousHosts: []string{".servicebus.windows.net", "gw.example.net"}}, dialTCP: rec.dial}
	if tlsOn {
		n.tls = &tls.Config{ServerName: testRelayHost}
	}
	return &wsControl{client: newWS(n), chans: map[string]*wsChan{}, addrs: map[StreamID]rendezvous{},
		events: make(chan Event, 1), done: make(chan struct{})}, rec
}

func noticeJSON(addr string) []byte {
	b, _ := json.Marshal(map[string]any{"accept": map[string]any{
		"address": addr, "id": "0123456789abcdef0123456789abcdef",
		"connectHeaders": map[string]string{"Hybrid-Target": "127.0.0.1:5432"},
		"remoteEndpoint": map[string]any{"address": "203.0.113.9", "port": 4000},
	}})
	return b
}

// allowedDial is the oracle, written apart from checkRendezvous: the only
// TCP connections an agent may make for a notice go to the relay's http
// port, or to a configured rendezvous host on the scheme's port.
func allowedDial(addr string, tlsOn bool) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	p, _ := strconv.Atoi(port)
	def := 80
	if tlsOn {
		def = 443
	}
	switch {
	case host == testRelayHost:
		return p == testRelayHTTP
	case host == "gw.example.net", strings.HasSuffix(host, ".servicebus.windows.net") && len(host) > len(".servicebus.windows.net"):
		return p == def || p == testRelayHTTP
	}
	return false
}

func requestJSON(addr string, method string, body bool) []byte {
	req := map[string]any{"address": addr, "id": "42c34cb5-7a04-4d40-a19f-bdc66441e736"}
	if method != "" {
		req["method"], req["requestTarget"], req["body"] = method, "/pg/x?y=1", body
		req["requestHeaders"] = map[string]string{"Host": "evil.example:80"}
	}
	b, _ := json.Marshal(map[string]any{"request": req})
	return b
}

// exercise feeds msg to a fresh control channel as the relay would, and
// acts on what comes out as the agent does: join an accept (or reject it);
// for an HTTP-mode request, fetch it if it must be fetched and answer it
// (with a body too large for the control channel when reject is false).
func exercise(t *testing.T, msg []byte, tlsOn, reject bool) []string {
	c, rec := testControl(tlsOn)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go io.Copy(io.Discard, a)
	ch := &wsChan{hc: "pg", ws: wsconn.NewConn(b, nil, false)}
	ev, ok := c.noticeOn(ch, msg)
	if !ok && ch.bodyFor != nil {
		ev, ok = c.requestBody(ch, []byte("the body"))
	}
	if ok && ev.Request != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if ev.Request.Open(ctx) == nil {
			size := 70 << 10
			if reject {
				size = 10
			}
			ev.Request.Respond(ctx, 200, "", nil, bytes.NewReader(make([]byte, size)))
		}
	}
	if ok && ev.Accept != nil {
		if reject {
			c.Reject(ev.Accept.ID, status.Refused, "no")
			c.rejects.Wait()
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			c.Join(ctx, ev.Accept, "SharedAccessSignature sr=x&sig=y&se=1&skn=k")
			cancel()
		}
	}
	return rec.dialled()
}

// TestRequestNotices: an HTTP-mode request's rendezvous address is held to
// the same rules as an accept's; a small answer needs no dial at all.
func TestRequestNotices(t *testing.T) {
	good := "ws://relay.example.com:8443/$hc/pg/orders?y=1&sb-hc-action=request&sb-hc-id=abc"
	tests := []struct {
		name      string
		msg       []byte
		small     bool
		wantDials int
	}{
		{"control channel, small answer", requestJSON(good, "GET", false), true, 0},
		{"control channel with body, large answer", requestJSON(good, "POST", true), false, 1},
		{"fetched over the rendezvous", requestJSON(good, "", false), true, 1},
		{"rendezvous off the relay", requestJSON("ws://10.0.0.1:8443/$hc/pg?sb-hc-action=request&sb-hc-id=abc", "", false), false, 0},
		{"accept action", requestJSON("ws://relay.example.com:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", "GET", false), false, 0},
		{"other connection", requestJSON("ws://relay.example.com:8443/$hc/other?sb-hc-action=request&sb-hc-id=abc", "GET", false), false, 0},
		{"dot segments", requestJSON("ws://relay.example.com:8443/$hc/pg/../other?sb-hc-action=request&sb-hc-id=abc", "GET", false), false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := exercise(t, tt.msg, false, tt.small)
			if len(got) != tt.wantDials {
				t.Fatalf("dialled %v, want %d dials", got, tt.wantDials)
			}
			for _, a := range got {
				if !allowedDial(a, false) {
					t.Fatalf("dialled %s", a)
				}
			}
		})
	}
}

func TestRendezvousAddresses(t *testing.T) {
	good := "ws://relay.example.com:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc"
	goodTLS := "wss://relay.example.com:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc"
	tests := []struct {
		addr  string
		tls   bool
		allow bool
	}{
		{good, false, true},
		{goodTLS, true, true},
		{"wss://g3-prod-am3-003-sb.servicebus.windows.net/$hc/pg?sb-hc-action=accept&sb-hc-id=abc&foo=bar", true, true},
		{"wss://gw.example.net/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", true, true},
		{"wss://RELAY.example.com.:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", true, true},
		{"ws://relay.example.com:8443/$hc/pg/orders/42?x=1&sb-hc-action=accept&sb-hc-id=abc", false, true}, // a sender's suffix
		{"ws://relay.example.com:8443/$hc/pgx?sb-hc-action=accept&sb-hc-id=abc", false, false},
		{"ws://relay.example.com:8443/$hc/pg//x?sb-hc-action=accept&sb-hc-id=abc", false, false},
		// scheme must match the entry's TLS setting
		{goodTLS, false, false},
		{good, true, false},
		{"http://relay.example.com:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", false, false},
		// other hosts
		{"ws://10.0.0.5:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", false, false},
		{"ws://127.0.0.1:5432/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", false, false},
		{"ws://relay.example.com.evil.com:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", false, false},
		{"ws://evilrelay.example.com:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", false, false},
		{"wss://servicebus.windows.net/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", true, false},
		{"wss://evil.com/.servicebus.windows.net/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", true, false},
		{"ws://relay.example.com:8443@evil.com/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", false, false},
		{"ws://user:pw@relay.example.com:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", false, false},
		{"ws://[::1]:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", false, false},
		// other ports on the relay host, or on a rendezvous host
		{"ws://relay.example.com:22/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", false, false},
		{"ws://relay.example.com/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", false, false},
		{"wss://gw.example.net:5432/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", true, false},
		{"ws://relay.example.com:08443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", false, true}, // same port
		{"ws://relay.example.com:99999/$hc/pg?sb-hc-action=accept&sb-hc-id=abc", false, false},
		// other paths and actions
		{"ws://relay.example.com:8443/$hc/other?sb-hc-action=accept&sb-hc-id=abc", false, false},
		{"ws://relay.example.com:8443/$hc/pg/../other?sb-hc-action=accept&sb-hc-id=abc", false, false},
		{"ws://relay.example.com:8443/admin?sb-hc-action=accept&sb-hc-id=abc", false, false},
		{"ws://relay.example.com:8443/$hc/pg?sb-hc-action=listen&sb-hc-id=abc", false, false},
		{"ws://relay.example.com:8443/$hc/pg?sb-hc-action=accept", false, false},
		{"ws://relay.example.com:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc#frag", false, false},
		{"", false, false},
		{"relay.example.com:8443", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			for _, reject := range []bool{false, true} {
				got := exercise(t, noticeJSON(tt.addr), tt.tls, reject)
				if !tt.allow && len(got) > 0 {
					t.Fatalf("reject=%v: dialled %v for a notice that must be dropped", reject, got)
				}
				if tt.allow && len(got) != 1 {
					t.Fatalf("reject=%v: dialled %v, want one dial to the rendezvous", reject, got)
				}
				for _, a := range got {
					if !allowedDial(a, tt.tls) {
						t.Fatalf("dialled %s", a)
					}
				}
			}
			c, _ := testControl(tt.tls)
			ev, ok := c.notice("pg", noticeJSON(tt.addr))
			if !ok || (ev.Dropped != nil) == tt.allow || (ev.Accept != nil) != tt.allow {
				t.Fatalf("event %+v ok=%v, allow=%v", ev, ok, tt.allow)
			}
			if ev.Dropped != nil && (ev.Dropped.Reason == "" || ev.Dropped.Accept == nil) {
				t.Fatalf("dropped without a reason: %+v", ev.Dropped)
			}
		})
	}
}

// FuzzAcceptNotice: whatever a relay sends on a WebSocket control channel,
// the agent dials nothing but the relay itself or a configured rendezvous
// host, for a join or for a rejection.
func FuzzAcceptNotice(f *testing.F) {
	for _, a := range []string{
		"ws://relay.example.com:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc",
		"wss://g1-prod.servicebus.windows.net/$hc/pg?sb-hc-action=accept&sb-hc-id=abc",
		"ws://127.0.0.1:22/$hc/pg?sb-hc-action=accept&sb-hc-id=abc",
		"ws://relay.example.com:8443@10.0.0.1/$hc/pg?sb-hc-action=accept&sb-hc-id=abc",
		"ws://relay.example.com%2e:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc",
		"ws://[fe80::1%25eth0]:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc",
	} {
		f.Add(noticeJSON(a), false)
		f.Add(noticeJSON(a), true)
	}
	f.Add([]byte(`{"accept":{"address":"ws://relay.example.com:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=1","id":"x"},"accept ":{}}`), false)
	f.Add([]byte(`{"request":{"address":"ws://10.0.0.1/"}}`), false)
	for _, a := range []string{
		"ws://relay.example.com:8443/$hc/pg/x?y=1&sb-hc-action=request&sb-hc-id=abc",
		"ws://127.0.0.1:22/$hc/pg?sb-hc-action=request&sb-hc-id=abc",
		"ws://relay.example.com:8443/$hc/pg?sb-hc-action=accept&sb-hc-id=abc",
	} {
		f.Add(requestJSON(a, "", false), false)
		f.Add(requestJSON(a, "POST", true), false)
		f.Add(requestJSON(a, "GET", false), true)
	}
	f.Fuzz(func(t *testing.T, msg []byte, tlsOn bool) {
		for _, reject := range []bool{false, true} {
			for _, a := range exercise(t, msg, tlsOn, reject) {
				if !allowedDial(a, tlsOn) {
					t.Fatalf("notice %q made the agent dial %s", msg, a)
				}
			}
		}
	})
}
