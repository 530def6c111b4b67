package relayclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hybridconn/hybrid/internal/mux"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wire"
)

// Timeouts of the client side.
const (
	// DialTimeout bounds a TCP (and TLS) connect to the relay.
	DialTimeout = 10 * time.Second
	// HandshakeTimeout bounds a control-channel handshake or an attach.
	HandshakeTimeout = 10 * time.Second
	// OpenTimeout bounds the wait for a relay's answer to OPEN once it said
	// it is working on it: the agent may be dialling a slow resource.
	OpenTimeout = 30 * time.Second
	// PingInterval is how often the client pings an idle control channel
	// when the relay announced no interval; two silent intervals end it.
	PingInterval = 15 * time.Second
	// keepAlive is the TCP keep-alive period of every connection to the
	// relay (parked and warm ones sit idle).
	keepAlive = 15 * time.Second
)

func newNative(ep Endpoint, o options) *native {
	c := &native{ep: ep, proxyURL: o.proxyURL}
	d := &net.Dialer{Timeout: DialTimeout, KeepAlive: keepAlive}
	c.dialTCP = d.DialContext
	if o.dial != nil {
		c.dialTCP = o.dial
	}
	if ep.TLS {
		c.tls = &tls.Config{ServerName: ep.Host, MinVersion: tls.VersionTLS12}
		if o.tls != nil {
			c.tls = o.tls.Clone()
			if c.tls.ServerName == "" {
				c.tls.ServerName = ep.Host
			}
		}
		// Full-size records from the first byte (see the relay's config).
		c.tls.DynamicRecordSizingDisabled = true
		if c.tls.ClientSessionCache == nil {
			// Resumed handshakes (tickets) make new connections cheaper.
			c.tls.ClientSessionCache = tls.NewLRUClientSessionCache(64)
		}
		if !o.noMux {
			// On TLS, every data connection (stream, parked, warm) is a
			// stream of one multiplexed connection: no TLS handshake per
			// stream (docs/performance.md).
			c.mux = &mux.Dialer{Dial: c.dialMux}
		}
	}
	return c
}

// dialMux opens a multiplexed connection to the data port.
func (c *native) dialMux(ctx context.Context) (net.Conn, error) {
	conn, err := c.dial(ctx, c.ep.Data)
	if err != nil {
		return nil, err
	}
	conn.SetWriteDeadline(deadlineOf(ctx, HandshakeTimeout))
	if _, err := conn.Write([]byte(wire.MuxPreface)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("relay %s: mux preface: %w", c, err)
	}
	conn.SetWriteDeadline(time.Time{})
	return conn, nil
}

// dialData opens a connection for one stream (or a parked or warm
// connection) to the data port: a stream of the multiplexed connection
// on TLS, a TCP connection of its own otherwise.
func (c *native) dialData(ctx context.Context) (net.Conn, error) {
	if c.mux != nil {
		mc, err := c.mux.Open(ctx)
		if err != nil {
			return nil, err
		}
		return mc, nil
	}
	return c.dial(ctx, c.ep.Data)
}

// retireOn takes conn's multiplexed connection out of use for new streams
// when err says the relay process it reached is stopping or does not know
// what the stream named (a relay restarting in place: the new process
// has it): the next stream goes on a new connection, which reaches the
// process that listens now.
func retireOn(conn net.Conn, err error) {
	switch status.CodeOf(err) {
	case status.ShuttingDown, status.NotFound:
		mux.RetireSessionOf(conn)
	}
}

type native struct {
	ep Endpoint
	// dialTCP opens every TCP connection the client makes (to the relay, a
	// rendezvous host or a CONNECT proxy): one place to observe them.
	dialTCP  func(ctx context.Context, network, addr string) (net.Conn, error)
	tls      *tls.Config
	proxyURL string      // HTTP CONNECT proxy; "" = from the environment
	mux      *mux.Dialer // data connections on TLS; nil: one TCP connection each
}

func (c *native) String() string {
	return net.JoinHostPort(c.ep.Host, strconv.Itoa(c.ep.Control))
}

func (c *native) Transport() string { return TransportTCP }

func (c *native) dial(ctx context.Context, port int) (net.Conn, error) {
	return c.dialHost(ctx, c.ep.Host, port)
}

// dialHost connects to host:port directly or through the proxy, with TLS
// (server name host) when the endpoint uses TLS.
func (c *native) dialHost(ctx context.Context, host string, port int) (net.Conn, error) {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	proxy, err := c.proxyFor(addr)
	if err != nil {
		return nil, err
	}
	var conn net.Conn
	if proxy != nil {
		conn, err = c.dialProxy(ctx, proxy, addr)
	} else {
		conn, err = c.dialTCP(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("relay %s: %w", addr, err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if c.tls == nil {
		return conn, nil
	}
	cfg := c.tls
	if host != c.ep.Host {
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	tc := tls.Client(conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("relay %s: tls: %w", addr, err)
	}
	return tc, nil
}

// deadlineOf is the earlier of now+timeout and ctx's deadline.
func deadlineOf(ctx context.Context, timeout time.Duration) time.Time {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return deadline
}

// exchange writes msg (preface and/or frames) and reads the relay's
// frames until a RESULT, without reading past it, under timeout (extended
// to OpenTimeout by each PROGRESS). Any other frame than those in also is
// an error; a frame in also is returned instead of a RESULT. On success
// conn is left without deadlines, in raw mode.
func exchange(ctx context.Context, conn net.Conn, msg []byte, what wire.Type, timeout time.Duration, also ...wire.Type) (wire.Frame, error) {
	conn.SetDeadline(deadlineOf(ctx, timeout))
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(msg); err != nil {
		return nil, fmt.Errorf("send %s: %w", what, err)
	}
	for {
		r, err := wire.Read(conn)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(err, wire.ErrMalformed) {
				return nil, err
			}
			return nil, fmt.Errorf("await answer to %s: %w", what, err)
		}
		if _, ok := r.(*wire.Progress); ok && what == wire.TypeOpen {
			conn.SetReadDeadline(deadlineOf(ctx, OpenTimeout))
			continue
		}
		for _, t := range also {
			if r.Type() == t {
				return finish(ctx, conn, stop, r)
			}
		}
		res, ok := r.(*wire.Result)
		if !ok {
			return nil, fmt.Errorf("%w: expected RESULT to %s, got %s", wire.ErrMalformed, what, r.Type())
		}
		if err := res.Err(); err != nil {
			return nil, err
		}
		return finish(ctx, conn, stop, r)
	}
}

func finish(ctx context.Context, conn net.Conn, stop func() bool, f wire.Frame) (wire.Frame, error) {
	if !stop() {
		return nil, ctx.Err()
	}
	conn.SetDeadline(time.Time{})
	return f, nil
}

// handshake sends the preface and f in one write and awaits the RESULT.
func handshake(ctx context.Context, conn net.Conn, f wire.Frame, timeout time.Duration) error {
	_, err := exchange(ctx, conn, wire.Append([]byte(wire.Preface), f), f.Type(), timeout)
	return err
}

func (c *native) Open(ctx context.Context, hc, token, target string) (net.Conn, error) {
	return c.OpenStream(ctx, OpenRequest{HC: hc, Token: token, Target: target})
}

func (c *native) OpenStream(ctx context.Context, req OpenRequest) (net.Conn, error) {
	var conn net.Conn
	var msg []byte
	if req.Warm != nil {
		conn = req.Warm.conn
	} else {
		var err error
		if conn, err = c.dialData(ctx); err != nil {
			return nil, err
		}
		msg = []byte(wire.Preface)
	}
	msg = wire.Append(msg, &wire.Open{HC: req.HC, Token: req.Token, Target: req.Target, Session: req.Session, Early: req.Early})
	timeout := req.FirstAnswer
	if timeout <= 0 {
		timeout = OpenTimeout
	}
	if _, err := exchange(ctx, conn, msg, wire.TypeOpen, timeout); err != nil {
		retireOn(conn, err)
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func (c *native) Check(ctx context.Context, hc, token string, right sas.Rights) error {
	conn, err := c.dialData(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return handshake(ctx, conn, &wire.Check{HC: hc, Token: token, Right: uint8(right)}, HandshakeTimeout)
}

// Probe asks the control port whether it speaks hybrid's native protocol:
// a WELCOME (or any RESULT) answers yes; a TCP or TLS connection that says
// anything else (another protocol on the port, such as AMQP on Azure's
// 5671) answers no.
func (c *native) Probe(ctx context.Context) error {
	conn, err := c.dial(ctx, c.ep.Control)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = exchange(ctx, conn, wire.Append([]byte(wire.Preface), &wire.Hello{Role: wire.RoleProbe}),
		wire.TypeHello, HandshakeTimeout, wire.TypeWelcome)
	var se *status.Error
	if errors.As(err, &se) {
		return nil // a refusal in our protocol is still our protocol
	}
	return err
}

func (c *native) Listen(ctx context.Context, name, version string) (Control, error) {
	return c.control(ctx, wire.RoleAgent, name, version)
}

func (c *native) Connect(ctx context.Context, name, version string) (Control, error) {
	return c.control(ctx, wire.RoleSender, name, version)
}

func (c *native) control(ctx context.Context, role wire.Role, name, version string) (Control, error) {
	conn, err := c.dial(ctx, c.ep.Control)
	if err != nil {
		return nil, err
	}
	f, err := exchange(ctx, conn, wire.Append([]byte(wire.Preface), &wire.Hello{Role: role, Name: name, Version: version}),
		wire.TypeHello, HandshakeTimeout, wire.TypeWelcome)
	if err != nil {
		conn.Close()
		return nil, err
	}
	w, ok := f.(*wire.Welcome)
	if !ok { // a RESULT ok: a relay that accepted without a session
		conn.Close()
		return nil, fmt.Errorf("%w: relay %s answered HELLO without WELCOME", wire.ErrMalformed, c)
	}
	ping := time.Duration(w.PingMS) * time.Millisecond
	if ping <= 0 {
		ping = PingInterval
	}
	ctl := &control{
		client:  c,
		conn:    conn,
		session: w.Session,
		ping:    ping,
		out:     make(chan wire.Frame, 64),
		events:  make(chan Event, 64),
		done:    make(chan struct{}),
		waiters: map[string][]chan error{},
	}
	go ctl.readLoop()
	go ctl.writeLoop()
	return ctl, nil
}

type control struct {
	client  *native
	conn    net.Conn
	session SessionID
	ping    time.Duration
	out     chan wire.Frame
	events  chan Event

	mu      sync.Mutex
	waiters map[string][]chan error // hc → Attach/Renew calls awaiting ATTACHED, in order
	err     error
	once    sync.Once
	done    chan struct{}
}

func (c *control) Events() <-chan Event  { return c.events }
func (c *control) Done() <-chan struct{} { return c.done }
func (c *control) Session() SessionID    { return c.session }
func (c *control) Transport() string     { return TransportTCP }

func (c *control) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *control) fail(err error) {
	c.once.Do(func() {
		if c.client.mux != nil && !errors.Is(err, net.ErrClosed) {
			// The relay may be gone (a host down sends no reset, and a
			// multiplexed connection would take new streams into the void
			// until its keep-alive gives up): new streams go on a new
			// connection. One that lives carries its streams on.
			c.client.mux.Retire()
		}
		c.mu.Lock()
		c.err = err
		for hc, ws := range c.waiters {
			for _, w := range ws {
				w <- err
			}
			delete(c.waiters, hc)
		}
		c.mu.Unlock()
		close(c.done)
		c.conn.Close()
	})
}

func (c *control) Close() error {
	c.fail(net.ErrClosed)
	return nil
}

func (c *control) send(f wire.Frame) error {
	select {
	case c.out <- f:
		return nil
	case <-c.done:
		return fmt.Errorf("control channel to %s: %w", c.client, c.Err())
	}
}

func (c *control) attach(ctx context.Context, f wire.Frame, hc string) error {
	w := make(chan error, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.waiters[hc] = append(c.waiters[hc], w)
	c.mu.Unlock()
	if err := c.send(f); err != nil {
		return err
	}
	t := time.NewTimer(HandshakeTimeout)
	defer t.Stop()
	select {
	case err := <-w:
		return err
	case <-t.C:
		c.fail(fmt.Errorf("relay %s did not answer %s for %q within %s", c.client, f.Type(), hc, HandshakeTimeout))
		return c.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *control) Attach(ctx context.Context, hc, token string) error {
	return c.attach(ctx, &wire.Attach{HC: hc, Token: token}, hc)
}

func (c *control) Renew(ctx context.Context, hc, token string) error {
	return c.attach(ctx, &wire.Renew{HC: hc, Token: token}, hc)
}

func (c *control) Detach(hc string) error { return c.send(&wire.Detach{HC: hc}) }

func (c *control) Reject(id StreamID, code status.Code, msg string) error {
	return c.send(&wire.Reject{ID: id, Code: code, Msg: msg})
}

func (c *control) Ack(id StreamID) error { return c.send(&wire.Ack{ID: id}) }

func (c *control) Health(hc string, code status.Code, msg string) error {
	return c.send(&wire.Health{HC: hc, Code: code, Msg: msg})
}

// joinTries is how many times a JOIN is sent when the relay does not know
// the stream: while a relay restarts in place, the old and the new process
// both listen on the data port, and a JOIN for the new one's stream may
// land on the old one; the next lands on either.
const joinTries = 3

func (c *control) Join(ctx context.Context, a *Accept, token string) (net.Conn, error) {
	for try := 1; ; try++ {
		conn, err := c.client.dialData(ctx)
		if err != nil {
			return nil, err
		}
		err = handshake(ctx, conn, &wire.Join{ID: a.ID, HC: a.HC, Token: token}, HandshakeTimeout)
		if err == nil {
			return conn, nil
		}
		retireOn(conn, err)
		conn.Close()
		if code := status.CodeOf(err); try < joinTries && ctx.Err() == nil && (code == status.NotFound || code == status.ShuttingDown) {
			continue
		}
		return nil, err
	}
}

// Parked is a data connection an agent parked at the relay: the relay sends
// a stream's ACCEPT down it when one comes.
type Parked struct {
	conn net.Conn
}

// Park implements Control.
func (c *control) Park(ctx context.Context) (*Parked, error) {
	conn, err := c.client.dialData(ctx)
	if err != nil {
		return nil, err
	}
	conn.SetWriteDeadline(deadlineOf(ctx, HandshakeTimeout))
	if _, err := conn.Write(wire.Append([]byte(wire.Preface), &wire.Park{Session: c.session})); err != nil {
		conn.Close()
		return nil, fmt.Errorf("park at %s: %w", c.client, err)
	}
	conn.SetWriteDeadline(time.Time{})
	return &Parked{conn: conn}, nil
}

// Next waits until the relay offers a stream on the connection (or the
// connection ends). A refusal of the park itself (an unknown session, a
// full pool) comes back as a *status.Error.
func (p *Parked) Next() (*Accept, error) {
	f, err := wire.Read(p.conn)
	if err != nil {
		return nil, err
	}
	switch f := f.(type) {
	case *wire.Accept:
		return f, nil
	case *wire.Result:
		if err := f.Err(); err != nil {
			retireOn(p.conn, err)
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: %s on a parked connection", wire.ErrMalformed, f.Type())
}

// Ack tells the relay the agent is dialling (the dial is slow).
func (p *Parked) Ack(id StreamID) error {
	p.conn.SetWriteDeadline(time.Now().Add(HandshakeTimeout))
	defer p.conn.SetWriteDeadline(time.Time{})
	return wire.Write(p.conn, &wire.Ack{ID: id})
}

// Refuse answers the offered stream with a refusal and closes the
// connection.
func (p *Parked) Refuse(code status.Code, msg string) {
	p.conn.SetWriteDeadline(time.Now().Add(HandshakeTimeout))
	wire.Write(p.conn, &wire.Result{Code: code, Msg: msg})
	p.conn.Close()
}

// Ready accepts the offered stream: from now on the connection carries its
// raw bytes.
func (p *Parked) Ready() (net.Conn, error) {
	p.conn.SetWriteDeadline(time.Now().Add(HandshakeTimeout))
	err := wire.Write(p.conn, &wire.Result{})
	p.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		p.conn.Close()
		return nil, err
	}
	return p.conn, nil
}

// Close gives the connection up.
func (p *Parked) Close() error { return p.conn.Close() }

// Warm is a sender's pre-opened data connection: an OpenStream on it costs
// no connection (and no TLS handshake) of its own.
type Warm struct {
	conn net.Conn
}

// Warm implements Control.
func (c *control) Warm(ctx context.Context) (*Warm, error) {
	conn, err := c.client.dialData(ctx)
	if err != nil {
		return nil, err
	}
	conn.SetWriteDeadline(deadlineOf(ctx, HandshakeTimeout))
	if _, err := conn.Write(wire.Append([]byte(wire.Preface), &wire.Warm{Session: c.session})); err != nil {
		conn.Close()
		return nil, fmt.Errorf("warm at %s: %w", c.client, err)
	}
	conn.SetWriteDeadline(time.Time{})
	return &Warm{conn: conn}, nil
}

// Close gives the connection up.
func (w *Warm) Close() error { return w.conn.Close() }

func (c *control) readLoop() {
	defer close(c.events)
	br := bufio.NewReader(c.conn)
	for {
		// The relay pings every interval: two silent ones mean it is gone
		// or frozen.
		c.conn.SetReadDeadline(time.Now().Add(2 * c.ping))
		f, err := wire.Read(br)
		if err != nil {
			c.fail(fmt.Errorf("control channel to %s: %w", c.client, err))
			return
		}
		var ev *Event
		switch f := f.(type) {
		case *wire.Accept:
			ev = &Event{Accept: f}
		case *wire.GoAway:
			ev = &Event{GoAway: &status.Error{Code: f.Code, Msg: f.Msg}}
		case *wire.Attached:
			c.mu.Lock()
			var w chan error
			if ws := c.waiters[f.HC]; len(ws) > 0 {
				w = ws[0]
				if len(ws) == 1 {
					delete(c.waiters, f.HC)
				} else {
					c.waiters[f.HC] = ws[1:]
				}
			}
			c.mu.Unlock()
			var err error
			if f.Code != status.OK {
				err = &status.Error{Code: f.Code, Msg: f.Msg}
			}
			if w != nil {
				w <- err
			} else if err != nil {
				ev = &Event{Detached: &Detached{HC: f.HC, Err: err}}
			}
		case *wire.Ping:
			c.send(&wire.Pong{Nonce: f.Nonce})
		case *wire.Pong:
		default:
			c.fail(fmt.Errorf("control channel to %s: unexpected %s", c.client, f.Type()))
			return
		}
		if ev != nil {
			select {
			case c.events <- *ev:
			case <-c.done:
				return
			}
		}
	}
}

func (c *control) writeLoop() {
	ping := time.NewTicker(c.ping)
	defer ping.Stop()
	var nonce uint64
	for {
		var f wire.Frame
		select {
		case <-c.done:
			return
		case f = <-c.out:
		case <-ping.C:
			nonce++
			f = &wire.Ping{Nonce: nonce}
		}
		c.conn.SetWriteDeadline(time.Now().Add(HandshakeTimeout))
		if err := wire.Write(c.conn, f); err != nil {
			c.fail(fmt.Errorf("control channel to %s: %w", c.client, err))
			return
		}
	}
}
