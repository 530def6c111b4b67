package relay

import (
	"net"
	"sync"
)

// injectListener is a net.Listener fed by hand: the fleet hands it HTTP
// connections that landed on another relay, and the http server serves
// them as its own.
type injectListener struct {
	addr  net.Addr
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func newInjectListener(addr net.Addr) *injectListener {
	return &injectListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// give hands c to the server; false (and c is not taken) once closed.
func (l *injectListener) give(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *injectListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *injectListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *injectListener) Addr() net.Addr { return l.addr }
