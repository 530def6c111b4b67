// Package stream holds what every role does with a stream once it is
// established: copy bytes both ways with half-close. It is written once, over
// net.Conn, so relay, agent and proxy share it and tests can use net.Pipe.
package stream

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Counts reports the bytes a Pipe moved in each direction.
type Counts struct {
	AToB, BToA int64
}

// Pipe copies a→b and b→a until both directions have ended, then closes
// both. When one direction reaches EOF, the write side of its destination is
// half-closed (CloseWrite) so the peer sees EOF while the other direction
// goes on. When a direction fails, both connections are closed so the other
// direction ends too.
//
// Pipe calls io.Copy on a and b themselves: when both are *net.TCPConn, Linux
// moves the bytes with splice(2), without copying them through user space.
// Callers must therefore pass the raw connections, not wrappers.
func Pipe(a, b net.Conn) Counts {
	var c Counts
	var wg sync.WaitGroup
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.BToA = copyHalf(a, b, closeBoth)
	}()
	c.AToB = copyHalf(b, a, closeBoth)
	wg.Wait()
	closeBoth()
	return c
}

func copyHalf(dst, src net.Conn, abort func()) int64 {
	n, err := io.Copy(dst, src)
	if err != nil { // io.Copy returns nil at EOF: anything else ends the stream
		abort()
		return n
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return n
		}
	}
	// The destination cannot half-close (or failed to): end the stream.
	abort()
	return n
}

// IsClosed reports whether err only says that a connection ended: EOF, a
// closed connection or a reset by the peer. Such errors are clean ends of a
// stream, not failures worth an error log line.
func IsClosed(err error) bool {
	return err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, io.ErrClosedPipe) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrDeadlineExceeded)
}

// Drain waits for the streams counted by wg to end by themselves for up to
// grace, then calls cut, which closes what is still live and returns how
// many it closed, and waits for them to wind down. It returns cut's count
// (0 when everything ended in time).
func Drain(wg *sync.WaitGroup, grace time.Duration, cut func() int) int {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return 0
	case <-t.C:
	}
	n := cut()
	<-done
	return n
}
