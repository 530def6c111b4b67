package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wire"
	"github.com/hybridconn/hybrid/rules"
)

func TestAuthorize(t *testing.T) {
	cfg := &rules.Agent{
		Allow: []string{"127.0.0.1:5432", "db.corp.local:5432", "[::1]:8080"},
		Connections: []rules.AgentConnection{
			{Name: "postgres", Endpoint: "127.0.0.1:5432"},
			{Name: "named", Endpoint: "db.corp.local:5432"},
			{Name: "v6", Endpoint: "[::1]:8080"},
			{Name: "outside", Endpoint: "127.0.0.1:22"}, // published but not allowed
		},
	}
	tests := []struct {
		hc, target string
		want       string      // endpoint to dial when allowed
		code       status.Code // refusal code otherwise
	}{
		{"postgres", "", "127.0.0.1:5432", 0},
		{"postgres", "127.0.0.1:5432", "127.0.0.1:5432", 0},
		{"postgres", "[::ffff:127.0.0.1]:5432", "127.0.0.1:5432", 0}, // same destination
		{"named", "DB.Corp.Local.:5432", "db.corp.local:5432", 0},
		{"v6", "[0:0:0:0:0:0:0:1]:8080", "[::1]:8080", 0},
		// hostile forms: never a different endpoint, never the requested text
		{"postgres", "127.0.0.1:5433", "", status.Refused},
		{"postgres", "127.1:5432", "", status.Refused},
		{"postgres", "0x7f.0.0.1:5432", "", status.Refused},
		{"postgres", "127.0.0.1:05432", "", status.Refused},
		{"postgres", "127.0.0.1:5432\x00", "", status.Refused},
		{"postgres", "127.0.0.1:5432 ", "", status.Refused},
		{"postgres", "localhost:5432", "", status.Refused},
		{"postgres", "db.corp.local:5432", "", status.Refused}, // another HC's endpoint
		{"named", "db.corp.local.evil.com:5432", "", status.Refused},
		{"postgres", "169.254.169.254:80", "", status.Refused},
		{"unknown", "", "", status.NotFound},
		{"Postgres", "", "", status.NotFound},
		{"outside", "", "", status.Refused},
		{"outside", "127.0.0.1:22", "", status.Refused},
	}
	for _, tt := range tests {
		t.Run(tt.hc+"/"+strconv.Quote(tt.target), func(t *testing.T) {
			got, err := Authorize(cfg, tt.hc, tt.target)
			if tt.code != 0 {
				if err == nil || err.Code != tt.code {
					t.Fatalf("got %q, %v; want refusal %v", got, err, tt.code)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// countingListener is a resource that counts the connections it accepts.
func countingListener(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	return countingListenerOn(t, "127.0.0.1")
}

// TestHostileRelay plays a relay that asks the agent for endpoints it does
// not publish. The agent must reject each one and dial nothing: every
// resource here counts its accepts.
func TestHostileRelay(t *testing.T) {
	published, publishedHits := countingListener(t)
	other, otherHits := countingListener(t)     // on the same host, not published
	outside, outsideHits := countingListener(t) // published but not in allow
	_, otherPort, _ := net.SplitHostPort(other)
	pubHost, pubPort, _ := net.SplitHostPort(published)

	relayLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer relayLn.Close()
	_, rport, _ := net.SplitHostPort(relayLn.Addr().String())
	port, _ := strconv.Atoi(rport)

	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	cfg := &rules.Agent{
		Relays: []rules.RelayEndpoint{{Host: "127.0.0.1", Control: port, Data: port, Namespace: "ns"}},
		Allow:  []string{published},
		Audit:  audit,
		ID:     "test-agent",
		Connections: []rules.AgentConnection{
			{Name: "pg", Endpoint: published, KeyName: "k", Key: "0123456789abcdef0123"},
			{Name: "notallowed", Endpoint: outside, KeyName: "k", Key: "0123456789abcdef0123"},
		},
	}
	_, stop := runAgent(t, cfg)

	conn, err := relayLn.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(conn)
	if err := wire.ReadPreface(br); err != nil {
		t.Fatal(err)
	}
	if f, err := wire.Read(br); err != nil || f.Type() != wire.TypeHello {
		t.Fatalf("want HELLO, got %v %v", f, err)
	}
	wire.Write(conn, &wire.Welcome{PingMS: 15000})
	// Only pg attaches: notallowed is published but outside allow, so the
	// agent does not even listen for it.
	for i := 0; i < 1; i++ {
		f, err := wire.Read(br)
		if err != nil {
			t.Fatal(err)
		}
		at, ok := f.(*wire.Attach)
		if !ok {
			t.Fatalf("want ATTACH, got %s", f.Type())
		}
		wire.Write(conn, &wire.Attached{HC: at.HC})
	}

	asks := []struct{ hc, target string }{
		{"pg", other},                           // another port on the same host
		{"pg", "127.1:" + pubPort},              // inet_aton shorthand of the published host
		{"pg", pubHost + ":0" + pubPort},        // leading zero
		{"pg", "localhost:" + pubPort},          // a name for the same address
		{"pg", published + "\x00"},              // trailing NUL
		{"pg", "[::ffff:127.0.0.2]:" + pubPort}, // mapped form of another address
		{"pg", "127.0.0.1:" + otherPort + "#" + pubPort},
		{"notallowed", ""}, // published, but outside allow
		{"notallowed", outside},
		{"unknown", published}, // a connection the agent does not serve
		{"PG", ""},             // names are exact
	}
	for i, ask := range asks {
		id := wire.StreamID{byte(i + 1)}
		wire.Write(conn, &wire.Accept{ID: id, HC: ask.hc, Target: ask.target, SenderKey: "apps", SenderAddr: "203.0.113.9:4000"})
		f, err := readSkippingPings(br, conn)
		if err != nil {
			t.Fatalf("ask %d: %v", i, err)
		}
		rej, ok := f.(*wire.Reject)
		if !ok {
			t.Fatalf("ask %d (%q %q): want REJECT, got %s", i, ask.hc, ask.target, f.Type())
		}
		if rej.ID != id || rej.Code == status.OK {
			t.Fatalf("ask %d: bad reject %+v", i, rej)
		}
	}
	if n := publishedHits.Load() + otherHits.Load() + outsideHits.Load(); n != 0 {
		t.Fatalf("agent dialled %d times (published %d, other %d, outside %d)", n,
			publishedHits.Load(), otherHits.Load(), outsideHits.Load())
	}

	// Every denial is in the audit log with its reason.
	stop()
	b, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != len(asks) {
		t.Fatalf("audit has %d lines, want %d:\n%s", len(lines), len(asks), b)
	}
	for _, l := range lines {
		var ev AuditEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Event != "deny" || ev.Reason == "" || ev.SenderAddr != "203.0.113.9:4000" {
			t.Fatalf("audit line %s", l)
		}
	}
}

func readSkippingPings(br *bufio.Reader, conn net.Conn) (wire.Frame, error) {
	for {
		f, err := wire.Read(br)
		if err != nil {
			return nil, err
		}
		if p, ok := f.(*wire.Ping); ok {
			wire.Write(conn, &wire.Pong{Nonce: p.Nonce})
			continue
		}
		return f, nil
	}
}

// TestAcceptFloodBounded plays a hostile relay that sends 3,000 accepts
// and never answers a join: the agent dials the resource at most
// max_streams times and refuses the rest busy at once, without queuing.
func TestAcceptFloodBounded(t *testing.T) {
	resLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer resLn.Close()
	var resConns atomic.Int64
	var held []net.Conn
	var heldMu sync.Mutex
	go func() {
		for {
			c, err := resLn.Accept()
			if err != nil {
				return
			}
			resConns.Add(1)
			heldMu.Lock()
			held = append(held, c) // held open: the agent's slot stays taken
			heldMu.Unlock()
		}
	}()
	defer func() {
		heldMu.Lock()
		for _, c := range held {
			c.Close()
		}
		heldMu.Unlock()
	}()
	relayLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer relayLn.Close()
	dataLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dataLn.Close()
	go func() { // joins are taken and never answered
		for {
			c, err := dataLn.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	port := func(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }
	const maxStreams = 100
	cfg := &rules.Agent{
		Relays:     []rules.RelayEndpoint{{Host: "127.0.0.1", Control: port(relayLn), Data: port(dataLn), Namespace: "ns"}},
		ID:         "test-agent",
		MaxStreams: maxStreams,
		Connections: []rules.AgentConnection{
			{Name: "pg", Endpoint: resLn.Addr().String(), KeyName: "k", Key: "0123456789abcdef0123"},
		},
	}
	a, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	conn, err := relayLn.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(conn)
	if err := wire.ReadPreface(br); err != nil {
		t.Fatal(err)
	}
	if _, err := wire.Read(br); err != nil {
		t.Fatal(err)
	}
	wire.Write(conn, &wire.Welcome{PingMS: 15000})
	if f, err := wire.Read(br); err != nil || f.Type() != wire.TypeAttach {
		t.Fatalf("want ATTACH, got %v %v", f, err)
	}
	wire.Write(conn, &wire.Attached{HC: "pg"})

	const flood = 3000
	go func() {
		var b []byte
		for i := 0; i < flood; i++ {
			var id wire.StreamID
			binary.BigEndian.PutUint32(id[:], uint32(i+1))
			b = wire.Append(b, &wire.Accept{ID: id, HC: "pg", SenderKey: "apps", SenderAddr: "203.0.113.9:4000"})
		}
		conn.Write(b)
	}()
	busy := 0
	for busy < flood-maxStreams {
		f, err := readSkippingPings(br, conn)
		if err != nil {
			t.Fatalf("after %d busy refusals: %v", busy, err)
		}
		switch f := f.(type) {
		case *wire.Reject:
			if f.Code != status.Busy {
				t.Fatalf("refusal %v, want busy", f.Code)
			}
			busy++
		case *wire.Ack: // slow dials are fine
		default:
			t.Fatalf("unexpected %s", f.Type())
		}
	}
	time.Sleep(200 * time.Millisecond) // let stray dials land, if any
	t.Logf("hostile flood of %d accepts: %d resource connections, %d refused busy", flood, resConns.Load(), busy)
	if n := resConns.Load(); n > maxStreams {
		t.Fatalf("%d resource connections for %d accepts, cap %d", n, flood, maxStreams)
	}
}

// runAgent runs an agent with cfg until stop (or the test's end): stop ends
// it and waits, once.
func runAgent(t *testing.T, cfg *rules.Agent) (*Agent, func()) {
	t.Helper()
	a, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return a, stop
}
