package relay

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/stream"
	"github.com/hybridconn/hybrid/internal/wire"
)

// Timeouts of the native front door.
const (
	// HandshakeTimeout bounds the preface and first frame of every
	// connection: a slow or silent peer is dropped rather than holding a
	// goroutine and a file descriptor.
	HandshakeTimeout = 10 * time.Second
	// PingInterval is how often each side pings an idle control channel;
	// three missed intervals end it. 15 s keeps NAT and firewall state alive.
	PingInterval = 15 * time.Second
	// writeTimeout bounds one frame write, so a peer that stopped reading
	// cannot stall a writer forever.
	writeTimeout = 10 * time.Second
	// controlQueue bounds the frames waiting to be written on one control
	// channel; an agent that falls this far behind is not taking streams.
	controlQueue = 256
	// UnattachedTimeout closes a control channel that has not attached any
	// hybrid connection this long after its HELLO: HELLO carries no
	// credentials, so an unauthenticated peer may not hold a channel open.
	UnattachedTimeout = 30 * time.Second
)

// nativeDoor translates the native binary protocol into calls on the core.
type nativeDoor struct {
	core *Core
	log  hclog.Logger

	mu    sync.Mutex
	conns map[net.Conn]struct{} // connections still in their handshake or control loop
	wg    sync.WaitGroup
}

func newNativeDoor(core *Core, log hclog.Logger) *nativeDoor {
	return &nativeDoor{core: core, log: log, conns: map[net.Conn]struct{}{}}
}

// serve accepts connections from ln until it is closed, handing each to h.
func (d *nativeDoor) serve(ctx context.Context, ln net.Listener, h func(context.Context, net.Conn)) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			d.log.Warn("accept failed; backing off", "listener", ln.Addr().String(), "error", err)
			select { // e.g. EMFILE: don't spin
			case <-time.After(100 * time.Millisecond):
				continue
			case <-ctx.Done():
				return nil
			}
		}
		d.track(conn, true)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer func() {
				if r := recover(); r != nil {
					d.log.Error("panic in connection handler", "remote", conn.RemoteAddr().String(), "panic", r)
					conn.Close()
				}
			}()
			h(ctx, conn)
		}()
	}
}

func (d *nativeDoor) track(c net.Conn, add bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if add {
		d.conns[c] = struct{}{}
	} else {
		delete(d.conns, c)
	}
}

// closeAll closes the connections still handshaking or on a control loop,
// then waits for their handlers.
func (d *nativeDoor) closeAll() {
	d.mu.Lock()
	for c := range d.conns {
		c.Close()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// handshake reads the preface and first frame under HandshakeTimeout.
func (d *nativeDoor) handshake(conn net.Conn) (wire.Frame, error) {
	conn.SetDeadline(time.Now().Add(HandshakeTimeout))
	if err := wire.ReadPreface(conn); err != nil {
		return nil, err
	}
	return wire.Read(conn)
}

// refuse answers err to the peer (unless it is not speaking our protocol or
// already gone) and closes conn. If what is not empty, it is logged too.
func (d *nativeDoor) refuse(conn net.Conn, what string, err error) {
	if what != "" {
		if stream.IsClosed(err) || errors.Is(err, io.ErrUnexpectedEOF) {
			// A port probe or a peer that gave up: not worth a warning.
			d.log.Debug("peer left during handshake", "port", what, "remote", conn.RemoteAddr().String(), "error", err)
		} else {
			d.log.Warn("refused "+what+" connection", "remote", conn.RemoteAddr().String(), "error", err)
		}
	}
	if !errors.Is(err, wire.ErrBadPreface) && !stream.IsClosed(err) && !errors.Is(err, io.ErrUnexpectedEOF) {
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		wire.Write(conn, resultOf(err))
	}
	conn.Close()
}

func resultOf(err error) *wire.Result {
	if err == nil {
		return &wire.Result{}
	}
	var se *status.Error
	if errors.As(err, &se) {
		return &wire.Result{Code: se.Code, Msg: se.Msg}
	}
	if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrTooLarge) || errors.Is(err, wire.ErrUnknown) {
		return &wire.Result{Code: status.BadRequest, Msg: err.Error()}
	}
	return &wire.Result{Code: status.Internal, Msg: err.Error()}
}

// serveData handles one connection to the data port: an OPEN from a sender
// or a JOIN from an agent, then raw bytes.
func (d *nativeDoor) serveData(ctx context.Context, conn net.Conn) {
	remote := conn.RemoteAddr().String()
	f, err := d.handshake(conn)
	if err != nil {
		d.track(conn, false)
		d.refuse(conn, "data", err)
		return
	}
	// From here the connection waits for its pairing; the core tracks it.
	conn.SetDeadline(time.Time{})
	d.track(conn, false)
	ready := func() error {
		conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		err := wire.Write(conn, &wire.Result{})
		conn.SetWriteDeadline(time.Time{})
		return err
	}
	peer := Peer{Conn: conn, Ready: ready, Addr: remote}
	switch f := f.(type) {
	case *wire.Open:
		pr, err := d.core.Open(ctx, OpenRequest{HC: f.HC, Token: f.Token, Target: f.Target, Remote: remote})
		if err != nil {
			d.core.stats.StreamsFailed.Add(1)
			d.log.Warn("stream refused", "hc", f.HC, "target", f.Target, "remote", remote, "error", err)
			d.refuse(conn, "", err)
			return
		}
		d.core.Splice(pr, peer)
	case *wire.Check:
		right := sas.Rights(f.Right)
		if right != sas.Listen && right != sas.Send && right != sas.Manage {
			d.refuse(conn, "check", status.Errorf(status.BadRequest, "unknown right %d", f.Right))
			return
		}
		_, err := d.core.authorize(f.HC, f.Token, right, remote)
		conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		wire.Write(conn, resultOf(err))
		conn.Close()
	case *wire.Join:
		if f.Token == "" {
			// Native agents always prove a listen key on JOIN (a leaked id
			// alone is useless); only Azure's rendezvous omits it.
			d.refuse(conn, "join", status.Errorf(status.Unauthorized, "JOIN without a token"))
			return
		}
		if err := d.core.Join(StreamID(f.ID), f.HC, f.Token, peer); err != nil {
			d.refuse(conn, "join", err)
		}
	default:
		d.refuse(conn, "data", status.Errorf(status.BadRequest, "unexpected %s on data port", f.Type()))
	}
}

// serveControl handles one agent control channel.
func (d *nativeDoor) serveControl(ctx context.Context, conn net.Conn) {
	defer d.track(conn, false)
	remote := conn.RemoteAddr().String()
	f, err := d.handshake(conn)
	if err != nil {
		d.refuse(conn, "control", err)
		return
	}
	hello, ok := f.(*wire.Hello)
	if !ok {
		d.refuse(conn, "control", status.Errorf(status.BadRequest, "expected HELLO, got %s", f.Type()))
		return
	}
	ch := &nativeControl{conn: conn, out: make(chan wire.Frame, controlQueue), done: make(chan struct{})}
	sess, err := d.core.NewSession(ch, remote, hello.Agent)
	if err != nil {
		d.refuse(conn, "control", err)
		return
	}
	defer sess.Close()
	log := d.log.With("agent", hello.Agent, "remote", remote)
	log.Info("agent connected", "version", hello.Version)
	if err := wire.Write(conn, &wire.Result{}); err != nil {
		conn.Close()
		return
	}
	conn.SetDeadline(time.Time{})

	go ch.writeLoop()
	defer ch.Close(nil)
	idle := time.AfterFunc(UnattachedTimeout, func() {
		if sess.attachedCount() == 0 {
			log.Warn("closing control channel: nothing attached", "after", UnattachedTimeout)
			ch.Close(nil)
		}
	})
	defer idle.Stop()

	br := bufio.NewReader(conn)
	for {
		conn.SetReadDeadline(time.Now().Add(3 * PingInterval))
		f, err := wire.Read(br)
		if err != nil {
			if stream.IsClosed(err) {
				log.Info("agent disconnected")
			} else {
				log.Warn("control channel ended", "error", err)
			}
			return
		}
		switch f := f.(type) {
		case *wire.Attach:
			err := sess.Attach(f.HC, f.Token)
			ch.send(attachedOf(f.HC, err))
		case *wire.Renew:
			err := sess.Renew(f.HC, f.Token)
			ch.send(attachedOf(f.HC, err))
		case *wire.Detach:
			sess.Detach(f.HC)
		case *wire.Reject:
			sess.Reject(StreamID(f.ID), f.Code, f.Msg)
		case *wire.Ping:
			ch.send(&wire.Pong{Nonce: f.Nonce})
		case *wire.Pong:
		default:
			log.Warn("unexpected frame on control channel; closing", "frame", f.Type().String())
			return
		}
	}
}

func attachedOf(hc string, err error) *wire.Attached {
	r := resultOf(err)
	return &wire.Attached{HC: hc, Code: r.Code, Msg: r.Msg}
}

// nativeControl is the core's handle on a native control channel.
type nativeControl struct {
	conn net.Conn
	out  chan wire.Frame
	once sync.Once
	done chan struct{}
}

func (c *nativeControl) send(f wire.Frame) bool {
	select {
	case c.out <- f:
		return true
	case <-c.done:
		return false
	default:
		// The agent is not reading: it cannot serve streams either.
		c.closeNow() // and there is no room to say why
		return false
	}
}

// Accept implements ListenerConn.
func (c *nativeControl) Accept(a Accept) error {
	if !c.send(&wire.Accept{ID: wire.StreamID(a.ID), HC: a.HC, Target: a.Target, SenderKey: a.SenderKey, SenderAddr: a.SenderAddr}) {
		return status.Errorf(status.NoListener, "control channel closed")
	}
	return nil
}

// Detached implements ListenerConn.
func (c *nativeControl) Detached(hc string, why error) { c.send(attachedOf(hc, why)) }

// Close implements ListenerConn. With a reason, frames already queued (such
// as the ATTACHED that says why) are written first, for at most a second.
func (c *nativeControl) Close(why error) {
	if why != nil {
		select {
		case c.out <- closeFrame{}:
			time.AfterFunc(time.Second, c.closeNow)
			return
		default:
		}
	}
	c.closeNow()
}

func (c *nativeControl) closeNow() {
	c.once.Do(func() {
		close(c.done)
		c.conn.Close()
	})
}

// closeFrame is a marker in the write queue: close once it is reached.
type closeFrame struct{ wire.Frame }

func (c *nativeControl) writeLoop() {
	ping := time.NewTicker(PingInterval)
	defer ping.Stop()
	var nonce uint64
	w := func(f wire.Frame) bool {
		c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		if err := wire.Write(c.conn, f); err != nil {
			c.closeNow()
			return false
		}
		return true
	}
	for {
		select {
		case <-c.done:
			return
		case f := <-c.out:
			if _, ok := f.(closeFrame); ok {
				c.closeNow()
				return
			}
			if !w(f) {
				return
			}
		case <-ping.C:
			nonce++
			if !w(&wire.Ping{Nonce: nonce}) {
				return
			}
		}
	}
}
