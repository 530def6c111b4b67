// Package connlimit bounds the connections a listener holds: a global cap
// and a cap per source IP, so that one source cannot take every file
// descriptor. Connections over a cap are closed as soon as they are
// accepted and counted; the caller is told once per window, not once per
// connection.
//
// Accepted TCP connections are returned as a type that embeds the
// *net.TCPConn, so io.Copy between two of them still splices on Linux.
package connlimit

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Limits are a listener's caps; zero means no cap.
type Limits struct {
	Total     int // connections held at once
	PerSource int // connections held at once by one source IP
}

// Refusal summarises connections refused over a window.
type Refusal struct {
	Count     int64  // refused in the window
	TopSource string // the source refused most often
	TopCount  int64
	Total     int // connections held when the window closed
}

// Listener wraps a net.Listener with Limits. Limits may be changed while
// it runs (SetLimits); they apply to connections accepted from then on.
type Listener struct {
	net.Listener
	limits atomic.Pointer[Limits]
	// OnRefuse, if set, is called at most once per Window with what was
	// refused in it (from the Accept goroutine).
	OnRefuse func(Refusal)
	// Window is how often OnRefuse may be called; default 10 s.
	Window time.Duration

	mu        sync.Mutex
	total     int
	perSource map[string]int
	refused   atomic.Int64 // since start
	window    struct {
		start time.Time
		count int64
		by    map[string]int64
	}
}

// New wraps ln.
func New(ln net.Listener, l Limits) *Listener {
	cl := &Listener{Listener: ln, perSource: map[string]int{}}
	cl.SetLimits(l)
	return cl
}

// SetLimits replaces the caps.
func (l *Listener) SetLimits(lim Limits) { l.limits.Store(&lim) }

// Refused returns how many connections were refused since the start.
func (l *Listener) Refused() int64 { return l.refused.Load() }

// Open returns how many connections are held now.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Accept returns the next connection within the caps; those over them are
// closed and counted.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c, ok := l.Admit(c); ok {
			return c, nil
		}
	}
}

// Admit counts c against the caps: within them it returns c wrapped so
// that closing it gives the slot back; over them it closes c (a TCP
// connection with a reset), counts the refusal and returns false. Accept
// admits each connection; a connection that did not come from Accept (a
// stream multiplexed on an accepted one) is admitted the same way.
func (l *Listener) Admit(c net.Conn) (net.Conn, bool) {
	src := sourceOf(c.RemoteAddr())
	if l.take(src) {
		return wrap(c, func() { l.release(src) }), true
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0) // reset: no TIME_WAIT for a refused flood
	}
	c.Close()
	l.refuse(src)
	return nil, false
}

func sourceOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

func (l *Listener) take(src string) bool {
	lim := l.limits.Load()
	l.mu.Lock()
	defer l.mu.Unlock()
	if lim.Total > 0 && l.total >= lim.Total || lim.PerSource > 0 && l.perSource[src] >= lim.PerSource {
		return false
	}
	l.total++
	l.perSource[src]++
	return true
}

func (l *Listener) release(src string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if n := l.perSource[src] - 1; n > 0 {
		l.perSource[src] = n
	} else {
		delete(l.perSource, src)
	}
}

func (l *Listener) refuse(src string) {
	l.refused.Add(1)
	window := l.Window
	if window == 0 {
		window = 10 * time.Second
	}
	now := time.Now()
	l.mu.Lock()
	w := &l.window
	if w.by == nil {
		w.by = map[string]int64{}
		w.start = now
	}
	w.count++
	if len(w.by) < 1024 { // bound the map under a spoofed-source flood
		w.by[src]++
	}
	var report *Refusal
	if now.Sub(w.start) >= window || w.count == 1 {
		r := Refusal{Count: w.count, Total: l.total}
		for s, n := range w.by {
			if n > r.TopCount {
				r.TopSource, r.TopCount = s, n
			}
		}
		report = &r
		w.count, w.by, w.start = 0, map[string]int64{}, now
	}
	l.mu.Unlock()
	if report != nil && l.OnRefuse != nil {
		l.OnRefuse(*report)
	}
}

// tcpConn is an accepted TCP connection that gives its slot back when
// closed. It embeds *net.TCPConn, so ReadFrom/WriteTo (splice) and
// CloseWrite are the real ones.
type tcpConn struct {
	*net.TCPConn
	once    sync.Once
	release func()
}

func (c *tcpConn) Close() error {
	c.once.Do(c.release)
	return c.TCPConn.Close()
}

// Unwrap returns the underlying connection.
func (c *tcpConn) Unwrap() net.Conn { return c.TCPConn }

// RawTCP returns the TCP connection: reads and writes are its own, so a
// copy may splice from it (stream.RawTCPer).
func (c *tcpConn) RawTCP() *net.TCPConn { return c.TCPConn }

// conn is the same for a connection of another kind.
type conn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *conn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// CloseWrite half-closes the connection, when it can.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("connlimit: connection cannot half-close")
}

func wrap(c net.Conn, release func()) net.Conn {
	if tc, ok := c.(*net.TCPConn); ok {
		return &tcpConn{TCPConn: tc, release: release}
	}
	return &conn{Conn: c, release: release}
}
