package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	socks5 "github.com/armon/go-socks5"
	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/limit"
	"github.com/hybridconn/hybrid/internal/relaytest"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/rules"
)

// syncBuffer is a log sink the tests read while the proxy writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testProxy is a running Proxy whose streams are opened by a fake.
type testProxy struct {
	*Proxy
	logs    *syncBuffer
	cancel  context.CancelFunc
	done    chan error
	opens   atomic.Int64
	stopped bool
	// lastTarget is the endpoint of the connection the last open was for.
	lastTarget atomic.Pointer[string]
}

// opener stands in for the relay: it gets the matched connection and returns
// a stream or a refusal.
type opener func(c *rules.ProxyConnection) (net.Conn, error)

func baseConfig() *rules.Proxy {
	return &rules.Proxy{
		Relays: []rules.RelayEndpoint{{Host: "127.0.0.1", Control: 1, Data: 1, HTTP: 1, Namespace: "relay.test"}},
		Socks:  "127.0.0.1:0",
	}
}

func startTestProxy(t *testing.T, cfg *rules.Proxy, open opener) *testProxy {
	t.Helper()
	logs := &syncBuffer{}
	log := hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug})
	p, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	tp := &testProxy{Proxy: p, logs: logs, done: make(chan error, 1)}
	p.Grace = 200 * time.Millisecond
	p.openStream = func(ctx context.Context, c *rules.ProxyConnection, early []byte) (net.Conn, error) {
		tp.opens.Add(1)
		ep := c.Endpoint
		tp.lastTarget.Store(&ep)
		conn, err := open(c)
		if err == nil && len(early) > 0 {
			conn.Write(early)
		}
		return conn, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	tp.cancel = cancel
	go func() { tp.done <- p.Run(ctx) }()
	waitUntil(t, "the proxy to listen", func() bool {
		select {
		case err := <-tp.done:
			t.Fatalf("Run: %v", err)
		default:
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.running // set, with every listener bound, under one hold of mu
	})
	t.Cleanup(func() {
		tp.stop(t)
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs)
		}
	})
	return tp
}

// stop ends Run and waits for it; once.
func (tp *testProxy) stop(t *testing.T) {
	t.Helper()
	if tp.stopped {
		return
	}
	tp.stopped = true
	tp.cancel()
	select {
	case err := <-tp.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of cancel")
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// echoServer is a TCP echo resource; dialing it is what a successful open
// returns.
func echoServer(t *testing.T) string { return relaytest.Echo(t) }

func dialEcho(addr string) opener {
	return func(*rules.ProxyConnection) (net.Conn, error) { return net.Dial("tcp", addr) }
}

// SOCKS5 commands and address types, for the test client.
const (
	cmdConnect   = 1
	cmdBind      = 2
	cmdAssociate = 3
	noMethods    = 0xff // the server accepted none of the offered methods
	authFailed   = 0xfe // not a reply code: the username/password was refused
)

// socksRequest speaks SOCKS5 to addr as a client: a greeting offering no
// authentication (or only username/password when user is set), then cmd for
// host:port, host being an IP address (sent as one) or a name (sent as a
// name, as socks5h clients do). It returns the reply code and the open
// connection, positioned after the reply.
func socksRequest(t *testing.T, addr, user, pass string, cmd byte, host string, port int) (byte, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	method := byte(0)
	if user != "" {
		method = 2
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("socks client: %v", err)
		}
	}
	_, err = c.Write([]byte{5, 1, method})
	must(err)
	var b [2]byte
	_, err = io.ReadFull(c, b[:])
	must(err)
	if b[1] == noMethods {
		return noMethods, c
	}
	if b[0] != 5 || b[1] != method {
		t.Fatalf("socks client: method reply %v", b)
	}
	if user != "" {
		msg := append([]byte{1, byte(len(user))}, user...)
		msg = append(append(msg, byte(len(pass))), pass...)
		_, err = c.Write(msg)
		must(err)
		_, err = io.ReadFull(c, b[:])
		must(err)
		if b[1] != 0 {
			return authFailed, c
		}
	}
	req := []byte{5, cmd, 0}
	if ip := net.ParseIP(host); ip != nil {
		if ip4 := ip.To4(); ip4 != nil {
			req = append(append(req, 1), ip4...)
		} else {
			req = append(append(req, 4), ip...)
		}
	} else {
		req = append(append(req, 3, byte(len(host))), host...)
	}
	req = binary.BigEndian.AppendUint16(req, uint16(port))
	_, err = c.Write(req)
	must(err)
	var h [4]byte
	_, err = io.ReadFull(c, h[:])
	must(err)
	n := map[byte]int{1: 4, 4: 16}[h[3]]
	if h[3] == 3 {
		var l [1]byte
		_, err = io.ReadFull(c, l[:])
		must(err)
		n = int(l[0])
	}
	_, err = io.ReadFull(c, make([]byte, n+2))
	must(err)
	c.SetDeadline(time.Time{})
	return h[1], c
}

// roundTrip writes msg and expects it echoed.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo: got %q, %v; want %q", got, err, msg)
	}
}

// conns returns a copy of cs with the test key set: the caller's slice
// may be a running proxy's configuration, never written once applied.
func conns(cs ...rules.ProxyConnection) []rules.ProxyConnection {
	out := append([]rules.ProxyConnection(nil), cs...)
	for i := range out {
		out[i].KeyName, out[i].Key = "apps", "0123456789abcdef"
	}
	return out
}

func TestSocksConnect(t *testing.T) {
	echo := echoServer(t)
	cfg := baseConfig()
	cfg.Connections = conns(
		rules.ProxyConnection{Name: "intranet", Endpoint: "intranet.corp.invalid:8080"},
		rules.ProxyConnection{Name: "pg", Endpoint: "10.1.2.3:5432"},
		rules.ProxyConnection{Name: "v6", Endpoint: "[2001:db8::1]:443"},
	)
	tp := startTestProxy(t, cfg, dialEcho(echo))
	tests := []struct {
		host string
		port int
		want string // the endpoint opened
	}{
		{"intranet.corp.invalid", 8080, "intranet.corp.invalid:8080"},
		{"INTRANET.Corp.Invalid.", 8080, "intranet.corp.invalid:8080"}, // canonical, as the agent compares
		{"10.1.2.3", 5432, "10.1.2.3:5432"},
		{"::ffff:10.1.2.3", 5432, "10.1.2.3:5432"}, // sent as an IPv6 address, v4-mapped
		{"2001:db8:0::1", 443, "[2001:db8::1]:443"},
	}
	for _, tt := range tests {
		t.Run(net.JoinHostPort(tt.host, strconv.Itoa(tt.port)), func(t *testing.T) {
			code, c := socksRequest(t, tp.SocksAddr(), "", "", cmdConnect, tt.host, tt.port)
			if code != 0 {
				t.Fatalf("reply %v, want success", socksReply(code))
			}
			if got := *tp.lastTarget.Load(); got != tt.want {
				t.Errorf("opened %q, want %q", got, tt.want)
			}
			roundTrip(t, c, "hello through "+tt.want)
		})
	}
}

func TestSocksRefusals(t *testing.T) {
	cfg := baseConfig()
	cfg.Connections = conns(
		rules.ProxyConnection{Name: "intranet", Endpoint: "intranet.corp.invalid:8080"},
		rules.ProxyConnection{Name: "refused", Endpoint: "refused.corp.invalid:1"},
		rules.ProxyConnection{Name: "unreachable", Endpoint: "unreachable.corp.invalid:1"},
		rules.ProxyConnection{Name: "nolistener", Endpoint: "nolistener.corp.invalid:1"},
		rules.ProxyConnection{Name: "norelay", Endpoint: "norelay.corp.invalid:1"},
		rules.ProxyConnection{Name: "badkey", Endpoint: "badkey.corp.invalid:1"},
		rules.ProxyConnection{Name: "busy", Endpoint: "busy.corp.invalid:1"},
		rules.ProxyConnection{Name: "timeout", Endpoint: "timeout.corp.invalid:1"},
	)
	echo := echoServer(t)
	tp := startTestProxy(t, cfg, func(c *rules.ProxyConnection) (net.Conn, error) {
		switch c.Name {
		case "refused":
			return nil, status.Errorf(status.Refused, "target %s is not published by %q", c.Endpoint, c.Name)
		case "unreachable":
			return nil, fmt.Errorf("relay 127.0.0.1:1: %w", status.Errorf(status.Unreachable, "dial x: connection refused (nothing listens there)"))
		case "nolistener":
			return nil, status.Errorf(status.NoListener, "")
		case "norelay":
			return nil, errors.New("relay 127.0.0.1:1: dial tcp 127.0.0.1:1: connect: connection refused")
		case "badkey":
			return nil, status.Errorf(status.Unauthorized, "sas: bad signature")
		case "busy":
			return nil, status.Errorf(status.Busy, "")
		case "timeout":
			return nil, status.Errorf(status.Timeout, "")
		}
		return net.Dial("tcp", echo)
	})
	tests := []struct {
		name string
		cmd  byte
		host string
		port int
		want socksReply
		log  string // in the proxy's log
	}{
		{"unmatched name", cmdConnect, "other.corp.invalid", 8080, socksNotAllowed, "target=other.corp.invalid:8080"},
		{"unmatched port", cmdConnect, "intranet.corp.invalid", 8081, socksNotAllowed, "target=intranet.corp.invalid:8081"},
		{"IP for a name endpoint", cmdConnect, "127.0.0.1", 8080, socksNotAllowed, "socks5h"},
		{"bad name", cmdConnect, "bad name", 8080, socksNotAllowed, `not a valid host:port`},
		{"port zero", cmdConnect, "intranet.corp.invalid", 0, socksNotAllowed, `not a valid host:port`},
		{"bind", cmdBind, "intranet.corp.invalid", 8080, socksCommandNotSupported, "command=BIND"},
		{"udp associate", cmdAssociate, "0.0.0.0", 0, socksCommandNotSupported, `command="UDP ASSOCIATE"`},
		{"unknown command", 9, "intranet.corp.invalid", 8080, socksCommandNotSupported, ""},
		{"agent refusal", cmdConnect, "refused.corp.invalid", 1, socksConnectionRefused, "reply=\"0x05 connection refused\""},
		{"resource unreachable", cmdConnect, "unreachable.corp.invalid", 1, socksHostUnreachable, "resource unreachable"},
		{"no agent listening", cmdConnect, "nolistener.corp.invalid", 1, socksNetworkUnreachable, "no agent listening"},
		{"relay unreachable", cmdConnect, "norelay.corp.invalid", 1, socksNetworkUnreachable, "dial tcp 127.0.0.1:1"},
		{"agent timeout", cmdConnect, "timeout.corp.invalid", 1, socksNetworkUnreachable, ""},
		{"bad key", cmdConnect, "badkey.corp.invalid", 1, socksGeneralFailure, "unauthorized"},
		{"relay busy", cmdConnect, "busy.corp.invalid", 1, socksGeneralFailure, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, c := socksRequest(t, tp.SocksAddr(), "", "", tt.cmd, tt.host, tt.port)
			if socksReply(code) != tt.want {
				t.Fatalf("reply %v, want %v", socksReply(code), tt.want)
			}
			// Nothing more comes: the server closes (our own reply is never
			// followed by go-socks5's).
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := c.Read(make([]byte, 16)); n != 0 || err == nil {
				t.Errorf("after the reply: read %d bytes, %v; want the connection closed", n, err)
			}
			if tt.log != "" && !strings.Contains(tp.logs.String(), tt.log) {
				t.Errorf("log lacks %q", tt.log)
			}
		})
	}
	// Still serving.
	code, c := socksRequest(t, tp.SocksAddr(), "", "", cmdConnect, "intranet.corp.invalid", 8080)
	if code != 0 {
		t.Fatalf("after refusals: reply %v", socksReply(code))
	}
	roundTrip(t, c, "still here")
}

// A stream whose LocalAddr is not a *net.TCPAddr would make go-socks5 panic
// and take the process down.
func TestSocksNonTCPStream(t *testing.T) {
	cfg := baseConfig()
	cfg.Connections = conns(rules.ProxyConnection{Name: "pipe", Endpoint: "pipe.corp.invalid:1"})
	tp := startTestProxy(t, cfg, func(*rules.ProxyConnection) (net.Conn, error) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			buf := make([]byte, 64)
			n, _ := b.Read(buf)
			b.Write(buf[:n])
		}()
		return a, nil
	})
	code, c := socksRequest(t, tp.SocksAddr(), "", "", cmdConnect, "pipe.corp.invalid", 1)
	if code != 0 {
		t.Fatalf("reply %v", socksReply(code))
	}
	roundTrip(t, c, "piped")
}

// A panic while serving one client ends that client only.
func TestSocksPanicIsContained(t *testing.T) {
	cfg := baseConfig()
	cfg.Connections = conns(
		rules.ProxyConnection{Name: "boom", Endpoint: "boom.corp.invalid:1"},
		rules.ProxyConnection{Name: "ok", Endpoint: "ok.corp.invalid:1"},
	)
	echo := echoServer(t)
	tp := startTestProxy(t, cfg, func(c *rules.ProxyConnection) (net.Conn, error) {
		if c.Name == "boom" {
			panic("boom")
		}
		return net.Dial("tcp", echo)
	})
	c, err := net.Dial("tcp", tp.SocksAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{5, 1, 0, 5, 1, 0, 3, 17})
	c.Write([]byte("boom.corp.invalid\x00\x01"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, c) // until the server closes it
	waitUntil(t, "the panic to be logged", func() bool { return strings.Contains(tp.logs.String(), "panic") })
	code, c2 := socksRequest(t, tp.SocksAddr(), "", "", cmdConnect, "ok.corp.invalid", 1)
	if code != 0 {
		t.Fatalf("after a panic: reply %v", socksReply(code))
	}
	roundTrip(t, c2, "survived")
}

func TestSocksAuth(t *testing.T) {
	echo := echoServer(t)
	cfg := baseConfig()
	cfg.SocksAuth = []rules.SocksUser{
		{Username: "billing", Password: "billing-password-0123"},
		{Username: "reports", Password: "reports-password-4567"},
	}
	cfg.Connections = conns(rules.ProxyConnection{Name: "pg", Endpoint: "pg.corp.invalid:5432"})
	tp := startTestProxy(t, cfg, dialEcho(echo))
	tests := []struct {
		name, user, pass string
		want             byte
	}{
		{"billing", "billing", "billing-password-0123", 0},
		{"reports", "reports", "reports-password-4567", 0},
		{"no authentication offered", "", "", noMethods},
		{"wrong password", "billing", "reports-password-4567", authFailed},
		{"password of another user", "reports", "billing-password-0123", authFailed},
		{"unknown user", "nobody", "billing-password-0123", authFailed},
		{"empty password", "billing", "", authFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, c := socksRequest(t, tp.SocksAddr(), tt.user, tt.pass, cmdConnect, "pg.corp.invalid", 5432)
			if code != tt.want {
				t.Fatalf("got %#x, want %#x", code, tt.want)
			}
			if code == 0 {
				roundTrip(t, c, "authenticated")
			}
		})
	}
	if !strings.Contains(tp.logs.String(), `socks: authentication failed:`) || !strings.Contains(tp.logs.String(), `username="\"billing\""`) { // the first of a window; the rest are counted
		t.Errorf("failed authentications not logged:\n%s", tp.logs)
	}

	// Reload: authentication turned off applies to new clients.
	next := *cfg
	next.SocksAuth = nil
	if err := tp.Apply(&next); err != nil {
		t.Fatal(err)
	}
	if code, c := socksRequest(t, tp.SocksAddr(), "", "", cmdConnect, "pg.corp.invalid", 5432); code != 0 {
		t.Fatalf("after reload without auth: %#x", code)
	} else {
		roundTrip(t, c, "open")
	}
}

func TestSocksCredentials(t *testing.T) {
	creds := newSocksCredentials([]rules.SocksUser{{Username: "a", Password: "pa"}, {Username: "b", Password: "pb"}}, hclog.NewNullLogger())
	for _, tt := range []struct {
		user, pass string
		want       bool
	}{{"a", "pa", true}, {"b", "pb", true}, {"a", "pb", false}, {"b", "pa", false}, {"c", "pa", false}, {"", "", false}, {"a", "pa\x00", false}} {
		if got := creds.Valid(tt.user, tt.pass); got != tt.want {
			t.Errorf("Valid(%q, %q) = %v", tt.user, tt.pass, got)
		}
	}
}

// Garbage, truncated and stalled handshakes are dropped without disturbing
// anyone else; stalled ones at the deadline.
func TestSocksGarbage(t *testing.T) {
	echo := echoServer(t)
	cfg := baseConfig()
	cfg.SocksAuth = []rules.SocksUser{{Username: "app", Password: "app-password-0123456"}}
	cfg.Connections = conns(rules.ProxyConnection{Name: "pg", Endpoint: "pg.corp.invalid:5432"})
	logs := &syncBuffer{}
	p, err := New(cfg, hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug}))
	if err != nil {
		t.Fatal(err)
	}
	p.socksTime = 300 * time.Millisecond
	p.Grace = 200 * time.Millisecond
	p.openStream = func(_ context.Context, _ *rules.ProxyConnection, early []byte) (net.Conn, error) {
		c, err := net.Dial("tcp", echo)
		if err == nil && len(early) > 0 {
			c.Write(early)
		}
		return c, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitUntil(t, "socks listener", func() bool { return p.SocksAddr() != "" })
	addr := p.SocksAddr()

	valid := []byte{5, 1, 2, 1, 3, 'a', 'p', 'p', 20}
	valid = append(valid, "app-password-0123456"...)
	valid = append(valid, 5, 1, 0, 3, 15)
	valid = append(valid, "pg.corp.invalid"...)
	valid = append(valid, 0x15, 0x38)
	var stalled []net.Conn
	for i := range 200 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		switch i % 4 {
		case 0: // random bytes
			junk := make([]byte, 1+i%64)
			rand.Read(junk)
			c.Write(junk)
			c.Close()
		case 1: // a prefix of a valid handshake, then nothing: stalls
			c.Write(valid[:1+i%(len(valid)-1)])
			stalled = append(stalled, c)
		case 2: // a prefix, then hang up
			c.Write(valid[:1+i%(len(valid)-1)])
			c.Close()
		case 3: // wrong versions and lengths
			c.Write([]byte{4, 1, 0, 80, 127, 0, 0, 1, 0})
			c.Write([]byte{5, 255})
			c.Close()
		}
	}
	// Served meanwhile.
	code, c := socksRequest(t, addr, "app", "app-password-0123456", cmdConnect, "pg.corp.invalid", 5432)
	if code != 0 {
		t.Fatalf("valid client amid garbage: %#x", code)
	}
	roundTrip(t, c, "fine")
	// Stalled ones are closed at the deadline.
	for _, s := range stalled {
		s.SetReadDeadline(time.Now().Add(5 * time.Second))
		var err error
		for err == nil {
			_, err = s.Read(make([]byte, 64))
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("stalled handshake still open after 5 s")
		}
	}
	waitUntil(t, "the handshakes to be counted", func() bool { return p.socksBad.Load() >= 150 })
	waitUntil(t, "no handshake left tracked", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.handshakes) == 0
	})
	if strings.Contains(logs.String(), "[ERROR]") {
		t.Errorf("garbage logged as errors:\n%s", logs)
	}
}

func TestSocksReload(t *testing.T) {
	echo := echoServer(t)
	cfg := baseConfig()
	cfg.Connections = conns(rules.ProxyConnection{Name: "a", Endpoint: "a.corp.invalid:1"})
	tp := startTestProxy(t, cfg, dialEcho(echo))
	addr := tp.SocksAddr()
	code, live := socksRequest(t, addr, "", "", cmdConnect, "a.corp.invalid", 1)
	if code != 0 {
		t.Fatalf("%#x", code)
	}

	// New matching applies to new requests.
	next := baseConfig()
	next.Connections = conns(rules.ProxyConnection{Name: "b", Endpoint: "b.corp.invalid:1"})
	if err := tp.Apply(next); err != nil {
		t.Fatal(err)
	}
	if tp.SocksAddr() != addr {
		t.Errorf("same socks address rebound: %s -> %s", addr, tp.SocksAddr())
	}
	if code, _ := socksRequest(t, addr, "", "", cmdConnect, "a.corp.invalid", 1); code != byte(socksNotAllowed) {
		t.Errorf("removed endpoint: %#x", code)
	}
	if code, _ := socksRequest(t, addr, "", "", cmdConnect, "b.corp.invalid", 1); code != 0 {
		t.Errorf("added endpoint: %#x", code)
	}

	// SOCKS off: the listener closes, the live stream goes on.
	off := baseConfig()
	off.Socks = ""
	off.Connections = next.Connections
	if err := tp.Apply(off); err != nil {
		t.Fatal(err)
	}
	if tp.SocksAddr() != "" {
		t.Errorf("socks still listening")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("socks address still accepts")
	}
	roundTrip(t, live, "live stream undisturbed")

	// On again, elsewhere; a bad address changes nothing.
	bad := baseConfig()
	bad.Socks = "192.0.2.1:1" // TEST-NET: not ours, cannot be bound
	if err := tp.Apply(bad); err == nil {
		t.Errorf("Apply with an unbindable socks address succeeded")
	}
	if tp.SocksAddr() != "" {
		t.Errorf("failed Apply changed the socks listener")
	}
	if err := tp.Apply(next); err != nil {
		t.Fatal(err)
	}
	if code, _ := socksRequest(t, tp.SocksAddr(), "", "", cmdConnect, "b.corp.invalid", 1); code != 0 {
		t.Errorf("socks back on: %#x", code)
	}
}

// Stopping drops clients in their handshake at once and gives live SOCKS
// streams the grace period.
func TestSocksShutdown(t *testing.T) {
	echo := echoServer(t)
	cfg := baseConfig()
	cfg.Connections = conns(rules.ProxyConnection{Name: "a", Endpoint: "a.corp.invalid:1"})
	tp := startTestProxy(t, cfg, dialEcho(echo))
	code, live := socksRequest(t, tp.SocksAddr(), "", "", cmdConnect, "a.corp.invalid", 1)
	if code != 0 {
		t.Fatalf("%#x", code)
	}
	half, err := net.Dial("tcp", tp.SocksAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	half.Write([]byte{5, 1})
	waitUntil(t, "the handshake to be tracked", func() bool {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		return len(tp.handshakes) == 1
	})
	start := time.Now()
	tp.stop(t)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stop took %v", d)
	}
	for name, c := range map[string]net.Conn{"handshake": half, "live stream": live} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		// EOF or a reset: closed either way; only the deadline means open.
		if _, err := io.Copy(io.Discard, c); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s: not closed by the stop: %v", name, err)
		}
	}
}

func TestMatchSocks(t *testing.T) {
	cfg := &rules.Proxy{Connections: conns(
		rules.ProxyConnection{Name: "pg", Endpoint: "pg.corp.local:5432"},
		rules.ProxyConnection{Name: "sql", Endpoint: "10.0.0.5:1433"},
		rules.ProxyConnection{Name: "listen-only", Listen: "127.0.0.2:1"},
	)}
	tests := []struct {
		name           string
		dest           socks5.AddrSpec
		hc, target, in string // in: a substring of the hint
	}{
		{"name", socks5.AddrSpec{FQDN: "pg.corp.local", Port: 5432}, "pg", "pg.corp.local:5432", ""},
		{"name, other spelling", socks5.AddrSpec{FQDN: "PG.CORP.LOCAL.", Port: 5432}, "pg", "pg.corp.local:5432", ""},
		{"ip", socks5.AddrSpec{IP: net.IPv4(10, 0, 0, 5), Port: 1433}, "sql", "10.0.0.5:1433", ""},
		{"ip as a name", socks5.AddrSpec{FQDN: "10.0.0.5", Port: 1433}, "sql", "10.0.0.5:1433", ""},
		{"ip, same port as a name endpoint", socks5.AddrSpec{IP: net.IPv4(10, 9, 9, 9), Port: 5432}, "", "10.9.9.9:5432", "if it meant pg.corp.local:5432"},
		{"ip, another port", socks5.AddrSpec{IP: net.IPv4(10, 9, 9, 9), Port: 80}, "", "10.9.9.9:80", "socks5h"},
		{"name, no match: no hint", socks5.AddrSpec{FQDN: "other", Port: 5432}, "", "other:5432", ""},
		{"shorthand ip is not canonical", socks5.AddrSpec{FQDN: "10.5", Port: 1433}, "", `"10.5:1433"`, "not a valid"},
		{"empty", socks5.AddrSpec{Port: 1}, "", `":1"`, "not a valid"},
		{"port 0", socks5.AddrSpec{FQDN: "pg.corp.local"}, "", `"pg.corp.local:0"`, "not a valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, target, hint := matchSocks(cfg, &tt.dest)
			if hc := map[bool]string{true: ""}[c == nil]; c != nil {
				hc = c.Name
				if hc != tt.hc {
					t.Errorf("matched %q, want %q", hc, tt.hc)
				}
			} else if tt.hc != "" {
				t.Errorf("no match, want %q", tt.hc)
			}
			if target != tt.target {
				t.Errorf("target %q, want %q", target, tt.target)
			}
			if tt.in == "" && hint != "" || !strings.Contains(hint, tt.in) {
				t.Errorf("hint %q, want one with %q", hint, tt.in)
			}
		})
	}
}

func TestSocksReplyFor(t *testing.T) {
	tests := []struct {
		err  error
		want socksReply
	}{
		{status.Errorf(status.Refused, "x"), socksConnectionRefused},
		{fmt.Errorf("relay a: %w", status.Errorf(status.Unreachable, "dial: connection refused")), socksHostUnreachable},
		{errors.Join(fmt.Errorf("relay a: %w", status.Errorf(status.NoListener, "")), errors.New("relay b: dial tcp: connection refused")), socksNetworkUnreachable},
		{status.Errorf(status.ShuttingDown, ""), socksNetworkUnreachable},
		{status.Errorf(status.Timeout, ""), socksNetworkUnreachable},
		{errors.New("relay b: dial tcp: connection refused"), socksNetworkUnreachable},
		{status.Errorf(status.Unauthorized, ""), socksGeneralFailure},
		{status.Errorf(status.Forbidden, ""), socksGeneralFailure},
		{status.Errorf(status.NotFound, ""), socksGeneralFailure},
		{status.Errorf(status.Busy, ""), socksGeneralFailure},
		{fmt.Errorf("open: %w", context.Canceled), socksGeneralFailure},
	}
	for _, tt := range tests {
		if got := socksReplyFor(tt.err); got != tt.want {
			t.Errorf("socksReplyFor(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
	if s := socksConnectionRefused.String(); s != "0x05 connection refused" {
		t.Errorf("String() = %q", s)
	}
}

// FuzzMatchSocks: any target a client can send matches only the connection
// whose endpoint is its canonical form, and never panics.
func FuzzMatchSocks(f *testing.F) {
	f.Add("pg.corp.local", []byte(nil), 5432)
	f.Add("", []byte{10, 0, 0, 5}, 1433)
	f.Add("PG.corp.local.", []byte(nil), 5432)
	f.Add("[::1]", []byte(nil), 1)
	f.Add("\x00", []byte{1, 2, 3}, 70000)
	cfg := &rules.Proxy{Connections: conns(
		rules.ProxyConnection{Name: "pg", Endpoint: "pg.corp.local:5432"},
		rules.ProxyConnection{Name: "sql", Endpoint: "10.0.0.5:1433"},
	)}
	f.Fuzz(func(t *testing.T, fqdn string, ip []byte, port int) {
		dest := &socks5.AddrSpec{FQDN: fqdn, IP: net.IP(ip), Port: port & 0xffff}
		c, target, _ := matchSocks(cfg, dest)
		if c != nil && c.Endpoint != target {
			t.Fatalf("matched %q for target %q", c.Endpoint, target)
		}
	})
}

// TestSocksFailedLoginLimit: a client address that keeps sending wrong
// passwords has its failures slowed down, but the right password from the
// same address (every local app shares 127.0.0.1) always gets in.
func TestSocksFailedLoginLimit(t *testing.T) {
	echo := echoServer(t)
	cfg := baseConfig()
	cfg.SocksAuth = []rules.SocksUser{{Username: "billing", Password: "billing-password-0123"}}
	cfg.Connections = conns(rules.ProxyConnection{Name: "pg", Endpoint: "pg.corp.invalid:5432"})
	tp := startTestProxy(t, cfg, dialEcho(echo))
	for i := 0; i < limit.Burst; i++ {
		if code, _ := socksRequest(t, tp.SocksAddr(), "billing", "wrong-password-0000000", cmdConnect, "pg.corp.invalid", 5432); code != authFailed {
			t.Fatalf("attempt %d: got %#x, want auth failed", i, code)
		}
	}
	if v := tp.socksFails.Fail("127.0.0.1:1"); !v.Over {
		t.Fatal("the failing address is not over its budget")
	}
	// The right password still gets in, from the same address.
	if code, _ := socksRequest(t, tp.SocksAddr(), "billing", "billing-password-0123", cmdConnect, "pg.corp.invalid", 5432); code != 0 {
		t.Fatalf("right password after failures: reply %#x", code)
	}
	// A wrong one is still refused.
	if code, _ := socksRequest(t, tp.SocksAddr(), "billing", "wrong-password-0000000", cmdConnect, "pg.corp.invalid", 5432); code != authFailed {
		t.Fatalf("wrong password: got %#x", code)
	}
}
