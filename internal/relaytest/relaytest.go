// Package relaytest runs a real relay on loopback for the tests of the
// packages around it (agent, proxy): one call, its keys as constants; and
// the few helpers those tests share (an echo resource, waiting, reading a
// metric).
package relaytest

import (
	"context"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/admin"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/relay"
	"github.com/hybridconn/hybrid/rules"
)

// The keys every connection of a test relay has, and its namespace.
const (
	SendKeyName   = "apps"
	SendKey       = "send-key-for-tests-only-000000000"
	ListenKeyName = "onprem"
	ListenKey     = "listen-key-for-tests-only-11111111"
	Namespace     = "relay.test"
)

// Relay is a running test relay.
type Relay struct {
	// Endpoint is how clients address it.
	Endpoint relayclient.Endpoint
	// Entry is the same as an agent's or proxy's relays entry.
	Entry  rules.RelayEndpoint
	cancel context.CancelFunc
	done   chan struct{}
}

// Start serves a relay with the named connections (each with the send and
// listen keys above) until Stop or the end of the test.
func Start(t testing.TB, connections ...string) *Relay {
	t.Helper()
	keys := []rules.Key{{Name: SendKeyName, Rights: []string{"send"}, Primary: SendKey},
		{Name: ListenKeyName, Rights: []string{"listen"}, Primary: ListenKey}}
	lis := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	l := &relay.Listeners{Control: lis(), Data: lis(), HTTP: lis()}
	cfg := &rules.Relay{Namespace: Namespace,
		Listen: rules.RelayListen{Control: l.Control.Addr().String(), Data: l.Data.Addr().String(), HTTP: l.HTTP.Addr().String()}}
	for _, n := range connections {
		cfg.Connections = append(cfg.Connections, rules.RelayConnection{Name: n, Keys: keys})
	}
	srv, err := relay.New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	srv.Grace = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{cancel: cancel, done: make(chan struct{})}
	go func() { srv.Serve(ctx, l); close(r.done) }()
	port := func(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }
	r.Endpoint = relayclient.Endpoint{Host: "127.0.0.1", Control: port(l.Control), Data: port(l.Data), HTTP: port(l.HTTP), Namespace: Namespace}
	r.Entry = rules.RelayEndpoint{Host: "127.0.0.1", Control: port(l.Control), Data: port(l.Data), HTTP: port(l.HTTP), Namespace: Namespace}
	t.Cleanup(r.Stop)
	return r
}

// Stop stops the relay and waits for it; it may be called more than once.
func (r *Relay) Stop() {
	r.cancel()
	<-r.done
}

// Name is the relay as agents and proxies name it in status and metrics:
// its control address.
func (r *Relay) Name() string {
	return net.JoinHostPort(r.Endpoint.Host, strconv.Itoa(r.Endpoint.Control))
}

// SendToken mints a send token for hc, valid for an hour.
func SendToken(hc string) string {
	return sas.NewToken(sas.ResourceURI(Namespace, hc), SendKeyName, SendKey, time.Now().Add(time.Hour))
}

// Echo serves an echo resource on loopback until the test ends and returns
// its address.
func Echo(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// Eventually waits, for up to 15 s, until cond holds.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Metric fails t unless ad's series name with labels (pairs) is present
// with value want.
func Metric(t testing.TB, ad *admin.Admin, want float64, name string, labels ...string) {
	t.Helper()
	if got, ok := ad.Value(name, labels...); !ok || got != want {
		t.Errorf("%s%v = %v (present %v), want %v", name, labels, got, ok, want)
	}
}
