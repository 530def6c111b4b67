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
func Pipe(a, b net.Conn) Counts { return NewJoint(a, b).Run() }

// Run copies both ways, as Pipe does, on this goroutine and one it starts,
// until both directions have ended. Meanwhile AToB and BToA count.
func (j *Joint) Run() Counts {
	go j.CopyBToA()
	j.CopyAToB()
	<-j.Done()
	return Counts{AToB: j.AToB.Load(), BToA: j.BToA.Load()}
}

// countChunk bounds one step of a copy that has more waiting than that: a
// running copy reports its bytes at least this often.
const countChunk = 1 << 20

// copyHalf copies src to dst until src ends, adding to count as it goes,
// then half-closes dst (or, failing that, ends the stream).
//
// An idle stream holds no copy buffer and no splice pipe: when src is a
// TCP connection the copy first waits for it to be readable, with nothing
// in hand, then moves what is there — with splice(2) when dst is a TCP
// connection too (io.CopyN of exactly the bytes available, so the kernel
// pipe goes back to Go's pool at once), else through a pooled buffer.
func copyHalf(dst, src net.Conn, abort func(), count *atomic.Int64) {
	var err error
	if tc := rawTCP(src); tc != nil && idleWait {
		err = copyTCP(dst, tc, count)
	} else {
		err = copyBuffered(dst, src, count)
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

// rawTCP returns the TCP connection src reads from directly: src itself,
// or what a transparent wrapper (RawTCPer) holds.
func rawTCP(c net.Conn) *net.TCPConn {
	switch x := c.(type) {
	case *net.TCPConn:
		return x
	case RawTCPer:
		return x.RawTCP()
	}
	return nil
}

// spliceable reports whether dst takes a splice from a TCP connection:
// its ReadFrom is a *net.TCPConn's.
func spliceable(dst net.Conn) bool {
	switch dst.(type) {
	case *net.TCPConn, RawTCPer:
		return true
	}
	return false
}

// copyTCP copies from a TCP connection: wait, then move what is there.
func copyTCP(dst net.Conn, src *net.TCPConn, count *atomic.Int64) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return copyBuffered(dst, src, count)
	}
	splice := spliceable(dst)
	for {
		avail, err := waitReadable(rc)
		if err != nil {
			return err
		}
		if avail <= 0 {
			avail = 1 // end of stream or an error: the read says which
		}
		var n int64
		if splice {
			n, err = io.CopyN(dst, src, min(int64(avail), countChunk))
		} else {
			n, err = copyOnce(dst, src, avail)
		}
		count.Add(n)
		if err != nil {
			return err
		}
	}
}

// bufs are the copy buffers of copies that cannot splice, taken only while
// bytes flow.
var bufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// smallBufs hold a copy's place while it waits on a source that cannot be
// waited on without a read (TLS, WebSocket): small, so an idle stream holds
// little.
var smallBufs = sync.Pool{New: func() any { b := make([]byte, 2<<10); return &b }}

// copyOnce reads up to want bytes (at most a pooled buffer's worth) from
// src and writes them to dst.
func copyOnce(dst io.Writer, src io.Reader, want int) (int64, error) {
	bp := bufs.Get().(*[]byte)
	defer bufs.Put(bp)
	b := (*bp)[:min(want, len(*bp))]
	n, err := src.Read(b)
	if n > 0 {
		if _, werr := dst.Write(b[:n]); werr != nil {
			return 0, werr
		}
	}
	return int64(n), err
}

// copyBuffered copies from a source that cannot be waited on: it reads into
// a small buffer while idle, and into a large pooled one while reads fill
// the small one.
func copyBuffered(dst net.Conn, src io.Reader, count *atomic.Int64) error {
	if rf, ok := dst.(io.ReaderFrom); ok && !spliceable(dst) {
		// The destination copies frames its own way (a WebSocket relaying
		// another's messages).
		if _, ok := src.(io.WriterTo); !ok {
			for {
				n, err := rf.ReadFrom(io.LimitReader(src, countChunk))
				count.Add(n)
				if err != nil {
					return err
				}
				if n < countChunk {
					return io.EOF
				}
			}
		}
	}
	for {
		sp := smallBufs.Get().(*[]byte)
		n, err := src.Read(*sp)
		if n > 0 {
			_, werr := dst.Write((*sp)[:n])
			count.Add(int64(n))
			if werr != nil {
				smallBufs.Put(sp)
				return werr
			}
		}
		full := n == len(*sp)
		smallBufs.Put(sp)
		if err != nil {
			return err
		}
		for full { // more is coming: big reads until one comes back short
			var m int64
			m, err = copyOnce(dst, src, countChunk)
			count.Add(m)
			if err != nil {
				return err
			}
			full = m == 64<<10
		}
	}
}

// RawTCPer is a connection wrapper whose reads and writes are its TCP
// connection's own (it only watches Close, say): copies may read the TCP
// connection directly, and so splice.
type RawTCPer interface {
	RawTCP() *net.TCPConn
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
	cut  atomic.Bool
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
	j.cut.Store(true)
	j.once.Do(func() {
		Reset(j.a)
		Reset(j.b)
	})
}

// Cut reports whether Close ended the stream, rather than its two sides.
func (j *Joint) Cut() bool { return j.cut.Load() }

// Reset closes c with a TCP reset rather than an orderly close, when c is
// (or wraps) a TCP connection. The TCP connection is closed first, so a TLS
// or WebSocket layer above it cannot send its own orderly goodbye
// (close_notify, a close frame) that the peer would read as a clean end.
func Reset(c net.Conn) error {
	if tc := TCPOf(c); tc != nil {
		tc.SetLinger(0)
		tc.Close()
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
