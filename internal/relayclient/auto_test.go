package relayclient_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/relaytest"
	"github.com/hybridconn/hybrid/internal/sas"
)

// amqpPort serves what Azure Relay's port 5671 says to a client speaking
// anything but AMQP: the AMQP protocol header it supports, then close.
func amqpPort(t *testing.T) int {
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
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				io.ReadFull(c, make([]byte, 8)) // the client's protocol header, as AMQP reads it
				c.Write([]byte("AMQP\x03\x01\x00\x00"))
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestAutoAgainstAMQPPort: with transport auto, a control port that
// answers in another protocol (Azure's AMQP on 5671) is not taken for
// hybrid's: the client moves to WebSocket at once, without the start-up
// retries meant for a port that does not answer yet, and works there.
func TestAutoAgainstAMQPPort(t *testing.T) {
	rl := relaytest.Start(t, "pg")
	ep := rl.Endpoint
	ep.Control = amqpPort(t)
	c := relayclient.New(ep, relayclient.WithTransport(relayclient.TransportAuto))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err := c.Check(ctx, "pg", relaytest.SendToken("pg"), sas.Send)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("check over the fallback: %v", err)
	}
	if got := c.Transport(); got != relayclient.TransportWebSocket {
		t.Fatalf("transport %q, want websocket", got)
	}
	if took > 2*time.Second {
		t.Fatalf("took %v to fall back: an answer in another protocol is a verdict, not a port still starting", took)
	}
	t.Logf("fell back to websocket in %v", took.Round(time.Millisecond))
}
