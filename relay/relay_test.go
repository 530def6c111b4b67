package relay

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/limit"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/rules"
)

const (
	sendKey   = "send-key-for-tests-only-000000000"
	listenKey = "listen-key-for-tests-only-11111111"
	ns        = "relay.test"
)

type testRelay struct {
	srv    *Server
	ep     relayclient.Endpoint
	cancel context.CancelFunc
	done   chan error
}

func lis(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func port(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

// startRelay serves a relay with hybrid connections "pg" and "other" on
// loopback listeners.
func startRelay(t *testing.T) *testRelay { return startRelayWith(t, nil) }

// startRelayWith is startRelay with extra hybrid connections (same keys)
// and a chance to change the configuration.
func startRelayWith(t testing.TB, edit func(*rules.Relay), extra ...string) *testRelay {
	t.Helper()
	return serveTestRelay(t, hclog.NewNullLogger(), nil, edit, extra...)
}

// serveTestRelay is startRelayWith with a logger, and a setup function
// (when not nil) called before the relay serves.
func serveTestRelay(t testing.TB, log hclog.Logger, setup func(*Server), edit func(*rules.Relay), extra ...string) *testRelay {
	t.Helper()
	keys := []rules.Key{
		{Name: "apps", Rights: []string{"send"}, Primary: sendKey},
		{Name: "onprem", Rights: []string{"listen"}, Primary: listenKey},
	}
	cfg := &rules.Relay{Namespace: ns, Connections: []rules.RelayConnection{
		{Name: "pg", Keys: keys}, {Name: "other", Keys: keys},
	}, MaxListeners: rules.DefaultMaxListeners, MaxHTTPBody: rules.DefaultMaxHTTPBody}
	for _, name := range extra {
		cfg.Connections = append(cfg.Connections, rules.RelayConnection{Name: name, Keys: keys})
	}
	if edit != nil {
		edit(cfg)
	}
	l := &Listeners{Control: lis(t), Data: lis(t), HTTP: lis(t)}
	cfg.Listen = rules.RelayListen{Control: l.Control.Addr().String(), Data: l.Data.Addr().String(), HTTP: l.HTTP.Addr().String()}
	srv, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	srv.Grace = time.Second
	if setup != nil {
		setup(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &testRelay{srv: srv, cancel: cancel, done: make(chan error, 1),
		ep: relayclient.Endpoint{Host: "127.0.0.1", Control: port(l.Control), Data: port(l.Data), HTTP: port(l.HTTP), Namespace: ns}}
	go func() { r.done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Error("relay did not stop")
		}
	})
	return r
}

func token(hc, keyName, key string) string {
	return sas.NewToken(sas.ResourceURI(ns, hc), keyName, key, time.Now().Add(time.Hour))
}

// testAgent is a minimal agent: it serves each accepted stream with serve,
// or rejects it when serve is nil.
type testAgent struct {
	ctl    relayclient.Control
	served chan string
}

func startAgent(t *testing.T, r *testRelay, hc string, serve func(net.Conn)) *testAgent {
	t.Helper()
	return startAgentWith(t, nativeClient(r), hc, serve)
}

func echo(c net.Conn) {
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
	c.Close()
}

func open(r *testRelay, hc, keyName, key, target string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return relayclient.New(r.ep).Open(ctx, hc, token(hc, keyName, key), target)
}

func TestStreamEchoWithHalfClose(t *testing.T) {
	r := startRelay(t)
	startAgent(t, r, "pg", echo)
	c, err := open(r, "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("hello through the relay")
	c.Write(msg)
	c.(*net.TCPConn).CloseWrite() // our direction ends; the echo still comes back
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != string(msg) {
		t.Fatalf("got %q, %v", got, err)
	}
}

// TestServerSpeaksFirst: a resource's greeting reaches a sender that has not
// written anything.
func TestServerSpeaksFirst(t *testing.T) {
	r := startRelay(t)
	startAgent(t, r, "pg", func(c net.Conn) {
		c.Write([]byte("220 ready\r\n"))
		io.Copy(io.Discard, c)
		c.Close()
	})
	c, err := open(r, "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 11)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "220 ready\r\n" {
		t.Fatalf("got %q, %v", buf, err)
	}
}

func TestRefusals(t *testing.T) {
	r := startRelay(t)
	startAgent(t, r, "pg", echo)
	tests := []struct {
		name, hc, keyName, key string
		want                   status.Code
	}{
		{"unknown connection", "nope", "apps", sendKey, status.NotFound},
		{"wrong key value", "pg", "apps", "not-the-send-key-0000000000000", status.Unauthorized},
		{"unknown key name", "pg", "ghost", sendKey, status.Unauthorized},
		{"listen key used to send", "pg", "onprem", listenKey, status.Forbidden},
		{"no agent listening", "other", "apps", sendKey, status.NoListener},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := open(r, tt.hc, tt.keyName, tt.key, "")
			if err == nil {
				c.Close()
				t.Fatal("stream opened")
			}
			if got := status.CodeOf(err); got != tt.want {
				t.Fatalf("got %v (%v), want %v", got, err, tt.want)
			}
		})
	}
	t.Run("token for another connection", func(t *testing.T) {
		tok := token("other", "apps", sendKey)
		_, err := relayclient.New(r.ep).Open(context.Background(), "pg", tok, "")
		if got := status.CodeOf(err); got != status.Forbidden {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("send key used to listen", func(t *testing.T) {
		ctl, err := relayclient.New(r.ep).Listen(context.Background(), "x", "x")
		if err != nil {
			t.Fatal(err)
		}
		defer ctl.Close()
		err = ctl.Attach(context.Background(), "pg", token("pg", "apps", sendKey))
		if got := status.CodeOf(err); got != status.Forbidden {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("agent rejects", func(t *testing.T) {
		startAgent(t, r, "other", nil)
		_, err := open(r, "other", "apps", sendKey, "10.0.0.1:22")
		if got := status.CodeOf(err); got != status.Refused {
			t.Fatalf("got %v", err)
		}
	})
	// The relay still serves after every refusal.
	c, err := open(r, "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatalf("relay stopped serving: %v", err)
	}
	c.Close()
}

// TestFailoverAndSpread: two agents share a connection; a new stream goes
// to the agent with fewer streams (ties at random), and when one goes every
// stream goes to the other.
func TestFailoverAndSpread(t *testing.T) {
	r := startRelay(t)
	tag := func(name string) func(net.Conn) {
		return func(c net.Conn) {
			c.Write([]byte(name))
			io.Copy(io.Discard, c) // held until the sender closes
			c.Close()
		}
	}
	a1 := startAgent(t, r, "pg", tag("a1"))
	startAgent(t, r, "pg", tag("a2"))
	who := func(keep bool) string {
		c, err := open(r, "pg", "apps", sendKey, "")
		if err != nil {
			t.Fatal(err)
		}
		if keep {
			t.Cleanup(func() { c.Close() })
		} else {
			defer c.Close()
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 2)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// Streams held open: each new one goes to the less loaded agent.
	held := map[string]int{}
	for i := 0; i < 10; i++ {
		held[who(true)]++
	}
	if held["a1"] != 5 || held["a2"] != 5 {
		t.Fatalf("held streams not balanced by load: %v", held)
	}
	// Equal loads: ties at random, so both get a fair share.
	seen := map[string]int{}
	for i := 0; i < 100; i++ {
		seen[who(false)]++
	}
	if seen["a1"] < 25 || seen["a2"] < 25 {
		t.Fatalf("streams not spread: %v", seen)
	}
	a1.ctl.Close()
	// The relay notices the closed channel; wait until it has detached it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.srv.core.mu.Lock()
		n := len(r.srv.core.hcs["pg"].listeners)
		r.srv.core.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("closed agent never detached")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := 0; i < 4; i++ {
		if got := who(false); got != "a2" {
			t.Fatalf("stream %d went to %q", i, got)
		}
	}
}

func TestJoinChecks(t *testing.T) {
	r := startRelay(t)
	ctx := context.Background()
	ctl, err := relayclient.New(r.ep).Listen(ctx, "t", "t")
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if err := ctl.Attach(ctx, "pg", token("pg", "onprem", listenKey)); err != nil {
		t.Fatal(err)
	}
	openErr := make(chan error, 1)
	go func() {
		c, err := open(r, "pg", "apps", sendKey, "")
		if c != nil {
			c.Close()
		}
		openErr <- err
	}()
	ev := <-ctl.Events()
	acc := *ev.Accept
	bogus := acc
	bogus.ID[0] ^= 0xff
	if _, err := ctl.Join(ctx, &bogus, token("pg", "onprem", listenKey)); status.CodeOf(err) != status.NotFound {
		t.Fatalf("join with a guessed id: %v", err)
	}
	if _, err := ctl.Join(ctx, &acc, token("pg", "apps", sendKey)); status.CodeOf(err) != status.Forbidden {
		t.Fatalf("join with a send key: %v", err)
	}
	c, err := ctl.Join(ctx, &acc, token("pg", "onprem", listenKey))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-openErr; err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Join(ctx, &acc, token("pg", "onprem", listenKey)); status.CodeOf(err) != status.NotFound {
		t.Fatalf("second join of a single-use id: %v", err)
	}
}

func TestJoinTimeout(t *testing.T) {
	r := startRelay(t)
	cfg := r.srv.core.Config()
	cfg.JoinTimeout = 200 * time.Millisecond
	r.srv.core.SetConfig(cfg)
	ctx := context.Background()
	ctl, err := relayclient.New(r.ep).Listen(ctx, "t", "t")
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	ctl.Attach(ctx, "pg", token("pg", "onprem", listenKey)) // never joins
	_, err = open(r, "pg", "apps", sendKey, "")
	if status.CodeOf(err) != status.Timeout {
		t.Fatalf("got %v", err)
	}
	r.srv.core.mu.Lock()
	n := len(r.srv.core.pending)
	r.srv.core.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d pending streams left", n)
	}
}

func TestListenPorts(t *testing.T) {
	got := listenPorts(rules.RelayListen{Control: "127.0.0.1:5671", Data: ":9352", HTTP: "[::1]:8443"})
	want := []int{5671, 9352, 8443}
	for i := range want {
		if i >= len(got) || got[i] != want[i] {
			t.Fatalf("got %v", got)
		}
	}
}

// TestFailedAuthLimit: a source over its failure budget is slowed down on
// failures, but a good token from the same address is still accepted at
// once (NAT, proxies and load balancers share addresses).
func TestFailedAuthLimit(t *testing.T) {
	r := startRelay(t)
	startAgent(t, r, "pg", echo)
	var last time.Duration
	for i := 0; i < limit.Burst+1; i++ {
		start := time.Now()
		_, err := open(r, "pg", "apps", "wrong-key-0000000000000000000", "")
		if status.CodeOf(err) != status.Unauthorized {
			t.Fatalf("bad key %d: got %v, want unauthorized", i, err)
		}
		last = time.Since(start)
	}
	if last < limit.Delay {
		t.Fatalf("a failure over the budget was answered in %s, want at least %s", last, limit.Delay)
	}
	c, err := open(r, "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatalf("after %d failures from its address a good token got %v", limit.Burst+2, err)
	}
	c.Close()
	if v := r.srv.core.fails.Fail("127.0.0.2:1"); v.Over {
		t.Fatal("another address is over the budget too")
	}
}

func TestCheck(t *testing.T) {
	r := startRelay(t)
	c := relayclient.New(r.ep)
	ctx := context.Background()
	tests := []struct {
		name, hc, keyName, key string
		right                  sas.Rights
		want                   status.Code
	}{
		{"send key may send", "pg", "apps", sendKey, sas.Send, status.OK},
		{"listen key may listen", "pg", "onprem", listenKey, sas.Listen, status.OK},
		{"listen key may not send", "pg", "onprem", listenKey, sas.Send, status.Forbidden},
		{"wrong value", "pg", "apps", "not-the-key-000000000000000000", sas.Send, status.Unauthorized},
		{"unknown connection", "nope", "apps", sendKey, sas.Send, status.NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.Check(ctx, tt.hc, token(tt.hc, tt.keyName, tt.key), tt.right)
			if got := status.CodeOf(err); got != tt.want {
				t.Fatalf("got %v (%v), want %v", got, err, tt.want)
			}
		})
	}
	// A check opens nothing: no stream, no pending pairing.
	r.srv.core.mu.Lock()
	defer r.srv.core.mu.Unlock()
	if len(r.srv.core.pending) != 0 || len(r.srv.core.streams) != 0 {
		t.Fatal("a check left state behind")
	}
}

// TestNativeJoinNeedsToken: over the native protocol a JOIN must carry a
// listen token; the stream id alone is not enough.
func TestNativeJoinNeedsToken(t *testing.T) {
	r := startRelay(t)
	ctx := context.Background()
	ctl, err := relayclient.New(r.ep).Listen(ctx, "t", "t")
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if err := ctl.Attach(ctx, "pg", token("pg", "onprem", listenKey)); err != nil {
		t.Fatal(err)
	}
	go func() {
		if c, err := open(r, "pg", "apps", sendKey, ""); err == nil {
			c.Close()
		}
	}()
	ev := <-ctl.Events()
	if _, err := ctl.Join(ctx, ev.Accept, ""); status.CodeOf(err) != status.Unauthorized {
		t.Fatalf("tokenless native JOIN: %v", err)
	}
	c, err := ctl.Join(ctx, ev.Accept, token("pg", "onprem", listenKey))
	if err != nil {
		t.Fatalf("the stream was spent by the refused JOIN: %v", err)
	}
	c.Close()
}
