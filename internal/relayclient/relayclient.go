// Package relayclient is how agents and proxies talk to a relay. Both see
// one interface, Client; this package implements it over hybrid's native
// binary protocol (TCP, optionally TLS) and over Azure Relay's Hybrid
// Connections WebSocket protocol (websocket.go).
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

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wire"
)

// Endpoint is one relay as a client reaches it. The roles fill it from
// their configuration (rules.RelayEndpoint); this package knows no config
// file.
type Endpoint struct {
	// Host is the relay's DNS name or IP address (canonical: lower case, no
	// trailing dot). TLS server names are checked against it.
	Host string
	// Control, Data and HTTP are the native control port, the native data
	// port and the HTTP(S)/WebSocket port.
	Control, Data, HTTP int
	// TLS says whether every connection to the relay uses TLS.
	TLS bool
	// Namespace is the host put in the token URIs the client mints.
	Namespace string
	// RendezvousHosts are the host names, besides Host, that an accept
	// notice's rendezvous address may name (WebSocket transport): an entry
	// starting with "." matches any name ending with it, any other entry
	// only itself. Azure Relay hands out rendezvous addresses on gateway
	// hosts (g<n>-prod-...servicebus.windows.net); hybrid's relay only ever
	// names itself.
	RendezvousHosts []string
}

// Transports: the values WithTransport takes.
const (
	// TransportTCP is hybrid's native binary protocol on the control and
	// data ports.
	TransportTCP = "tcp"
	// TransportWebSocket is Azure Relay's Hybrid Connections protocol on
	// the HTTP(S) port.
	TransportWebSocket = "websocket"
	// TransportAuto is native when the control port answers, WebSocket
	// otherwise.
	TransportAuto = "auto"
)

// Timeouts of the client side.
const (
	// DialTimeout bounds a TCP (and TLS) connect to the relay.
	DialTimeout = 10 * time.Second
	// HandshakeTimeout bounds a control-channel handshake or an attach.
	HandshakeTimeout = 10 * time.Second
	// OpenTimeout bounds the wait for a relay's answer to OPEN: the relay
	// itself waits up to 20 s for the agent to dial the resource and join.
	OpenTimeout = 30 * time.Second
	// PingInterval is how often the client pings an idle control channel;
	// three silent intervals end it.
	PingInterval = 15 * time.Second
)

// StreamID names a stream at the relay.
type StreamID = wire.StreamID

// Accept is a relay's request to serve a stream.
type Accept = wire.Accept

// Client is one relay as agents and proxies see it.
type Client interface {
	// Open opens a stream on hybrid connection hc as a sender. The
	// returned connection carries raw bytes. A refusal is a *status.Error.
	Open(ctx context.Context, hc, token, target string) (net.Conn, error)
	// Listen opens a control channel as an agent named agent.
	Listen(ctx context.Context, agent, version string) (Control, error)
	// Check asks whether token grants right (sas.Listen or sas.Send) on hc,
	// opening nothing. A refusal is a *status.Error.
	Check(ctx context.Context, hc, token string, right sas.Rights) error
	// String names the relay for logs.
	String() string
}

// Control is an agent's control channel to one relay.
type Control interface {
	// Attach starts listening for hc; it waits for the relay's verdict.
	Attach(ctx context.Context, hc, token string) error
	// Renew replaces hc's token.
	Renew(ctx context.Context, hc, token string) error
	// Detach stops listening for hc.
	Detach(hc string) error
	// Events delivers stream requests and detach notices. It is closed when
	// the channel ends.
	Events() <-chan Event
	// Reject refuses a stream request.
	Reject(id StreamID, code status.Code, msg string) error
	// Join opens the agent's side of an accepted stream.
	Join(ctx context.Context, a *Accept, token string) (net.Conn, error)
	// Done is closed when the channel has ended; Err then says why.
	Done() <-chan struct{}
	// Err returns why the channel ended, nil while it is up.
	Err() error
	// Close ends the channel.
	Close() error
}

// Event is one notice from the relay: exactly one field is set.
type Event struct {
	Accept   *Accept
	Detached *Detached
	Dropped  *Dropped
}

// Dropped is an accept notice the client refused to act on, because the
// relay told it to connect somewhere it must not (a WebSocket rendezvous
// address off the relay). Nothing was dialled, not even to reject it.
type Dropped struct {
	Accept  *Accept // what the notice asked for
	Address string  // the address it named, clipped for logs
	Reason  string  // why it was refused
}

// Detached says the relay ended an attachment (revoked key, expired token).
type Detached struct {
	HC  string
	Err error
}

// New returns a client for relay endpoint ep: native protocol by default
// (WithTransport("tcp")), Azure's WebSocket protocol on ep.HTTP with
// WithTransport("websocket"), or with WithTransport("auto") native when the
// control port answers a short probe and WebSocket otherwise.
func New(ep Endpoint, opts ...Option) Client {
	o := options{transport: TransportTCP}
	for _, f := range opts {
		f(&o)
	}
	if o.log == nil {
		o.log = hclog.NewNullLogger()
	}
	if o.probeTimeout == 0 {
		o.probeTimeout = ProbeTimeout
	}
	n := newNative(ep, o)
	switch o.transport {
	case TransportWebSocket:
		return newWS(n)
	case TransportAuto:
		return &auto{native: n, ws: newWS(n), log: o.log, probeTimeout: o.probeTimeout}
	}
	return n
}

type options struct {
	tls          *tls.Config
	proxyURL     string
	transport    string
	log          hclog.Logger
	probeTimeout time.Duration
}

// WithTransport picks the protocol: TransportTCP (the default),
// TransportWebSocket or TransportAuto.
func WithTransport(t string) Option {
	return func(o *options) {
		if t != "" {
			o.transport = t
		}
	}
}

// WithTLSConfig sets the TLS configuration used when the endpoint has TLS
// (for private CAs and tests). Its ServerName defaults to the endpoint host.
func WithTLSConfig(c *tls.Config) Option { return func(o *options) { o.tls = c } }

// WithLogger gives the client a logger (auto mode logs its choice).
func WithLogger(l hclog.Logger) Option { return func(o *options) { o.log = l } }

// WithProbeTimeout sets how long auto mode waits for the native control
// port before it falls back to WebSocket (default ProbeTimeout).
func WithProbeTimeout(d time.Duration) Option { return func(o *options) { o.probeTimeout = d } }

func newNative(ep Endpoint, o options) *native {
	c := &native{ep: ep, proxyURL: o.proxyURL}
	d := &net.Dialer{Timeout: DialTimeout, KeepAlive: 30 * time.Second}
	c.dialTCP = d.DialContext
	if ep.TLS {
		c.tls = &tls.Config{ServerName: ep.Host, MinVersion: tls.VersionTLS12}
		if o.tls != nil {
			c.tls = o.tls.Clone()
			if c.tls.ServerName == "" {
				c.tls.ServerName = ep.Host
			}
		}
	}
	return c
}

type native struct {
	ep Endpoint
	// dialTCP opens every TCP connection the client makes (to the relay, a
	// rendezvous host or a CONNECT proxy): one place to observe them.
	dialTCP  func(ctx context.Context, network, addr string) (net.Conn, error)
	tls      *tls.Config
	proxyURL string // HTTP CONNECT proxy; "" = from the environment
}

func (c *native) String() string {
	return net.JoinHostPort(c.ep.Host, strconv.Itoa(c.ep.Control))
}

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

// handshake sends the preface and f in one write, reads the relay's Result
// without reading past it, and leaves conn in raw mode on success.
func handshake(ctx context.Context, conn net.Conn, f wire.Frame, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	msg := wire.Append([]byte(wire.Preface), f)
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("send %s: %w", f.Type(), err)
	}
	r, err := wire.Read(conn)
	if err != nil {
		if errors.Is(err, wire.ErrBadPreface) || errors.Is(err, wire.ErrMalformed) {
			return err
		}
		return fmt.Errorf("await answer to %s: %w", f.Type(), err)
	}
	res, ok := r.(*wire.Result)
	if !ok {
		return fmt.Errorf("%w: expected RESULT, got %s", wire.ErrMalformed, r.Type())
	}
	if err := res.Err(); err != nil {
		return err
	}
	if !stop() {
		return ctx.Err()
	}
	conn.SetDeadline(time.Time{})
	return nil
}

func (c *native) Open(ctx context.Context, hc, token, target string) (net.Conn, error) {
	conn, err := c.dial(ctx, c.ep.Data)
	if err != nil {
		return nil, err
	}
	if err := handshake(ctx, conn, &wire.Open{HC: hc, Token: token, Target: target}, OpenTimeout); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func (c *native) Check(ctx context.Context, hc, token string, right sas.Rights) error {
	conn, err := c.dial(ctx, c.ep.Data)
	if err != nil {
		return err
	}
	defer conn.Close()
	return handshake(ctx, conn, &wire.Check{HC: hc, Token: token, Right: uint8(right)}, HandshakeTimeout)
}

func (c *native) Listen(ctx context.Context, agent, version string) (Control, error) {
	conn, err := c.dial(ctx, c.ep.Control)
	if err != nil {
		return nil, err
	}
	if err := handshake(ctx, conn, &wire.Hello{Agent: agent, Version: version}, HandshakeTimeout); err != nil {
		conn.Close()
		return nil, err
	}
	ctl := &control{
		client:  c,
		conn:    conn,
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
	client *native
	conn   net.Conn
	out    chan wire.Frame
	events chan Event

	mu      sync.Mutex
	waiters map[string][]chan error // hc → Attach/Renew calls awaiting ATTACHED, in order
	err     error
	once    sync.Once
	done    chan struct{}
}

func (c *control) Events() <-chan Event  { return c.events }
func (c *control) Done() <-chan struct{} { return c.done }

func (c *control) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *control) fail(err error) {
	c.once.Do(func() {
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

func (c *control) Join(ctx context.Context, a *Accept, token string) (net.Conn, error) {
	conn, err := c.client.dial(ctx, c.client.ep.Data)
	if err != nil {
		return nil, err
	}
	if err := handshake(ctx, conn, &wire.Join{ID: a.ID, HC: a.HC, Token: token}, HandshakeTimeout); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func (c *control) readLoop() {
	defer close(c.events)
	br := bufio.NewReader(c.conn)
	for {
		c.conn.SetReadDeadline(time.Now().Add(3 * PingInterval))
		f, err := wire.Read(br)
		if err != nil {
			c.fail(fmt.Errorf("control channel to %s: %w", c.client, err))
			return
		}
		switch f := f.(type) {
		case *wire.Accept:
			select {
			case c.events <- Event{Accept: f}:
			case <-c.done:
				return
			}
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
				select {
				case c.events <- Event{Detached: &Detached{HC: f.HC, Err: err}}:
				case <-c.done:
					return
				}
			}
		case *wire.Ping:
			c.send(&wire.Pong{Nonce: f.Nonce})
		case *wire.Pong:
		default:
			c.fail(fmt.Errorf("control channel to %s: unexpected %s", c.client, f.Type()))
			return
		}
	}
}

func (c *control) writeLoop() {
	ping := time.NewTicker(PingInterval)
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
