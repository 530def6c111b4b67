package relayclient_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/agent"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/relay"
	"github.com/hybridconn/hybrid/rules"
)

// benchStreams serves a relay and an agent in this process on loopback,
// the agent publishing an echo as hybrid connection "pg", each from the
// configuration a deployment would write (defaults included: the agent
// keeps its pool of parked connections). It returns a native client for
// the relay, once a stream goes through.
func benchStreams(b *testing.B) relayclient.Client {
	b.Helper()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()

	parse := func(yaml string) *rules.Config {
		cfg, err := rules.Parse("bench.yaml", []byte(yaml))
		if err != nil {
			b.Fatal(err)
		}
		return cfg
	}
	rcfg := parse(fmt.Sprintf(`relay:
  namespace: %s
  listen: {control: 127.0.0.1:0, data: 127.0.0.1:0, http: 127.0.0.1:0}
  connections:
    - name: pg
      keys:
        - {name: apps, rights: [send], primary: %q}
        - {name: onprem, rights: [listen], primary: %q}
`, ns, sendKey, listenKey))
	srv, err := relay.New(rcfg.Relay, hclog.NewNullLogger())
	if err != nil {
		b.Fatal(err)
	}
	l, err := srv.Listen()
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	relayDone := make(chan struct{})
	go func() { srv.Serve(ctx, l); close(relayDone) }()
	ep := relayclient.Endpoint{Host: "127.0.0.1", Control: portOf(l.Control), Data: portOf(l.Data), HTTP: portOf(l.HTTP), Namespace: ns}

	acfg := parse(fmt.Sprintf(`agent:
  relays: [{host: 127.0.0.1, control: %d, data: %d, http: %d, namespace: %s}]
  transport: tcp
  connections:
    - {name: pg, endpoint: %q, key_name: onprem, key: %q}
`, ep.Control, ep.Data, ep.HTTP, ns, echo.Addr().String(), listenKey))
	a, err := agent.New(acfg.Agent, hclog.NewNullLogger())
	if err != nil {
		b.Fatal(err)
	}
	agentDone := make(chan struct{})
	go func() { a.Run(ctx); close(agentDone) }()
	b.Cleanup(func() { cancel(); <-agentDone; <-relayDone })

	c := relayclient.New(ep, relayclient.WithTransport(relayclient.TransportTCP))
	req := relayclient.OpenRequest{HC: "pg", Token: tok("pg", "apps", sendKey)}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := openEcho(c, req)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			b.Fatalf("no stream through the in-process relay and agent after 30 s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// openEcho is one stream: the handshake (OpenStream), one byte there and
// back through the agent's echo, close. With req.Early the byte travels in
// the OPEN.
func openEcho(c relayclient.Client, req relayclient.OpenRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.OpenStream(ctx, req)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	b := []byte{'x'}
	if req.Early == nil {
		if _, err := conn.Write(b); err != nil {
			return err
		}
	}
	_, err = io.ReadFull(conn, b)
	return err
}

// BenchmarkOpenStream is the stream handshake end to end in one process:
// a native OpenStream to a relay.Server whose agent (agent.Agent) dials an
// echo, then one byte there and back, then close. Time and allocations
// per op are the client's, the relay's and the agent's together.
func BenchmarkOpenStream(b *testing.B) {
	for _, bc := range []struct {
		name  string
		early []byte
	}{{"byte-after", nil}, {"byte-early", []byte{'x'}}} {
		b.Run(bc.name, func(b *testing.B) {
			c := benchStreams(b)
			req := relayclient.OpenRequest{HC: "pg", Token: tok("pg", "apps", sendKey), Early: bc.early}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := openEcho(c, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
