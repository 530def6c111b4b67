package relay

import (
	"context"
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
	given sync.Map // net.Conn → struct{}: handed over, not yet seen by connContext
}

func newInjectListener(addr net.Addr) *injectListener {
	return &injectListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// give hands c to the server; false (and c is not taken) once closed.
func (l *injectListener) give(c net.Conn) bool {
	l.given.Store(c, struct{}{}) // before Accept can return it
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		l.given.Delete(c)
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

// pipedKey marks the context of a request on a connection another relay
// handed over.
type pipedKey struct{}

// connContext is the http server's ConnContext: a connection from l is
// marked piped.
func (l *injectListener) connContext(ctx context.Context, c net.Conn) context.Context {
	if _, ok := l.given.LoadAndDelete(c); ok {
		return context.WithValue(ctx, pipedKey{}, true)
	}
	return ctx
}

// piped reports whether a request came on a connection another relay of
// the fleet handed over.
func piped(ctx context.Context) bool {
	v, _ := ctx.Value(pipedKey{}).(bool)
	return v
}
