package proxy

import (
	"net"
	"sync"
	"syscall"

	"github.com/hybridconn/hybrid/internal/wire"
)

var earlyBufs = sync.Pool{New: func() any { b := make([]byte, wire.MaxEarly); return &b }}

// readyBytes returns what the app has already sent on c (at most
// wire.MaxEarly bytes), without waiting: one non-blocking read. Those bytes
// travel with the OPEN, so the app's first request needs no round trip of
// its own; an app that waits for the server to speak first sends nothing
// and loses nothing.
func readyBytes(c net.Conn) []byte {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	bp := earlyBufs.Get().(*[]byte)
	defer earlyBufs.Put(bp)
	n := 0
	rc.Read(func(fd uintptr) bool {
		n, _ = syscall.Read(int(fd), *bp) // EAGAIN: nothing yet, n < 0
		return true                       // one attempt, never wait
	})
	if n <= 0 {
		return nil
	}
	return append([]byte(nil), (*bp)[:n]...)
}
