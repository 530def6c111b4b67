package relay

import (
	"io"
	"net"
	"testing"

	"github.com/hybridconn/hybrid/internal/relayclient"
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
				r := startRelayWith(b, nil)
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
				startAgentWith(b, pair.agent(r), "pg", serve)
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
