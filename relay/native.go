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

	"github.com/hybridconn/hybrid/internal/mux"
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
	// writeTimeout bounds one frame write, so a peer that stopped reading
	// cannot stall a writer forever.
	writeTimeout = 10 * time.Second
	// controlQueue bounds the frames waiting to be written on one control
	// channel. A full queue makes stream offers wait (back-pressure); it
	// never closes a channel by itself.
	controlQueue = 256
	// UnattachedTimeout closes a control channel that has not attached any
	// hybrid connection this long after its HELLO: HELLO carries no
	// credentials, so an unauthenticated peer may not hold a channel open.
	UnattachedTimeout = 30 * time.Second
	// keepAlive is the TCP keep-alive period of parked and warm
	// connections, which carry no traffic until a stream comes.
	keepAlive = 15 * time.Second
)

// nativeDoor translates the native binary protocol into calls on the core.
type nativeDoor struct {
	core *Core
	log  hclog.Logger

	// admit counts a multiplexed stream against the data port's
	// connection limits (connlimit.Listener.Admit); nil: no limits.
	admit func(net.Conn) (net.Conn, bool)

	mu    sync.Mutex
	conns map[net.Conn]struct{}     // connections still in their handshake or control loop
	muxes map[*mux.Session]struct{} // multiplexed connections being served
	wg    sync.WaitGroup
}

// muxIdle is how long the relay keeps a multiplexed connection that holds
// no stream (clients close theirs sooner: mux.ClientIdle).
const muxIdle = 2 * time.Minute

func newNativeDoor(core *Core, log hclog.Logger) *nativeDoor {
	return &nativeDoor{core: core, log: log, conns: map[net.Conn]struct{}{}, muxes: map[*mux.Session]struct{}{}}
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
		go d.handle(ctx, conn, h)
	}
}

// handle runs h for conn, which track and wg already count.
func (d *nativeDoor) handle(ctx context.Context, conn net.Conn, h func(context.Context, net.Conn)) {
	defer d.wg.Done()
	defer func() {
		if r := recover(); r != nil {
			d.log.Error("panic in connection handler", "remote", conn.RemoteAddr().String(), "panic", r)
			conn.Close()
		}
	}()
	h(ctx, conn)
}

// serveMux serves a multiplexed connection to the data port: each of its
// streams is served as a data connection of its own would be, and counts
// as one against the connection limits.
func (d *nativeDoor) serveMux(ctx context.Context, conn net.Conn) {
	conn.SetDeadline(time.Time{})
	s, err := mux.Server(conn)
	if err != nil {
		d.refuse(conn, "data", err)
		return
	}
	d.mu.Lock()
	d.muxes[s] = struct{}{}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.muxes, s)
		d.mu.Unlock()
		s.Close()
	}()
	go s.Reap(muxIdle) // ends with the session
	for {
		c, err := s.Accept()
		if err != nil {
			return // the session ended
		}
		var sc net.Conn = c
		if d.admit != nil {
			var ok bool
			if sc, ok = d.admit(c); !ok {
				continue // closed and counted as refused
			}
		}
		d.track(sc, true)
		d.wg.Add(1)
		go d.handle(ctx, sc, func(ctx context.Context, sc net.Conn) { d.serveDataOn(ctx, sc, s) })
	}
}

// retireMux takes every multiplexed connection out of use for new streams
// (the relay is stopping): new streams on them are refused ShuttingDown,
// and their clients open new connections, which reach the relay taking
// over. Streams already on them go on.
func (d *nativeDoor) retireMux() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for s := range d.muxes {
		s.Retire()
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
// and the multiplexed connections, then waits for their handlers.
func (d *nativeDoor) closeAll() {
	d.mu.Lock()
	for c := range d.conns {
		c.Close()
	}
	for s := range d.muxes {
		s.Close()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// handshake reads the preface and first frame under HandshakeTimeout.
func (d *nativeDoor) handshake(conn net.Conn) (wire.Frame, error) {
	conn.SetDeadline(time.Now().Add(HandshakeTimeout))
	if err := wire.ReadPreface(conn); err != nil {
		if errors.Is(err, wire.ErrOldVersion) {
			return nil, status.Errorf(status.Version, "this relay speaks hybrid protocol version 2; upgrade the client")
		}
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
	if errors.Is(err, wire.ErrMux) {
		return &wire.Result{Code: status.BadRequest, Msg: "a multiplexed connection is served only on the data port, and not within another"}
	}
	if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrTooLarge) || errors.Is(err, wire.ErrUnknown) {
		return &wire.Result{Code: status.BadRequest, Msg: err.Error()}
	}
	return &wire.Result{Code: status.Internal, Msg: err.Error()}
}

// writeFrame writes f under writeTimeout.
func writeFrame(conn net.Conn, f wire.Frame) error {
	conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	err := wire.Write(conn, f)
	conn.SetWriteDeadline(time.Time{})
	return err
}

func keepAliveOn(conn net.Conn) {
	if tc := stream.TCPOf(conn); tc != nil {
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(keepAlive)
	}
}

// serveData handles one connection to the data port: an OPEN from a
// sender, a WARM (an OPEN later), a JOIN or a PARK from an agent, a CHECK;
// then raw bytes.
func (d *nativeDoor) serveData(ctx context.Context, conn net.Conn) { d.serveDataOn(ctx, conn, nil) }

// serveDataOn serves a data connection, or a stream of the multiplexed
// connection sess.
func (d *nativeDoor) serveDataOn(ctx context.Context, conn net.Conn, sess *mux.Session) {
	remote := conn.RemoteAddr().String()
	f, err := d.handshake(conn)
	if errors.Is(err, wire.ErrMux) && sess == nil {
		d.track(conn, false)
		d.serveMux(ctx, conn)
		return
	}
	if err != nil {
		d.track(conn, false)
		d.refuse(conn, "data", err)
		return
	}
	if sess != nil && sess.Retired() {
		d.track(conn, false)
		d.refuse(conn, "", status.Errorf(status.ShuttingDown, "relay is stopping: open a new connection"))
		return
	}
	// From here the connection waits for its pairing or its stream; the
	// core tracks it.
	conn.SetDeadline(time.Time{})
	d.track(conn, false)
	// Joins and parks for another relay of the fleet go there whole.
	switch f := f.(type) {
	case *wire.Join:
		if p, ok := d.core.Foreign(f.ID); ok {
			d.pipe(ctx, conn, p, f)
			return
		}
	case *wire.Park:
		if p, ok := d.core.Foreign(f.Session); ok {
			d.pipe(ctx, conn, p, f)
			return
		}
	}
	switch f := f.(type) {
	case *wire.Open:
		d.open(ctx, conn, remote, f)
	case *wire.Warm:
		d.warm(ctx, conn, remote, f)
	case *wire.Check:
		right := sas.Rights(f.Right)
		if right != sas.Listen && right != sas.Send && right != sas.Manage {
			d.refuse(conn, "check", status.Errorf(status.BadRequest, "unknown right %d", f.Right))
			return
		}
		_, err := d.core.authorize(f.HC, f.Token, right, remote)
		writeFrame(conn, resultOf(err))
		conn.Close()
	case *wire.Join:
		d.join(conn, remote, f)
	case *wire.Park:
		d.park(conn, remote, f)
	default:
		d.refuse(conn, "data", status.Errorf(status.BadRequest, "unexpected %s on data port", f.Type()))
	}
}

// open serves a sender's OPEN: pairing, then the core's copy.
func (d *nativeDoor) open(ctx context.Context, conn net.Conn, remote string, f *wire.Open) {
	req := OpenRequest{HC: f.HC, Token: f.Token, Target: f.Target, Remote: remote,
		Early: f.Early, Session: SessionID(f.Session),
		Progress: func() { writeFrame(conn, &wire.Progress{}) }}
	start := time.Now()
	pr, err := d.core.Open(ctx, req)
	d.core.observeOpen(f.HC, remote, start, err)
	if err != nil {
		d.core.stats.StreamsFailed.Add(1)
		d.log.Warn("stream refused", "hc", f.HC, "target", f.Target, "remote", remote, "error", err)
		d.refuse(conn, "", err)
		return
	}
	d.core.Splice(pr, Peer{Conn: conn, Addr: remote, Ready: func() error { return writeFrame(conn, &wire.Result{}) }})
}

// pipe hands a connection for another relay of the fleet to it.
func (d *nativeDoor) pipe(ctx context.Context, conn net.Conn, prefix [4]byte, f wire.Frame) {
	head := wire.Append([]byte(wire.Preface), f)
	peer, err := d.core.fleet.Pipe(ctx, prefix, wire.PipeData, conn.RemoteAddr().String(), head)
	if err != nil {
		d.refuse(conn, "data", status.Errorf(status.NotFound, "%s for another relay of the fleet: %v", f.Type(), err))
		return
	}
	_, parked := f.(*wire.Park)
	d.core.PassThrough(conn, peer, parked)
}

// warm holds a sender's pre-opened connection, tied to its session, until
// its OPEN comes. A session of another relay of the fleet (the proxy's
// control channel landed there) is served here untied: its OPEN still
// links the stream to that session through the fleet.
func (d *nativeDoor) warm(ctx context.Context, conn net.Conn, remote string, f *wire.Warm) {
	s := d.core.sessionByID(SessionID(f.Session))
	_, foreign := d.core.Foreign(f.Session)
	if (s == nil || s.role != RoleSender) && !foreign {
		d.refuse(conn, "warm", status.Errorf(status.NotFound, "no sender session %s here", SessionID(f.Session)))
		return
	}
	if s != nil {
		if err := s.Tie(conn); err != nil {
			d.refuse(conn, "warm", err)
			return
		}
	} else if !d.core.Hold(conn) {
		return
	}
	keepAliveOn(conn)
	next, err := wire.Read(conn) // waits as long as the session lives
	if s != nil {
		s.Untie(conn)
	} else {
		d.core.Release(conn)
	}
	if err != nil {
		conn.Close()
		return
	}
	o, ok := next.(*wire.Open)
	if !ok {
		d.refuse(conn, "warm", status.Errorf(status.BadRequest, "expected OPEN on a warm connection, got %s", next.Type()))
		return
	}
	d.open(ctx, conn, remote, o)
}

// join serves an agent's JOIN: the stream it names takes the connection.
func (d *nativeDoor) join(conn net.Conn, remote string, f *wire.Join) {
	if f.Token == "" {
		// Native agents always prove a listen key on JOIN (a leaked id
		// alone is useless); only Azure's rendezvous omits it.
		d.refuse(conn, "join", status.Errorf(status.Unauthorized, "JOIN without a token"))
		return
	}
	cl, err := d.core.Claim(StreamID(f.ID), f.HC, f.Token, remote)
	if err != nil {
		d.refuse(conn, "join", err)
		return
	}
	cl.Join(Peer{Conn: conn, Addr: remote, Ready: func() error { return writeFrame(conn, &wire.Result{}) }})
}

// nativeParked is an agent's parked data connection.
type nativeParked struct {
	conn net.Conn
	mu   sync.Mutex
	cl   *Claim // set by Offer
}

func (p *nativeParked) Close() error { return p.conn.Close() }

// Offer implements ParkedConn: the accept, with the stream's early data, in
// one write.
func (p *nativeParked) Offer(cl *Claim, acc Accept) error {
	p.mu.Lock()
	p.cl = cl
	p.mu.Unlock()
	return writeFrame(p.conn, &wire.Accept{ID: wire.StreamID(acc.ID), HC: acc.HC, Target: acc.Target,
		SenderKey: acc.SenderKey, SenderAddr: acc.SenderAddr, Early: acc.Early})
}

func (p *nativeParked) claim() *Claim {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cl
}

// park holds an agent's pre-opened connection until the core offers it a
// stream, then reads the agent's answer and hands the connection over.
func (d *nativeDoor) park(conn net.Conn, remote string, f *wire.Park) {
	s := d.core.sessionByID(SessionID(f.Session))
	if s == nil || s.role != RoleAgent {
		d.refuse(conn, "park", status.Errorf(status.NotFound, "no agent session %s here", SessionID(f.Session)))
		return
	}
	p := &nativeParked{conn: conn}
	if err := s.Park(p); err != nil {
		d.refuse(conn, "park", err)
		return
	}
	keepAliveOn(conn)
	for {
		f, err := wire.Read(conn)
		cl := p.claim()
		if err != nil {
			s.Untie(p)
			conn.Close()
			if cl != nil {
				cl.Fail(status.Errorf(status.NoListener, "agent's parked connection ended: %v", err))
			}
			return
		}
		s.Heard()
		if cl == nil {
			s.Untie(p)
			d.refuse(conn, "park", status.Errorf(status.BadRequest, "%s on a parked connection before any ACCEPT", f.Type()))
			return
		}
		switch f := f.(type) {
		case *wire.Ack:
			cl.Ack()
			continue
		case *wire.Result:
			if f.Code != status.OK {
				conn.Close()
				cl.Fail(&status.Error{Code: f.Code, Msg: f.Msg})
				return
			}
			cl.Join(Peer{Conn: conn, Addr: remote, EarlySent: true})
		default:
			conn.Close()
			cl.Fail(status.Errorf(status.BadRequest, "agent sent %s on a parked connection", f.Type()))
		}
		return
	}
}

// sessionByID returns the live session id names, or nil.
func (c *Core) sessionByID(id SessionID) *Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byID[id]
}

// serveControl handles one control channel, an agent's or a sender's.
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
	cfg := d.core.Config()
	welcome := &wire.Welcome{Relay: cfg.RelayID, PingMS: uint32(cfg.PingInterval / time.Millisecond)}
	var role Role
	switch hello.Role {
	case wire.RoleAgent:
		role = RoleAgent
	case wire.RoleSender:
		role = RoleSender
	case wire.RoleProbe:
		if d.core.GoingAway() {
			// A stopping relay must not look usable to a proxy's probe.
			d.refuse(conn, "control", status.Errorf(status.ShuttingDown, "relay is stopping"))
			return
		}
		writeFrame(conn, welcome) // the native protocol answers; nothing more
		conn.Close()
		return
	default:
		d.refuse(conn, "control", status.Errorf(status.BadRequest, "unknown role %d", hello.Role))
		return
	}
	ch := &nativeControl{conn: conn, out: make(chan wire.Frame, controlQueue), done: make(chan struct{})}
	sess, err := d.core.NewSessionRole(ch, role, remote, hello.Name)
	if err != nil {
		d.refuse(conn, "control", err)
		return
	}
	defer sess.Close()
	log := d.log.With("agent", hello.Name, "remote", remote)
	if role == RoleSender {
		log = d.log.With("sender", hello.Name, "remote", remote)
	}
	log.Info("client connected", "role", roleName(role), "version", hello.Version)
	welcome.Session = wire.SessionID(sess.ID())
	welcome.PingMS = uint32(sess.PingInterval() / time.Millisecond)
	if err := wire.Write(conn, welcome); err != nil {
		conn.Close()
		return
	}
	conn.SetDeadline(time.Time{})
	sess.Heard()

	go ch.writeLoop(sess.PingInterval())
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
		// Silence for two ping intervals (the relay pings every one, the
		// client answers) means the client is gone or frozen.
		conn.SetReadDeadline(time.Now().Add(2 * sess.PingInterval()))
		f, err := wire.Read(br)
		if err != nil {
			if stream.IsClosed(err) {
				log.Info("client disconnected", "reason", err)
			} else {
				log.Warn("control channel ended", "error", err)
			}
			return
		}
		sess.Heard()
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
		case *wire.Ack:
			sess.Ack(StreamID(f.ID))
		case *wire.Health:
			sess.Health(f.HC, f.Code, f.Msg)
		case *wire.Ping:
			ch.send(&wire.Pong{Nonce: f.Nonce})
		case *wire.Pong:
		default:
			log.Warn("unexpected frame on control channel; closing", "frame", f.Type().String())
			return
		}
	}
}

func roleName(r Role) string {
	if r == RoleSender {
		return "sender"
	}
	return "agent"
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

// send queues f, waiting up to writeTimeout for room: a client that has not
// read for that long is not taking streams either, and is closed.
func (c *nativeControl) send(f wire.Frame) bool {
	select {
	case c.out <- f:
		return true
	case <-c.done:
		return false
	default:
	}
	t := time.NewTimer(writeTimeout)
	defer t.Stop()
	select {
	case c.out <- f:
		return true
	case <-c.done:
		return false
	case <-t.C:
		c.closeNow()
		return false
	}
}

// Accept implements ListenerConn: it waits for room in the queue as long
// as ctx allows (back-pressure), and never closes the channel for it.
func (c *nativeControl) Accept(ctx context.Context, a Accept) error {
	f := &wire.Accept{ID: wire.StreamID(a.ID), HC: a.HC, Target: a.Target, SenderKey: a.SenderKey, SenderAddr: a.SenderAddr}
	select {
	case c.out <- f:
		return nil
	case <-c.done:
		return errClosed
	case <-ctx.Done():
		return errors.New("control channel queue full")
	}
}

// Detached implements ListenerConn.
func (c *nativeControl) Detached(hc string, why error) { c.send(attachedOf(hc, why)) }

// GoAway implements GoAwayer.
func (c *nativeControl) GoAway(why error) {
	r := resultOf(why)
	select {
	case c.out <- &wire.GoAway{Code: r.Code, Msg: r.Msg}:
	default: // a full queue: the channel's end will say it
	}
}

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

func (c *nativeControl) writeLoop(interval time.Duration) {
	ping := time.NewTicker(interval)
	defer ping.Stop()
	var nonce uint64
	w := func(f wire.Frame) bool {
		if err := writeFrame(c.conn, f); err != nil {
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
