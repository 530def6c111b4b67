package connlimit

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// dial connects from one loopback address to another; nil when the
// connection was reset as it was made (refused over a limit).
func dial(t *testing.T, from, to string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", to)
	if err != nil {
		return nil
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// alive reports whether the server kept c: a refused connection is reset.
func alive(c net.Conn) bool {
	if c == nil {
		return false
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestLimits(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var reports atomic.Int64
	l := New(ln, Limits{Total: 5, PerSource: 3})
	l.OnRefuse = func(Refusal) { reports.Add(1) }
	defer l.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	addr := ln.Addr().String()
	var fromA []net.Conn
	for i := 0; i < 4; i++ {
		fromA = append(fromA, dial(t, "127.0.0.1", addr))
	}
	for i := 0; i < 3; i++ {
		if !alive(fromA[i]) {
			t.Fatalf("connection %d from A refused under the per-source cap", i)
		}
	}
	if alive(fromA[3]) {
		t.Fatal("a fourth connection from one source was kept (per_source 3)")
	}
	// Another source still gets in while A holds its maximum.
	b1, b2 := dial(t, "127.0.0.2", addr), dial(t, "127.0.0.2", addr)
	if !alive(b1) || !alive(b2) {
		t.Fatal("another source was refused while A held its maximum")
	}
	if c := dial(t, "127.0.0.3", addr); alive(c) {
		t.Fatal("a sixth connection was kept (total 5)")
	}
	for deadline := time.Now().Add(5 * time.Second); l.Refused() < 2 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if l.Refused() != 2 || l.Open() != 5 || reports.Load() == 0 {
		t.Fatalf("refused %d open %d reports %d", l.Refused(), l.Open(), reports.Load())
	}
	// Closing gives the slot back.
	first := <-accepted
	first.Close()
	if c := dial(t, "127.0.0.3", addr); !alive(c) {
		t.Fatal("a slot freed by Close was not given back")
	}
	// The wrapper keeps the TCP fast paths (splice) and half-close.
	second := <-accepted
	if _, ok := second.(io.ReaderFrom); !ok {
		t.Fatal("accepted connection lost ReadFrom")
	}
	if _, ok := second.(io.WriterTo); !ok {
		t.Fatal("accepted connection lost WriteTo")
	}
	if _, ok := second.(interface{ CloseWrite() error }); !ok {
		t.Fatal("accepted connection lost CloseWrite")
	}
}
