package agent

import (
	"context"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/relaytest"
	"github.com/hybridconn/hybrid/relay"
	"github.com/hybridconn/hybrid/rules"
)

// TestSlowDialAcknowledged: an agent whose dial of the resource takes
// longer than the relay's join timeout still serves the stream, on either
// transport: it acknowledges the offer while it dials, and the relay waits
// for the dial instead of giving up on the agent.
func TestSlowDialAcknowledged(t *testing.T) {
	slow := relay.DefaultJoinTimeout + time.Second
	for _, transport := range []string{relayclient.TransportTCP, relayclient.TransportWebSocket} {
		t.Run(transport, func(t *testing.T) {
			rl := relaytest.Start(t, "pg")
			resource := relaytest.Echo(t)
			cfg := &rules.Agent{Transport: transport, Relays: []rules.RelayEndpoint{rl.Entry},
				Connections: []rules.AgentConnection{
					{Name: "pg", Endpoint: resource, KeyName: relaytest.ListenKeyName, Key: relaytest.ListenKey}}}
			a, err := New(cfg, hclog.NewNullLogger())
			if err != nil {
				t.Fatal(err)
			}
			a.dialer.ControlContext = func(context.Context, string, string, syscall.RawConn) error {
				time.Sleep(slow) // a resource far away
				return nil
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { a.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			relaytest.Eventually(t, "agent attached", func() bool { return len(a.Status().Connections[0].Relays) == 1 })

			octx, ocancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer ocancel()
			start := time.Now()
			c, err := relayclient.New(rl.Endpoint).Open(octx, "pg", relaytest.SendToken("pg"), "")
			if err != nil {
				t.Fatalf("open with a %v dial (join timeout %v): %v", slow, relay.DefaultJoinTimeout, err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("echo: %q, %v", buf, err)
			}
			t.Logf("stream served after %v (dial %v, join timeout %v)", time.Since(start).Round(time.Millisecond), slow, relay.DefaultJoinTimeout)
		})
	}
}
