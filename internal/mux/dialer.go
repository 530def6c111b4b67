package mux

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// ClientIdle is how long a client keeps a session that holds no stream.
const ClientIdle = 30 * time.Second

// Dialer opens streams on one session to a relay at a time, dialling a new
// session when there is none, or the current one ended or was retired.
// Sessions it dialled end by themselves once idle (ClientIdle) or retired
// and empty, so a Dialer needs no Close.
type Dialer struct {
	// Dial opens a new connection to the relay's data port (TLS included)
	// and writes wire.MuxPreface on it.
	Dial func(ctx context.Context) (net.Conn, error)

	mu      sync.Mutex
	cur     *Session
	dialing chan struct{} // closed when the dial in progress ends; nil: none
	dialErr error         // how the last dial failed
}

// Open opens a stream, on the current session or a new one. A session
// that cannot open a stream (it broke) is retired and one new session is
// tried.
func (d *Dialer) Open(ctx context.Context) (*Conn, error) {
	var err error
	for try := 0; try < 2; try++ {
		var s *Session
		if s, err = d.session(ctx); err != nil {
			return nil, err
		}
		var c *Conn
		if c, err = s.Open(ctx); err == nil {
			return c, nil
		}
		s.Retire()
		if ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

// session returns the current session, dialling one if need be. Callers
// that come while a dial is under way wait for it (each as long as its own
// ctx allows) rather than each making their own.
func (d *Dialer) session(ctx context.Context) (*Session, error) {
	for {
		d.mu.Lock()
		if s := d.cur; s != nil && !s.Retired() && !closed(s) {
			d.mu.Unlock()
			return s, nil
		}
		if wait := d.dialing; wait != nil {
			d.mu.Unlock()
			select {
			case <-wait:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			d.mu.Lock()
			s, err := d.cur, d.dialErr
			d.mu.Unlock()
			if s != nil && !s.Retired() && !closed(s) {
				return s, nil
			}
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				return nil, err // the relay could not be reached just now
			}
			continue // the dialler gave up for its own reasons: try ourselves
		}
		done := make(chan struct{})
		d.dialing = done
		d.mu.Unlock()

		s, err := d.dial(ctx)
		d.mu.Lock()
		d.dialing, d.dialErr = nil, err
		if err == nil {
			if old := d.cur; old != nil {
				old.Retire() // its streams go on; Reap ends it after the last
			}
			d.cur = s
			go s.Reap(ClientIdle)
		}
		d.mu.Unlock()
		close(done)
		return s, err
	}
}

// dial opens a new session.
func (d *Dialer) dial(ctx context.Context) (*Session, error) {
	conn, err := d.Dial(ctx)
	if err != nil {
		return nil, err
	}
	s, err := Client(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("relay %s: %w", conn.RemoteAddr(), err)
	}
	return s, nil
}

// Retire retires the current session, if any: the next stream goes on a
// new one (the relay it reached may be gone; its streams, if any still
// work, go on).
func (d *Dialer) Retire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cur != nil {
		d.cur.Retire()
	}
}

func closed(s *Session) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}
