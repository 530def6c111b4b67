package relayclient

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/status"
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

// exercise feeds msg to a fresh control channel as the relay would, and
// acts on what comes out as the agent does: join an accept (or reject it).
func exercise(t *testing.T, msg []byte, tlsOn, reject bool) []string {
	c, rec := testControl(tlsOn)
	ev, ok := c.notice("pg", msg)
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
