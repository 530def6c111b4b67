package stream

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// TestPipeHalfClose: the client ends its direction first; the server's
// answer, written after it saw EOF, still arrives.
func TestPipeHalfClose(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	done := make(chan Counts, 1)
	go func() { done <- Pipe(a, b) }()

	go func() {
		got, _ := io.ReadAll(server) // until the client's CloseWrite arrives
		server.Write(bytes.ToUpper(got))
		server.(*net.TCPConn).CloseWrite()
	}()
	client.Write([]byte("query"))
	client.(*net.TCPConn).CloseWrite()
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "QUERY" {
		t.Fatalf("got %q, %v", got, err)
	}
	select {
	case n := <-done:
		if n.AToB != 5 || n.BToA != 5 {
			t.Fatalf("counts %+v", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Pipe did not return after both directions ended")
	}
}

// TestPipeAbort: when one side is reset, Pipe ends both.
func TestPipeAbort(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	done := make(chan Counts, 1)
	go func() { done <- Pipe(a, b) }()
	client.(*net.TCPConn).SetLinger(0)
	client.Close() // RST
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(server); err != nil {
		t.Fatalf("server side did not end cleanly: %v", err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Pipe did not return")
	}
}

// TestPipeNetPipe: over net.Pipe, which cannot half-close, EOF in one
// direction ends the stream.
func TestPipeNetPipe(t *testing.T) {
	client, a := net.Pipe()
	b, server := net.Pipe()
	done := make(chan Counts, 1)
	go func() { done <- Pipe(a, b) }()
	go func() {
		buf := make([]byte, 4)
		io.ReadFull(server, buf)
		server.Write(buf)
	}()
	client.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("got %q, %v", buf, err)
	}
	client.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Pipe did not return")
	}
}

// TestStalledPastIdleDeadline: bytes that were waiting when the process
// stalled (SIGSTOP, a starved VM) past the idle deadline are moved when it
// goes on, not taken for the end of the stream. The hook holds the copy
// between finding the bytes and reading them, past IdleAfter.
func TestStalledPastIdleDeadline(t *testing.T) {
	if !parkingAvailable() {
		t.Skip("the idle deadline is armed only where parking is available (Linux)")
	}
	var once sync.Once
	testHookBeforeCopy = func() { once.Do(func() { time.Sleep(IdleAfter + IdleAfter/2) }) }
	t.Cleanup(func() { testHookBeforeCopy = nil })
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	j := NewJoint(a, b)
	j.Start()
	defer j.Close()
	client.Write([]byte("END;"))
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 4)
	if _, err := io.ReadFull(server, got); err != nil || string(got) != "END;" {
		t.Fatalf("after the stall: %q, %v", got, err)
	}
	// And the stream lives on, both ways.
	server.Write([]byte("ok"))
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	back := make([]byte, 2)
	if _, err := io.ReadFull(client, back); err != nil || string(back) != "ok" {
		t.Fatalf("back: %q, %v", back, err)
	}
}
