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
	"sync/atomic"
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
	j := NewJoint(a, b)
	go j.CopyBToA()
	j.CopyAToB()
	<-j.Done()
	return Counts{AToB: j.AToB.Load(), BToA: j.BToA.Load()}
}

// countChunk is how often a running copy reports its bytes. io.CopyN keeps
// splice(2): the kernel path takes an *io.LimitedReader of a TCP conn.
const countChunk = 1 << 20

// copyHalf copies src to dst like copyHalf, adding to count as it
// goes rather than only at the end.
func copyHalf(dst, src net.Conn, abort func(), count *atomic.Int64) {
	var err error
	for {
		var n int64
		n, err = io.CopyN(dst, src, countChunk)
		count.Add(n)
		if err != nil || n < countChunk {
			break
		}
	}
	if err != nil && err != io.EOF { // EOF is the clean end: anything else ends the stream
		abort()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	// The destination cannot half-close (or failed to): end the stream.
	abort()
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

// Joint is a stream's two connections copied by two goroutines the caller
// owns (typically the two that read each side's handshake), with Pipe's
// semantics: each direction half-closes its destination at EOF, a failed
// direction closes both, and both are closed once both directions end.
type Joint struct {
	a, b net.Conn
	once sync.Once
	left atomic.Int32
	done chan struct{}
	AToB atomic.Int64 // bytes copied so far, a to b (updated at least every countChunk)
	BToA atomic.Int64 // bytes copied so far, b to a
}

// NewJoint prepares copying between a and b. Each of CopyAToB and CopyBToA
// must be called exactly once, each on its own goroutine (or Abort instead
// of one that will not run).
func NewJoint(a, b net.Conn) *Joint {
	j := &Joint{a: a, b: b, done: make(chan struct{})}
	j.left.Store(2)
	return j
}

// CopyAToB copies a to b until a ends.
func (j *Joint) CopyAToB() { j.copy(j.b, j.a, &j.AToB) }

// CopyBToA copies b to a until b ends.
func (j *Joint) CopyBToA() { j.copy(j.a, j.b, &j.BToA) }

// Abort stands for a copy that will not run: the stream ends.
func (j *Joint) Abort() {
	j.closeBoth()
	j.finish()
}

// Close ends the stream at once (revocation, shutdown): both connections
// are reset, so each peer learns the stream was cut rather than ended (an
// orderly close would read as a half-close and leave the far side waiting).
func (j *Joint) Close() {
	j.once.Do(func() {
		Reset(j.a)
		Reset(j.b)
	})
}

// Reset closes c with a TCP reset rather than an orderly close, when c is
// (or wraps) a TCP connection.
func Reset(c net.Conn) error {
	if tc := TCPOf(c); tc != nil {
		tc.SetLinger(0)
	}
	return c.Close()
}

// TCPOf finds the *net.TCPConn under c (a TLS or a limited connection), or
// returns nil.
func TCPOf(c net.Conn) *net.TCPConn {
	for i := 0; i < 4; i++ {
		switch x := c.(type) {
		case *net.TCPConn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		case interface{ Unwrap() net.Conn }:
			c = x.Unwrap()
		default:
			return nil
		}
	}
	return nil
}

// Done is closed when both directions have ended.
func (j *Joint) Done() <-chan struct{} { return j.done }

func (j *Joint) closeBoth() {
	j.once.Do(func() {
		j.a.Close()
		j.b.Close()
	})
}

func (j *Joint) finish() {
	if j.left.Add(-1) == 0 {
		j.closeBoth()
		close(j.done)
	}
}

func (j *Joint) copy(dst, src net.Conn, count *atomic.Int64) {
	defer j.finish()
	copyHalf(dst, src, j.closeBoth, count)
}
