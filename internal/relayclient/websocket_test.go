package relayclient_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/relay"
	"github.com/hybridconn/hybrid/rules"
)

const (
	ns        = "relay.test"
	sendKey   = "send-key-for-tests-only-000000000"
	listenKey = "listen-key-for-tests-only-11111111"
)

func tok(hc, name, key string) string {
	return sas.NewToken(sas.ResourceURI(ns, hc), name, key, time.Now().Add(time.Hour))
}

func lis(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func portOf(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

func startRelay(t *testing.T) relayclient.Endpoint {
	keys := []rules.Key{
		{Name: "apps", Rights: []string{"send"}, Primary: sendKey},
		{Name: "onprem", Rights: []string{"listen"}, Primary: listenKey},
	}
	cfg := &rules.Relay{Namespace: ns, Connections: []rules.RelayConnection{{Name: "pg", Keys: keys}}}
	l := &relay.Listeners{Control: lis(t), Data: lis(t), HTTP: lis(t)}
	cfg.Listen = rules.RelayListen{Control: l.Control.Addr().String(), Data: l.Data.Addr().String(), HTTP: l.HTTP.Addr().String()}
	srv, err := relay.New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	srv.Grace = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return relayclient.Endpoint{Host: "127.0.0.1", Control: portOf(l.Control), Data: portOf(l.Data), HTTP: portOf(l.HTTP), Namespace: ns}
}

// TestWebSocketRoundTrip: listener and sender over WebSocket, with renewal,
// rejection and detach.
func TestWebSocketRoundTrip(t *testing.T) {
	ep := startRelay(t)
	c := relayclient.New(ep, relayclient.WithTransport(relayclient.TransportWebSocket))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctl, err := c.Listen(ctx, "t", "v")
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if err := ctl.Attach(ctx, "pg", tok("pg", "onprem", listenKey)); err != nil {
		t.Fatal(err)
	}
	if err := ctl.Renew(ctx, "pg", tok("pg", "onprem", listenKey)); err != nil {
		t.Fatal(err)
	}
	reject := true
	go func() {
		for ev := range ctl.Events() {
			if ev.Accept == nil {
				continue
			}
			if reject {
				reject = false
				ctl.Reject(ev.Accept.ID, status.Unreachable, "down")
				continue
			}
			conn, err := ctl.Join(ctx, ev.Accept, tok("pg", "onprem", listenKey))
			if err != nil {
				t.Error(err)
				return
			}
			go func() { io.Copy(conn, conn); conn.Close() }()
		}
	}()
	_, err = c.Open(ctx, "pg", tok("pg", "apps", sendKey), "")
	var se *status.Error
	if !errors.As(err, &se) || se.Code != status.Unreachable || se.Msg != "down" {
		t.Fatalf("rejected open: %v", err)
	}
	s, err := c.Open(ctx, "pg", tok("pg", "apps", sendKey), "")
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("hello over websocket")
	s.Write(msg)
	back := make([]byte, len(msg))
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(s, back); err != nil || string(back) != string(msg) {
		t.Fatalf("echo: %q, %v", back, err)
	}
	s.Close()
	ctl.Detach("pg")
	time.Sleep(100 * time.Millisecond)
	if _, err := c.Open(ctx, "pg", tok("pg", "apps", sendKey), ""); !errors.Is(err, status.Errorf(status.NoListener, "")) {
		t.Fatalf("after detach: %v", err)
	}
	select {
	case <-ctl.Done():
		t.Fatal("detaching one hybrid connection ended the control")
	default:
	}
	if err := c.Check(ctx, "pg", tok("pg", "onprem", listenKey), sas.Listen); err != nil {
		t.Fatal(err)
	}
}

// TestWebSocketRefusalFromForeignServer: a server that answers like Azure
// (no Hybrid-Status header) still maps to the right codes.
func TestWebSocketRefusalFromForeignServer(t *testing.T) {
	for _, tc := range []struct {
		http int
		want status.Code
	}{{401, status.Unauthorized}, {403, status.Forbidden}, {404, status.NotFound}, {500, status.Internal}} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "nope "+strconv.Itoa(tc.http), tc.http)
		}))
		_, p, _ := net.SplitHostPort(srv.Listener.Addr().String())
		port, _ := strconv.Atoi(p)
		c := relayclient.New(relayclient.Endpoint{Host: "127.0.0.1", HTTP: port}, relayclient.WithTransport(relayclient.TransportWebSocket))
		_, err := c.Open(context.Background(), "pg", "x", "")
		var se *status.Error
		if !errors.As(err, &se) || se.Code != tc.want || se.Msg != "nope "+strconv.Itoa(tc.http) {
			t.Errorf("HTTP %d: %v, want %s", tc.http, err, tc.want)
		}
		srv.Close()
	}
}
