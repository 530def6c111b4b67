package relay

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/rules"
)

// BenchmarkWSThroughput: bytes through the relay over WebSocket, each way,
// WebSocket on both sides and WebSocket sender with a native agent.
func BenchmarkWSThroughput(b *testing.B) {
	const total = 64 << 20
	for _, pair := range []struct {
		name  string
		agent func(*testRelay) relayclient.Client
	}{{"ws-ws", wsClient}, {"ws-native", nativeClient}} {
		for _, dir := range []string{"up", "down"} {
			b.Run(pair.name+"-"+dir, func(b *testing.B) {
				r := startRelayB(b)
				buf := make([]byte, 32<<10)
				serve := func(c net.Conn) {
					if dir == "up" {
						io.Copy(io.Discard, c)
					} else {
						for n := 0; n < total; n += len(buf) {
							if _, err := c.Write(buf); err != nil {
								break
							}
						}
					}
					c.Close()
				}
				startAgentB(b, pair.agent(r), "pg", serve)
				b.SetBytes(total)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					c, err := openWith(wsClient(r), "pg", "apps", sendKey, "")
					if err != nil {
						b.Fatal(err)
					}
					if dir == "up" {
						for n := 0; n < total; n += len(buf) {
							if _, err := c.Write(buf); err != nil {
								b.Fatal(err)
							}
						}
					} else {
						if n, _ := io.Copy(io.Discard, c); n < total {
							b.Fatalf("read %d", n)
						}
					}
					c.Close()
				}
			})
		}
	}
}

func startRelayB(tb testing.TB) *testRelay {
	keys := []rules.Key{
		{Name: "apps", Rights: []string{"send"}, Primary: sendKey},
		{Name: "onprem", Rights: []string{"listen"}, Primary: listenKey},
	}
	cfg := &rules.Relay{Namespace: ns, Connections: []rules.RelayConnection{{Name: "pg", Keys: keys}}}
	lis := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		return ln
	}
	l := &Listeners{Control: lis(), Data: lis(), HTTP: lis()}
	cfg.Listen = rules.RelayListen{Control: l.Control.Addr().String(), Data: l.Data.Addr().String(), HTTP: l.HTTP.Addr().String()}
	srv, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		tb.Fatal(err)
	}
	srv.Grace = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	r := &testRelay{srv: srv, cancel: cancel, done: make(chan error, 1),
		ep: relayclient.Endpoint{Host: "127.0.0.1", Control: port(l.Control), Data: port(l.Data), HTTP: port(l.HTTP), Namespace: ns}}
	go func() { r.done <- srv.Serve(ctx, l) }()
	tb.Cleanup(func() { cancel(); <-r.done })
	return r
}

func startAgentB(tb testing.TB, c relayclient.Client, hc string, serve func(net.Conn)) {
	ctx := context.Background()
	ctl, err := c.Listen(ctx, "test", "test")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ctl.Close() })
	if err := ctl.Attach(ctx, hc, token(hc, "onprem", listenKey)); err != nil {
		tb.Fatal(err)
	}
	go func() {
		for ev := range ctl.Events() {
			if acc := ev.Accept; acc != nil {
				go func() {
					if c, err := ctl.Join(ctx, acc, token(acc.HC, "onprem", listenKey)); err == nil {
						serve(c)
					}
				}()
			}
		}
	}()
}
