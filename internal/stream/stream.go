// Package stream holds what every role does with a stream once it is
// established: copy bytes both ways with half-close. It is written once, over
// net.Conn, so relay, agent and proxy share it and tests can use net.Pipe.
package stream

import (
	"crypto/tls"
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

// half is one direction of a Joint: src copied to dst until src ends,
// then dst half-closed (or, failing that, the stream ended).
//
// An idle half holds no copy buffer and no splice pipe: when src is a TCP
// connection the copy first waits for it to be readable, with nothing in
// hand, then moves what is there — with splice(2) when dst is a TCP
// connection too (io.CopyN of exactly the bytes available, so the kernel
// pipe goes back to Go's pool at once), else through a pooled buffer. A
// half that has waited IdleAfter with nothing to move is parked (Linux):
// its goroutine ends, and a new one takes the copy up when src is readable
// again, so an idle stream holds no goroutine either. A TLS source is
// parked the same way, on the socket under it (see copyTLS).
type half struct {
	j        *Joint
	dst, src net.Conn
	count    *atomic.Int64
	tcp      *net.TCPConn    // src's socket, when it can be waited on without reading it
	tls      *tls.Conn       // src, when it is TLS over a socket parking can watch
	rc       syscall.RawConn // the socket's (tcp's, or the one under tls)
	dl       net.Conn        // what the idle deadline is set on: tcp or tls
	deadline time.Time       // the idle deadline set on dl; zero: none
	park     parkState
}

// run copies until src ends, or until the half is parked.
func (h *half) run() {
	var err error
	switch {
	case h.tcp != nil:
		err = h.copyTCP()
	case h.tls != nil:
		err = h.copyTLS()
	default:
		err = h.copyBuffered()
	}
	if err == errParked {
		return // a parker's goroutine takes it up
	}
	h.end(err)
}

// end finishes the half: at a clean end of src (EOF) it half-closes dst;
// any other end closes the stream.
func (h *half) end(err error) {
	defer h.j.finish()
	if err != nil && err != io.EOF {
		h.j.closeBoth()
		return
	}
	if cw, ok := h.dst.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	// The destination cannot half-close (or failed to): end the stream.
	h.j.closeBoth()
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
func (h *half) copyTCP() error {
	splice := spliceable(h.dst)
	for {
		avail, err := h.wait()
		if err != nil {
			return err
		}
		if avail <= 0 {
			avail = 1 // end of stream or an error: the read says which
		}
		if testHookBeforeCopy != nil {
			testHookBeforeCopy()
		}
		var n int64
		if splice {
			n, err = io.CopyN(h.dst, h.tcp, min(int64(avail), countChunk))
		} else {
			n, err = copyOnce(h.dst, h.tcp, avail)
		}
		h.count.Add(n)
		if err != nil {
			if h.idleExpired(err) {
				// The bytes were there, but the idle deadline passed before
				// the read (the process was stopped or starved past it):
				// not an end. Clear it and move them.
				h.disarmIdle()
				continue
			}
			return err
		}
	}
}

// testHookBeforeCopy, when set by a test, runs between a wait that found
// bytes and the read that moves them.
var testHookBeforeCopy func()

// idleExpired reports whether err is the half's own idle deadline having
// passed (not a peer's failure, nor a deadline set on the destination).
func (h *half) idleExpired(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) && !h.deadline.IsZero() && !time.Now().Before(h.deadline)
}

// IdleAfter is how long a half waits for bytes on its goroutine before it
// is parked without one.
const IdleAfter = time.Second

// errParked says the half was parked: its goroutine must end.
var errParked = errors.New("stream: parked while idle")

// wait returns how many bytes src has, waiting for some: on this
// goroutine while the half was busy within IdleAfter, then parked
// (errParked) where parking is available.
func (h *half) wait() (int, error) {
	if !parkingAvailable() {
		return waitReadable(h.rc)
	}
	h.armIdle()
	avail, err := waitReadable(h.rc)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return avail, err
	}
	h.disarmIdle()
	if h.parkIdle() {
		return 0, errParked
	}
	return waitReadable(h.rc)
}

// armIdle sets the idle deadline on src. It is moved only when half spent:
// a busy stream pays for it about twice per IdleAfter, not per read.
func (h *half) armIdle() {
	if now := time.Now(); h.deadline.Sub(now) < IdleAfter/2 {
		h.deadline = now.Add(IdleAfter)
		h.dl.SetReadDeadline(h.deadline)
	}
}

// disarmIdle clears the idle deadline.
func (h *half) disarmIdle() {
	h.deadline = time.Time{}
	h.dl.SetReadDeadline(time.Time{})
}

// copyTLS copies from a TLS connection as copyBuffered does, except that a
// read which finds nothing for IdleAfter parks the half on the socket
// under the TLS layer. A read deadline does not harm a tls.Conn (a write
// timeout would): a record it has begun stays for the next read, and when
// a read times out the TLS layer holds no whole record, so the socket's
// readability is what brings the next bytes.
func (h *half) copyTLS() error { return h.copyReads(true) }

// bufs are the copy buffers of copies that cannot splice, taken only while
// bytes flow.
var bufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// smallBufs hold a copy's place while it waits on a source that cannot be
// waited on without a read (TLS, WebSocket): small, so an idle stream holds
// little.
var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}

// smallBufSize sizes the buffer of an idle read.
const smallBufSize = 1 << 10

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

// copyBuffered copies from a source that cannot be waited on (a
// WebSocket): into a WebSocket destination frame by frame (see
// wsconn.Conn.ReadFrom), else read by read (copyReads).
func (h *half) copyBuffered() error {
	if rf, ok := h.dst.(io.ReaderFrom); ok && !spliceable(h.dst) {
		// The destination copies frames its own way (a WebSocket relaying
		// another's messages).
		if _, ok := h.src.(io.WriterTo); !ok {
			for {
				n, err := rf.ReadFrom(io.LimitReader(h.src, countChunk))
				h.count.Add(n)
				if err != nil {
					return err
				}
				if n < countChunk {
					return io.EOF
				}
			}
		}
	}
	return h.copyReads(false)
}

// copyReads copies src to dst read by read: into a small buffer while src
// is idle, into a large pooled one while reads bring more than the small
// one holds (so a TLS record, up to 16 KiB, goes on whole). With park set,
// a read that finds nothing for IdleAfter parks the half (errParked).
func (h *half) copyReads(park bool) error {
	big := false
	for {
		if park {
			h.armIdle()
		}
		pool := &smallBufs
		if big {
			pool = &bufs
		}
		bp := pool.Get().(*[]byte)
		n, err := h.src.Read(*bp)
		if n > 0 {
			_, werr := h.dst.Write((*bp)[:n])
			h.count.Add(int64(n))
			if werr != nil {
				pool.Put(bp)
				return werr
			}
		}
		pool.Put(bp)
		big = n >= smallBufSize
		if err == nil {
			continue
		}
		if park && n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			h.disarmIdle()
			if h.parkIdle() {
				return errParked
			}
			continue
		}
		return err
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

// Joint is a stream's two connections copied both ways, with Pipe's
// semantics: each direction half-closes its destination at EOF, a failed
// direction closes both, and both are closed once both directions end.
// Its connections must be closed only through it (Close, Abort, or the
// copies ending), so that a parked direction learns of it.
type Joint struct {
	a, b   net.Conn
	once   sync.Once
	left   atomic.Int32
	cut    atomic.Bool
	done   chan struct{}
	onDone func()
	halves [2]*half     // a to b, b to a
	AToB   atomic.Int64 // bytes copied so far, a to b (updated at least every countChunk)
	BToA   atomic.Int64 // bytes copied so far, b to a
}

// NewJoint prepares copying between a and b. Each of CopyAToB and CopyBToA
// must be called exactly once, each on its own goroutine (or Abort instead
// of one that will not run); or Start calls both.
func NewJoint(a, b net.Conn) *Joint {
	j := &Joint{a: a, b: b, done: make(chan struct{})}
	j.left.Store(2)
	j.halves[0] = j.newHalf(b, a, &j.AToB)
	j.halves[1] = j.newHalf(a, b, &j.BToA)
	return j
}

func (j *Joint) newHalf(dst, src net.Conn, count *atomic.Int64) *half {
	h := &half{j: j, dst: dst, src: src, count: count}
	if tc := rawTCP(src); tc != nil && idleWait {
		if rc, err := tc.SyscallConn(); err == nil {
			h.tcp, h.rc, h.dl = tc, rc, tc
		}
	} else if t, ok := src.(*tls.Conn); ok && parkingAvailable() {
		if tc := TCPOf(t); tc != nil {
			if rc, err := tc.SyscallConn(); err == nil {
				h.tls, h.rc, h.dl = t, rc, t
			}
		}
	}
	return h
}

// OnDone sets f to run once both directions have ended and both
// connections are closed (after Done is closed), on a goroutine of the
// Joint's. Set it before the copies start.
func (j *Joint) OnDone(f func()) { j.onDone = f }

// Start runs both directions on goroutines of their own and returns at
// once: the caller learns of the end from Done or OnDone.
func (j *Joint) Start() {
	go j.CopyBToA()
	go j.CopyAToB()
}

// CopyAToB copies a to b until a ends. It may return sooner, with the
// direction parked while idle: it then goes on, on another goroutine.
func (j *Joint) CopyAToB() { j.halves[0].run() }

// CopyBToA copies b to a until b ends, or parks it, as CopyAToB.
func (j *Joint) CopyBToA() { j.halves[1].run() }

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
		j.unpark()
		Reset(j.a)
		Reset(j.b)
	})
}

// Cut reports whether Close ended the stream, rather than its two sides.
func (j *Joint) Cut() bool { return j.cut.Load() }

// unpark takes parked directions back before their connections close: each
// ends, on a goroutine of its own (the caller may hold locks its end needs).
func (j *Joint) unpark() {
	for _, h := range j.halves {
		if h.unparkToClose() {
			go h.end(net.ErrClosed)
		}
	}
}

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
		j.unpark()
		j.a.Close()
		j.b.Close()
	})
}

func (j *Joint) finish() {
	if j.left.Add(-1) == 0 {
		j.closeBoth()
		close(j.done)
		if j.onDone != nil {
			j.onDone()
		}
	}
}
