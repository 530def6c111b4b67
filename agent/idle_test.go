package agent

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/relaytest"
	"github.com/hybridconn/hybrid/rules"
)

// cpuTime is the CPU this process has used.
func cpuTime(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestIdleAgentIdles: an agent attached to a relay, with nothing to do,
// uses next to no CPU on either transport (a WebSocket channel cannot park
// connections: its pool must stay empty, not retry in a loop).
func TestIdleAgentIdles(t *testing.T) {
	for _, transport := range []string{relayclient.TransportTCP, relayclient.TransportWebSocket} {
		t.Run(transport, func(t *testing.T) {
			rl := relaytest.Start(t, "pg")
			cfg := &rules.Agent{Transport: transport, Pool: 4, Relays: []rules.RelayEndpoint{rl.Entry},
				Connections: []rules.AgentConnection{
					{Name: "pg", Endpoint: relaytest.Echo(t), KeyName: relaytest.ListenKeyName, Key: relaytest.ListenKey}}}
			a, err := New(cfg, hclog.NewNullLogger())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { a.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			relaytest.Eventually(t, "agent attached", func() bool { return len(a.Status().Connections[0].Relays) == 1 })
			time.Sleep(500 * time.Millisecond) // the pool fills
			const window = 2 * time.Second
			before := cpuTime(t)
			time.Sleep(window)
			used := cpuTime(t) - before
			t.Logf("CPU used in %v idle (relay and agent): %v", window, used)
			if used > window/5 {
				t.Fatalf("an idle agent and relay used %v of CPU in %v", used, window)
			}
		})
	}
}
