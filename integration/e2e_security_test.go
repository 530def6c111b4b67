package integration

// Security hardening, end to end (issue 8): bounded work for every party,
// failed-login limits that lock out no one, admin surfaces behind a token or
// loopback, config files that cannot wedge a role.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/status"
)

// TestSecurityOpenFlood: 2,000 OPENs at once from one send key never close
// the agent's control channel. Streams beyond the pending caps are refused
// busy at once; the others are served; a stream afterwards works, and the
// agent's channel is the one it had before the flood.
func TestSecurityOpenFlood(t *testing.T) {
	echo := startPlainEcho(t)
	c := newCluster(t, "echo")
	r := c.startRelay(t, "  limits: {pending: 400, pending_per_key: 100, per_source: 5000, connections: 20000}\n")
	a := c.startAgent(t, []*crelay{r}, map[string]string{"echo": echo.Addr}, "")
	// The relay logs the agent's channel before the agent hears WELCOME, but
	// its output reaches the harness through a pipe: wait for the line.
	r.Proc.WaitLog(t, "client connected", e2eStartTimeout)
	connectedBefore := strings.Count(r.Proc.Output(), "client connected")
	client := relayclient.New(relayclient.Endpoint{Host: "127.0.0.1", Control: r.Control, Data: r.Data, HTTP: r.HTTP, Namespace: e2eNamespace})
	tok := e2eToken("echo", "apps", c.Keys["echo"].Apps)

	const flood = 2000
	var ok, busy, other atomic.Int64
	var otherErr atomic.Value
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := 0; i < flood; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := client.Open(ctx, "echo", tok, "")
			switch {
			case err == nil:
				ok.Add(1)
				conn.Close()
			case status.CodeOf(err) == status.Busy:
				busy.Add(1)
			default:
				other.Add(1)
				otherErr.Store(err.Error())
			}
		}()
	}
	wg.Wait()
	t.Logf("flood of %d OPENs from one key: %d served, %d busy, %d other (%v)", flood, ok.Load(), busy.Load(), other.Load(), otherErr.Load())
	if ok.Load() == 0 || ok.Load()+busy.Load() < flood*9/10 {
		t.Fatalf("flood: %d served, %d busy, %d other (%v): want every OPEN served or refused busy", ok.Load(), busy.Load(), other.Load(), otherErr.Load())
	}
	if strings.Contains(a.Proc.Output(), "no control channel to the relay") {
		t.Fatalf("the agent lost its control channel during the flood:\n%s", tailLines(a.Proc.Output(), 30))
	}
	if n := strings.Count(r.Proc.Output(), "client connected"); n != connectedBefore {
		t.Fatalf("the relay saw %d new control channels during the flood", n-connectedBefore)
	}
	p := c.startProxy(t, []*crelay{r}, []string{"echo"}, "")
	if err := probe(p.Listen["echo"]); err != nil {
		t.Fatalf("a stream after the flood: %v", err)
	}
}

// TestSecurityConnectionCaps: one source holding its per_source maximum of
// idle connections on every relay listener cannot starve another source: a
// stream from 127.0.0.1 works while 127.0.0.2 holds its maximum, and the
// connections over the cap are refused.
func TestSecurityConnectionCaps(t *testing.T) {
	echo := startPlainEcho(t)
	c := newCluster(t, "echo")
	const perSource = 40
	r := c.startRelay(t, fmt.Sprintf("  limits: {per_source: %d, connections: 1000}\n", perSource))
	c.startAgent(t, []*crelay{r}, map[string]string{"echo": echo.Addr}, "")
	p := c.startProxy(t, []*crelay{r}, []string{"echo"}, "")
	hostile := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	var held []net.Conn
	defer func() {
		for _, h := range held {
			h.Close()
		}
	}()
	for _, port := range []int{r.Control, r.Data, r.HTTP} {
		var kept, failed int
		var lastErr error
		var mine []net.Conn
		for i := 0; i < perSource+10; i++ {
			h, err := hostile.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil { // a refused connect is a refusal too
				failed, lastErr = failed+1, err
				continue
			}
			held, mine = append(held, h), append(mine, h)
			if port == r.HTTP && i%2 == 0 { // half of them idle keep-alive HTTP
				fmt.Fprintf(h, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			}
		}
		// Count what the relay kept: refused ones are reset at once.
		time.Sleep(300 * time.Millisecond)
		for _, h := range mine {
			h.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			_, err := h.Read(make([]byte, 512))
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || err == nil {
				kept++
			}
		}
		t.Logf("port %d: 127.0.0.2 tried %d connections (%d failed to connect: %v), the relay kept %d (per_source %d)",
			port, perSource+10, failed, lastErr, kept, perSource)
		if kept > perSource {
			t.Fatalf("port %d: %d connections from one source kept, cap %d", port, kept, perSource)
		}
		// Another source still gets streams through.
		if err := probe(p.Listen["echo"]); err != nil {
			t.Fatalf("a stream from 127.0.0.1 while 127.0.0.2 holds its maximum on port %d: %v", port, err)
		}
	}
	r.Proc.WaitLog(t, "connections refused over limits", e2eStartTimeout)
}

// TestSecurityOversizeControlMessage: a WebSocket listener that sends 30 MiB
// text frames on its control channel is disconnected at the frame header;
// the relay's memory stays flat.
func TestSecurityOversizeControlMessage(t *testing.T) {
	c := newCluster(t, "echo")
	r := c.startRelay(t, "")
	before := rssKiB(t, r.Proc.Pid())
	big := bytes.Repeat([]byte("a"), 30<<20)
	for i := 0; i < 5; i++ {
		cfg, _ := websocket.NewConfig(fmt.Sprintf("ws://127.0.0.1:%d/$hc/echo?sb-hc-action=listen", r.HTTP), "http://127.0.0.1/")
		cfg.Header.Set("ServiceBusAuthorization", e2eToken("echo", "onprem", c.Keys["echo"].Onprem))
		ws, err := websocket.DialConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ws.PayloadType = websocket.TextFrame
		ws.SetDeadline(time.Now().Add(30 * time.Second))
		ws.Write(big) // the relay hangs up mid-frame
		var msg []byte
		err = websocket.Message.Receive(ws, &msg)
		ws.Close()
		if err == nil {
			t.Fatalf("round %d: the channel still answers after a 30 MiB message: %q", i, msg)
		}
	}
	after := rssKiB(t, r.Proc.Pid())
	t.Logf("relay RSS before five 30 MiB control frames: %d KiB, after: %d KiB", before, after)
	if after-before > 16<<10 {
		t.Fatalf("relay RSS grew by %d KiB", after-before)
	}
	r.Proc.WaitLog(t, "oversize message on control channel", e2eStartTimeout)
}

// TestSecurityConfigFIFO: a reload that finds a FIFO (or a device) where
// the config was is refused at once with a clear error; the watcher goes on:
// a later valid edit applies, SIGHUP still works, and a revocation in that
// edit cuts the stream it authenticated.
func TestSecurityConfigFIFO(t *testing.T) {
	echo := startPlainEcho(t)
	c := newCluster(t, "echo", "echo2")
	r := c.startRelay(t, "")
	c.startAgent(t, []*crelay{r}, map[string]string{"echo": echo.Addr, "echo2": echo.Addr}, "")
	p := c.startProxy(t, []*crelay{r}, []string{"echo", "echo2"}, "")
	live := dialEcho(t, p.Listen["echo2"])
	defer live.Close()

	fifo := filepath.Join(r.Dir, ".fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	mark := r.Proc.Mark()
	if err := os.Rename(fifo, r.Config); err != nil {
		t.Fatal(err)
	}
	r.Proc.WaitLogAfter(t, mark, regexp.MustCompile(`not a regular file \(it is a FIFO\)`), reloadTimeout)

	// A valid edit: echo2's connection removed (a revocation).
	delete(c.Keys, "echo2")
	mark = r.Proc.Mark()
	saveRename(t, r.Config, c.relayYAML(r))
	r.Proc.WaitLogAfter(t, mark, "config reloaded", reloadTimeout)
	live.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := live.Read(make([]byte, 1)); err == nil {
		t.Fatal("the stream of the removed connection still lives")
	}
	if err := probe(p.Listen["echo"]); err != nil {
		t.Fatalf("stream after the reload: %v", err)
	}
	// SIGHUP still reloads.
	mark = r.Proc.Mark()
	r.Proc.Signal(syscall.SIGHUP)
	r.Proc.WaitLogAfter(t, mark, "SIGHUP: reloading configuration", reloadTimeout)
}

// TestSecurityFailureFloodLocksOutNoOne: 20 bad tokens a second from
// 127.0.0.1 while a valid client on 127.0.0.1 opens a stream every 500 ms:
// every valid attempt succeeds. The same for SOCKS passwords.
func TestSecurityFailureFloodLocksOutNoOne(t *testing.T) {
	echo := startPlainEcho(t)
	c := newCluster(t, "echo")
	r := c.startRelay(t, "")
	c.startAgent(t, []*crelay{r}, map[string]string{"echo": echo.Addr}, "")
	socks := freeAddr(t, "127.0.0.1")
	c.Endpoints = map[string]string{"echo": echo.Addr}
	p := c.startProxy(t, []*crelay{r}, []string{"echo"}, fmt.Sprintf("  socks: %s\n  socks_auth: {username: app, password: %q}\n", socks, "socks-password-0123456789"))
	client := relayclient.New(relayclient.Endpoint{Host: "127.0.0.1", Control: r.Control, Data: r.Data, HTTP: r.HTTP, Namespace: e2eNamespace})
	bad := e2eToken("echo", "apps", "not-the-key-0000000000000000000000")

	stop := make(chan struct{})
	var flood sync.WaitGroup
	var failures atomic.Int64
	flood.Add(1)
	go func() { // 20 bad tokens and 20 bad SOCKS passwords a second
		defer flood.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			go func() {
				if c, err := client.Open(context.Background(), "echo", bad, ""); err == nil {
					c.Close()
				} else {
					failures.Add(1)
				}
			}()
			go socksConnect(socks, "app", "wrong-password-000000000", echo.Addr)
		}
	}()
	var validRelay, validSocks int
	for i := 0; i < 20; i++ {
		time.Sleep(500 * time.Millisecond)
		if err := probe(p.Listen["echo"]); err != nil {
			t.Errorf("valid stream %d during the failure flood: %v", i, err)
		} else {
			validRelay++
		}
		if conn, err := socksConnect(socks, "app", "socks-password-0123456789", echo.Addr); err != nil {
			t.Errorf("valid SOCKS login %d during the failure flood: %v", i, err)
		} else {
			validSocks++
			conn.Close()
		}
	}
	close(stop)
	flood.Wait()
	t.Logf("failure flood: %d bad tokens answered; valid streams %d/20, valid SOCKS logins %d/20", failures.Load(), validRelay, validSocks)
	if failures.Load() < 50 {
		t.Fatalf("the flood did not happen: %d failures", failures.Load())
	}
}

// socksConnect does a SOCKS5 handshake with username/password to target
// (an IP:port), returning the connection on success.
func socksConnect(proxyAddr, user, pass, target string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fail := func(err error) (net.Conn, error) { c.Close(); return nil, err }
	if _, err := c.Write([]byte{5, 1, 2}); err != nil {
		return fail(err)
	}
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil || b[1] != 2 {
		return fail(fmt.Errorf("method: %v %v", b, err))
	}
	msg := append([]byte{1, byte(len(user))}, user...)
	msg = append(append(msg, byte(len(pass))), pass...)
	if _, err := c.Write(msg); err != nil {
		return fail(err)
	}
	if _, err := io.ReadFull(c, b); err != nil || b[1] != 0 {
		return fail(fmt.Errorf("auth refused: %v %v", b, err))
	}
	host, port, _ := net.SplitHostPort(target)
	ip := net.ParseIP(host).To4()
	var pn int
	fmt.Sscan(port, &pn)
	req := append([]byte{5, 1, 0, 1}, ip...)
	req = append(req, byte(pn>>8), byte(pn))
	if _, err := c.Write(req); err != nil {
		return fail(err)
	}
	rep := make([]byte, 10)
	if _, err := io.ReadFull(c, rep); err != nil || rep[1] != 0 {
		return fail(fmt.Errorf("connect reply %v %v", rep, err))
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// TestSecurityAdminSurface: the relay's public http port serves /healthz to
// anyone, but /status and /metrics only to loopback requests that did not
// come through a proxy, or with the admin token; relay.admin serves them on
// a listener of its own.
func TestSecurityAdminSurface(t *testing.T) {
	c := newCluster(t, "echo")
	admin := freeAddr(t, "127.0.0.1")
	const token = "admin-token-0123456789abcdef"
	r := c.startRelay(t, fmt.Sprintf("  admin: %s\n  admin_token: %q\n", admin, token))
	get := func(url string, hdr map[string]string) int {
		req, _ := http.NewRequest("GET", url, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	proxied := map[string]string{"X-Forwarded-For": "203.0.113.7"}
	for _, tt := range []struct {
		path string
		hdr  map[string]string
		want int
	}{
		{"/healthz", proxied, 200},
		{"/status", nil, 200}, // straight from loopback
		{"/status", proxied, 401},
		{"/metrics", proxied, 401},
		{"/status", map[string]string{"X-Forwarded-For": "203.0.113.7", "Authorization": "Bearer wrong"}, 401},
		{"/status", map[string]string{"X-Forwarded-For": "203.0.113.7", "Authorization": "Bearer " + token}, 200},
		{"/metrics", map[string]string{"Forwarded": "for=203.0.113.7", "Authorization": "Bearer " + token}, 200},
	} {
		if got := get(r.url()+tt.path, tt.hdr); got != tt.want {
			t.Errorf("public %s with %v: %d, want %d", tt.path, tt.hdr, got, tt.want)
		}
	}
	for _, path := range []string{"/status", "/metrics", "/healthz"} {
		if got := get("http://"+admin+path, nil); got != 200 {
			t.Errorf("relay.admin %s: %d", path, got)
		}
	}
}
