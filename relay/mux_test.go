package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/mux"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wire"
	"github.com/hybridconn/hybrid/rules"
)

// countingListener counts the connections it accepted.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// tlsRelay starts a TLS relay whose data port counts its connections, and
// returns it with a TLS client config that trusts it.
func tlsRelay(t *testing.T, edit func(*rules.Relay)) (*Server, *countingListener, relayclient.Endpoint, *tls.Config) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "relay.crt"), filepath.Join(dir, "relay.key")
	pool := writeCertFor(t, certFile, keyFile, 1, "relay.test")
	data := &countingListener{Listener: lis(t)}
	l := &Listeners{Control: lis(t), Data: data, HTTP: lis(t)}
	keys := []rules.Key{{Name: "apps", Rights: []string{"send"}, Primary: sendKey}, {Name: "onprem", Rights: []string{"listen"}, Primary: listenKey}}
	cfg := &rules.Relay{Namespace: ns, TLS: &rules.TLS{Cert: certFile, Key: keyFile},
		Listen:       rules.RelayListen{Control: l.Control.Addr().String(), Data: l.Data.Addr().String(), HTTP: l.HTTP.Addr().String()},
		Connections:  []rules.RelayConnection{{Name: "pg", Keys: keys}},
		MaxListeners: rules.DefaultMaxListeners, MaxHTTPBody: rules.DefaultMaxHTTPBody}
	if edit != nil {
		edit(cfg)
	}
	srv, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	srv.Grace = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	ep := relayclient.Endpoint{Host: "127.0.0.1", Control: port(l.Control), Data: port(l.Data), HTTP: port(l.HTTP), TLS: true, Namespace: ns}
	return srv, data, ep, &tls.Config{RootCAs: pool, ServerName: "relay.test"}
}

// TestMuxOverTLS: on TLS, a client's streams (a sender's opens, an agent's
// joins) share one TLS connection to the data port; each stream behaves
// as its own connection did; the relay refuses what is not a stream.
func TestMuxOverTLS(t *testing.T) {
	_, data, ep, tc := tlsRelay(t, nil)
	agentClient := relayclient.New(ep, relayclient.WithTLSConfig(tc))
	sender := relayclient.New(ep, relayclient.WithTLSConfig(tc))
	startAgentWith(t, agentClient, "pg", fullEcho)

	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := openWith(sender, "pg", "apps", sendKey, "")
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			roundTrip(t, conn)
		}()
	}
	wg.Wait()
	if n := data.n.Load(); n != 2 {
		t.Fatalf("20 streams took %d TLS connections to the data port, want 2 (one per client)", n)
	}
	// A refusal still comes back as the stream's own answer.
	_, err := openWith(sender, "pg", "apps", "wrong-key-wrong-key-wrong-key-wrong-key-xx=", "")
	if status.CodeOf(err) != status.Unauthorized {
		t.Fatalf("a wrong key over a multiplexed connection: %v, want Unauthorized", err)
	}
	// Without multiplexing, each stream is a TLS connection again.
	plain := relayclient.New(ep, relayclient.WithTLSConfig(tc), relayclient.WithoutMux())
	before := data.n.Load()
	for i := 0; i < 3; i++ {
		conn, err := openWith(plain, "pg", "apps", sendKey, "")
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, conn)
		conn.Close()
	}
	if n := data.n.Load() - before; n < 3 {
		t.Fatalf("WithoutMux: 3 streams took %d connections", n)
	}

	t.Run("mux preface refused on the control port", func(t *testing.T) {
		c, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ep.Control)), tc)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(wire.MuxPreface))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err := wire.Read(c)
		c.Close()
		if res, ok := f.(*wire.Result); err != nil || !ok || res.Code != status.BadRequest {
			t.Fatalf("control port answered the mux preface %v, %v; want a BadRequest RESULT", f, err)
		}
	})
	t.Run("mux preface inside a stream refused", func(t *testing.T) {
		c, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ep.Data)), tc)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(wire.MuxPreface))
		sess, err := mux.Client(c)
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		st, err := sess.Open(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte(wire.MuxPreface))
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err := wire.Read(st)
		if res, ok := f.(*wire.Result); err != nil || !ok || res.Code != status.BadRequest {
			t.Fatalf("a stream that opened with the mux preface was answered %v, %v; want a BadRequest RESULT", f, err)
		}
	})
	t.Run("garbage after the mux preface ends that connection only", func(t *testing.T) {
		c, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ep.Data)), tc)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(wire.MuxPreface + "\xff\xff\xff\xff not yamux at all \x00\x00\x00\x00\x00\x00\x00\x00"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 64))
		for err == nil {
			_, err = c.Read(make([]byte, 64))
		}
		c.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the relay kept a connection that spoke garbage for 10 s")
		}
		conn, err := openWith(sender, "pg", "apps", sendKey, "")
		if err != nil {
			t.Fatalf("a stream after the garbage: %v", err)
		}
		roundTrip(t, conn)
		conn.Close()
	})
}

// TestMuxRetired: when the relay stops, it retires its multiplexed
// connections: a new stream on one is refused ShuttingDown, and the
// client's next stream goes on a new connection, while streams already on
// the old one go on.
func TestMuxRetired(t *testing.T) {
	srv, data, ep, tc := tlsRelay(t, nil)
	agentClient := relayclient.New(ep, relayclient.WithTLSConfig(tc))
	sender := relayclient.New(ep, relayclient.WithTLSConfig(tc))
	startAgentWith(t, agentClient, "pg", fullEcho)
	live, err := openWith(sender, "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	roundTrip(t, live)
	before := data.n.Load()

	srv.door.retireMux()
	_, err = openWith(sender, "pg", "apps", sendKey, "")
	if status.CodeOf(err) != status.ShuttingDown {
		t.Fatalf("a stream on a retired connection: %v, want ShuttingDown", err)
	}
	conn, err := openWith(sender, "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatalf("the next stream: %v", err)
	}
	defer conn.Close()
	roundTrip(t, conn)
	if n := data.n.Load() - before; n != 2 {
		t.Fatalf("after retirement %d new connections, want 2 (the sender's and the agent's, for its join)", n)
	}
	roundTrip(t, live)
}

// TestMuxStreamsCountAsConnections: each stream of a multiplexed
// connection counts against the relay's per-source connection limit, so
// one TLS connection cannot carry more streams than a source may hold
// connections; closed streams give their slots back.
func TestMuxStreamsCountAsConnections(t *testing.T) {
	const perSource = 8
	_, _, ep, tc := tlsRelay(t, func(c *rules.Relay) { c.Limits.PerSource = perSource })
	sender := relayclient.New(ep, relayclient.WithTLSConfig(tc))
	ctl := connectSender(t, sender)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The multiplexed connection takes one slot; warm streams (held by the
	// relay until their OPEN) take the rest.
	var warm []*relayclient.Warm
	for i := 0; i < perSource-1; i++ {
		w, err := ctl.Warm(ctx)
		if err != nil {
			t.Fatal(err)
		}
		warm = append(warm, w)
	}
	// Served streams answer (nobody listens on "pg": NoListener); a stream
	// over the limit is closed unanswered.
	served := func() bool {
		_, err := openWith(sender, "pg", "apps", sendKey, "")
		return status.CodeOf(err) == status.NoListener
	}
	deadline := time.Now().Add(10 * time.Second)
	for served() {
		if time.Now().After(deadline) {
			t.Fatalf("streams past %d held by one source were still served after 10 s", perSource)
		}
		time.Sleep(20 * time.Millisecond) // the warm streams may still be on their way
	}
	for _, w := range warm {
		w.Close()
	}
	deadline = time.Now().Add(10 * time.Second)
	for !served() {
		if time.Now().After(deadline) {
			t.Fatal("closed streams did not give their slots back within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// connectSender opens a sender's control channel on c, closed at the
// test's end.
func connectSender(t *testing.T, c relayclient.Client) relayclient.Control {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctl, err := c.Connect(ctx, "test", "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	return ctl
}

// TestMuxRetiredWhenControlFails: when a client's control channel to the
// relay breaks (the relay may be gone, and a host that died sends no
// reset), the client's next stream goes on a new multiplexed connection
// rather than into one that may be dead.
func TestMuxRetiredWhenControlFails(t *testing.T) {
	_, data, ep, tc := tlsRelay(t, nil)
	// The control channel goes through a forwarder the test can cut.
	fwd, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer fwd.Close()
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			c, err := fwd.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ep.Control)))
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			held = append(held, c, up)
			mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	cut := ep
	cut.Control = port(fwd)
	sender := relayclient.New(cut, relayclient.WithTLSConfig(tc))
	ctl := connectSender(t, sender)
	open := func() {
		t.Helper()
		_, err := openWith(sender, "pg", "apps", sendKey, "")
		if status.CodeOf(err) != status.NoListener {
			t.Fatalf("open: %v, want NoListener (nobody listens)", err)
		}
	}
	open()
	open()
	if n := data.n.Load(); n != 1 {
		t.Fatalf("two streams took %d connections", n)
	}
	mu.Lock()
	for _, c := range held {
		c.Close()
	}
	mu.Unlock()
	select {
	case <-ctl.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the control channel did not notice the cut")
	}
	open()
	if n := data.n.Load(); n != 2 {
		t.Fatalf("after the control channel failed: %d data connections, want 2 (a new one)", n)
	}
}
