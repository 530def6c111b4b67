// Package mux carries many streams over one connection between a client
// (agent or proxy) and a relay's data port: yamux
// (github.com/libp2p/go-yamux), after the preface wire.MuxPreface. Each
// stream is a net.Conn that behaves as a TCP connection would for the code
// above it: it starts with the native preface and a frame, half-closes
// (CloseWrite), and Close ends it for both sides.
//
// Clients use it on TLS links, where a connection per stream costs a TLS
// handshake per stream (see docs/performance.md); plaintext links keep a
// TCP connection per stream, which the kernel can splice.
//
// This package is the only importer of the yamux library.
package mux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	yamux "github.com/libp2p/go-yamux/v5"
)

// Tuning of every session.
const (
	// keepAlive is how often an idle session is pinged; a ping unanswered
	// within writeTimeout ends it.
	keepAlive = 15 * time.Second
	// writeTimeout bounds one write of the session's connection: a peer
	// that stopped reading ends the session, not a writer's patience.
	writeTimeout = 10 * time.Second
	// backlog bounds the streams opened by the client and not yet taken by
	// the relay (SYNs in flight on the client, accepts waiting on the
	// relay); a stream over it is reset.
	backlog = 256
	// maxIncoming bounds the streams of one session at the relay. The
	// relay's own connection limits (limits.connections, per_source) count
	// each stream as a connection, and are the caps that matter.
	maxIncoming = 1 << 20
)

func config() *yamux.Config {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = backlog
	c.KeepAliveInterval = keepAlive
	c.ConnectionWriteTimeout = writeTimeout
	c.MaxIncomingStreams = maxIncoming
	c.LogOutput = io.Discard
	// No coalescing delay: a stream's bytes go out at once (latency is
	// what a stream's setup is measured by).
	c.WriteCoalesceDelay = 0
	return c
}

// Session is one multiplexed connection.
type Session struct {
	y       *yamux.Session
	conn    net.Conn
	retired atomic.Bool
}

// Client starts the client side of a session on conn, whose preface
// (wire.MuxPreface) the caller has written.
func Client(conn net.Conn) (*Session, error) {
	y, err := yamux.Client(conn, config(), nil)
	if err != nil {
		return nil, fmt.Errorf("mux session: %w", err)
	}
	return &Session{y: y, conn: conn}, nil
}

// Server starts the relay's side of a session on conn, whose preface the
// relay has read.
func Server(conn net.Conn) (*Session, error) {
	y, err := yamux.Server(conn, config(), nil)
	if err != nil {
		return nil, fmt.Errorf("mux session: %w", err)
	}
	return &Session{y: y, conn: conn}, nil
}

// Open opens a stream.
func (s *Session) Open(ctx context.Context) (*Conn, error) {
	st, err := s.y.OpenStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("open stream on mux session to %s: %w", s.conn.RemoteAddr(), mapErr(err))
	}
	return &Conn{st: st, sess: s}, nil
}

// Accept waits for the peer's next stream; an error means the session has
// ended.
func (s *Session) Accept() (*Conn, error) {
	st, err := s.y.AcceptStream()
	if err != nil {
		return nil, mapErr(err)
	}
	return &Conn{st: st, sess: s}, nil
}

// Retire takes the session out of use for new streams: a client opens its
// next ones on a new session; the relay refuses new ones (ShuttingDown).
// Its streams go on; the session ends when the last one has (see Reap).
func (s *Session) Retire() { s.retired.Store(true) }

// Retired reports whether Retire was called.
func (s *Session) Retired() bool { return s.retired.Load() }

// Streams returns how many streams the session holds.
func (s *Session) Streams() int { return s.y.NumStreams() }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.y.CloseChan() }

// Close ends the session and every stream on it (their peers see a reset).
func (s *Session) Close() error { return s.y.Close() }

// Reap ends the session once it has held no stream for idle (soon after
// its last stream when it is retired), and returns when the session has
// ended. The session's owner runs it on a goroutine of its own.
func (s *Session) Reap(idle time.Duration) {
	every := min(time.Second, idle/4)
	tick := time.NewTicker(every)
	defer tick.Stop()
	var empty time.Duration
	for {
		select {
		case <-s.Done():
			return
		case <-tick.C:
		}
		if s.Streams() > 0 {
			empty = 0
			continue
		}
		empty += every
		if s.Retired() || empty >= idle {
			s.Close()
			return
		}
	}
}

// Conn is one stream of a session.
type Conn struct {
	st   *yamux.Stream
	sess *Session
	eof  atomic.Bool // a read has returned io.EOF
	once sync.Once
}

// Session returns the session the stream belongs to.
func (c *Conn) Session() *Session { return c.sess }

// Read implements net.Conn.
func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.st.Read(b)
	if err == io.EOF {
		c.eof.Store(true)
		return n, err
	}
	return n, mapErr(err)
}

// Write implements net.Conn.
func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.st.Write(b)
	return n, mapErr(err)
}

// CloseWrite half-closes the stream: the peer reads EOF after what was
// written, and may go on writing.
func (c *Conn) CloseWrite() error { return mapErr(c.st.CloseWrite()) }

// Close ends the stream as closing a TCP connection does: what was written
// is delivered and ends with EOF; unless the peer's end was already read,
// the peer's writes fail from now on (a reset), so neither side is left
// writing into a stream nobody reads.
func (c *Conn) Close() error {
	c.once.Do(func() {
		c.st.CloseWrite()
		if !c.eof.Load() {
			c.st.Reset()
		}
	})
	return nil
}

// LocalAddr implements net.Conn: the session connection's.
func (c *Conn) LocalAddr() net.Addr { return c.st.LocalAddr() }

// RemoteAddr implements net.Conn: the session connection's peer.
func (c *Conn) RemoteAddr() net.Addr { return c.st.RemoteAddr() }

// SetDeadline implements net.Conn.
func (c *Conn) SetDeadline(t time.Time) error { return c.st.SetDeadline(t) }

// SetReadDeadline implements net.Conn.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.st.SetReadDeadline(t) }

// SetWriteDeadline implements net.Conn.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }

// ErrReset is what reads and writes of a stream the peer reset (or whose
// session ended) return. It is syscall.ECONNRESET, as for a TCP connection,
// so callers treat both alike.
var ErrReset = syscall.ECONNRESET

// mapErr turns yamux's errors into the net package's: a deadline is
// os.ErrDeadlineExceeded, a reset or an ended session ErrReset.
func mapErr(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	var ne net.Error
	switch {
	case errors.Is(err, yamux.ErrTimeout):
		return fmt.Errorf("mux stream: %w", os.ErrDeadlineExceeded)
	case errors.Is(err, yamux.ErrStreamReset), errors.Is(err, yamux.ErrStreamClosed):
		return fmt.Errorf("mux stream: %w", ErrReset)
	case errors.As(err, new(*yamux.StreamError)), errors.As(err, new(*yamux.GoAwayError)):
		return fmt.Errorf("mux stream (%v): %w", err, ErrReset)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("mux stream: %w", os.ErrDeadlineExceeded)
	}
	return err
}

// RetireSessionOf retires the session c belongs to, when c is a stream: a
// client calls it when the relay refused a stream in a way a new
// connection may not meet (the relay is stopping, or the process the
// session reached does not know the stream).
func RetireSessionOf(c net.Conn) {
	if mc, ok := c.(*Conn); ok {
		mc.sess.Retire()
	}
}
