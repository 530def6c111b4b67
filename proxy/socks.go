package proxy

// The SOCKS5 front door (proxy.socks, RFC 1928; proxy.socks_auth, RFC 1929),
// on github.com/armon/go-socks5. The only package that imports it.
//
// One SOCKS connection, in order:
//
//	accept (our loop)            handshake deadline set; at most maxSocksHandshakes at once
//	greeting, auth               socks_auth: constant-time check, else no authentication
//	request                      go-socks5 parses it
//	resolver (keepNames)         a name target stays a name: never resolved on the app side
//	RuleSet.Allow (socksRules)   CONNECT: target canonicalised (internal/endpoint) and
//	                             matched to the one connection whose endpoint it is;
//	                             none -> 0x02 (+ a socks5h hint when an IP was sent);
//	                             BIND, UDP ASSOCIATE -> allowed so go-socks5 answers 0x07
//	Dial (socksDial)             deadline cleared; Open with the connection's endpoint as
//	                             target (the agent checks it again); a refusal -> our own
//	                             reply code (socksReplyFor); success -> socksStream
//	copy                         go-socks5 copies both ways with half-close until both end
//
// go-socks5 traps (see LIBRARIES.md) and what answers each: it resolves names
// locally (keepNames); it asserts the dialled conn's LocalAddr is a
// *net.TCPAddr and panics otherwise (socksStream, plus a recover per
// connection); it maps dial errors to reply codes by their text and can never
// send 0x01 (we send the reply ourselves and mute its own, socksConn); it has
// no timeouts, shutdown or accept-error handling (our accept loop, deadline,
// tracking).

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	socks5 "github.com/armon/go-socks5"
	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/endpoint"
	"github.com/hybridconn/hybrid/internal/limit"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/rules"
)

const (
	// SocksHandshakeTimeout bounds a SOCKS client's greeting, authentication
	// and request: a client that stalls (or a port scanner) must not hold a
	// socket and a goroutine for ever. Opening the stream afterwards has its
	// own bound (relayclient.OpenTimeout); an open stream has none.
	SocksHandshakeTimeout = 10 * time.Second
	// maxSocksHandshakes bounds the SOCKS connections not yet carrying a
	// stream (in their handshake, or waiting for the stream to open); more
	// are closed at once.
	maxSocksHandshakes = 1024
	// socksReplyTimeout bounds the write of our own 10-byte reply.
	socksReplyTimeout = 5 * time.Second
)

// socksReply is a SOCKS5 reply code (RFC 1928 section 6).
type socksReply byte

const (
	socksSucceeded           socksReply = 0x00
	socksGeneralFailure      socksReply = 0x01
	socksNotAllowed          socksReply = 0x02
	socksNetworkUnreachable  socksReply = 0x03
	socksHostUnreachable     socksReply = 0x04
	socksConnectionRefused   socksReply = 0x05
	socksTTLExpired          socksReply = 0x06
	socksCommandNotSupported socksReply = 0x07
	socksAddrTypeUnsupported socksReply = 0x08
)

var socksReplyNames = [...]string{
	socksSucceeded:           "succeeded",
	socksGeneralFailure:      "general SOCKS server failure",
	socksNotAllowed:          "connection not allowed by ruleset",
	socksNetworkUnreachable:  "network unreachable",
	socksHostUnreachable:     "host unreachable",
	socksConnectionRefused:   "connection refused",
	socksTTLExpired:          "TTL expired",
	socksCommandNotSupported: "command not supported",
	socksAddrTypeUnsupported: "address type not supported",
}

func (r socksReply) String() string {
	if int(r) < len(socksReplyNames) {
		return fmt.Sprintf("0x%02x %s", byte(r), socksReplyNames[r])
	}
	return fmt.Sprintf("0x%02x", byte(r))
}

// socksReplyFor maps a failure to open a stream to the reply the SOCKS client
// gets:
//
//	refused by agent (target not published, outside allow)  0x05 connection refused
//	resource unreachable (the agent's dial failed)           0x04 host unreachable
//	relay unreachable, no agent listening, a relay or agent
//	stopping, no answer in time                              0x03 network unreachable
//	anything else (bad key, unknown hybrid connection,
//	busy, protocol, stopping proxy)                          0x01 general failure
func socksReplyFor(err error) socksReply {
	var se *status.Error
	if !errors.As(err, &se) {
		if errors.Is(err, context.Canceled) {
			return socksGeneralFailure // the proxy is stopping
		}
		return socksNetworkUnreachable // no relay could be reached at all
	}
	switch se.Code {
	case status.Refused:
		return socksConnectionRefused
	case status.Unreachable:
		return socksHostUnreachable
	case status.NoListener, status.ShuttingDown, status.Timeout:
		return socksNetworkUnreachable
	default:
		return socksGeneralFailure
	}
}

// socksListener is the SOCKS5 listener of proxy.socks.
type socksListener struct {
	addr string // as configured: a reload with the same text keeps it
	ln   net.Listener
}

// SocksAddr returns the address the SOCKS5 listener is bound to, or "" when
// there is none.
func (p *Proxy) SocksAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.socks == nil {
		return ""
	}
	return p.socks.ln.Addr().String()
}

// socksAcceptLoop accepts SOCKS clients until the listener is closed.
func (p *Proxy) socksAcceptLoop(ctx context.Context, s *socksListener) {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			p.log.Warn("socks: accept failed; backing off", "listen", s.ln.Addr().String(), "error", err)
			select {
			case <-time.After(100 * time.Millisecond):
				continue
			case <-ctx.Done():
				return
			}
		}
		p.mu.Lock()
		running := p.running
		ok := running && len(p.handshakes) < maxSocksHandshakes
		if ok {
			p.handshakes[conn] = struct{}{}
			p.wg.Add(1)
		}
		p.mu.Unlock()
		if !ok {
			if running {
				p.socksBusy.Add(1)
			}
			conn.Close()
			continue
		}
		go func() {
			defer p.wg.Done()
			p.serveSocks(ctx, conn)
		}()
	}
}

// socksMatch is the context key under which socksRules hands the matched
// connection to socksDial.
type socksMatch struct{}

// serveSocks runs one SOCKS connection to its end. A panic (go-socks5 has
// them) ends this connection only.
func (p *Proxy) serveSocks(ctx context.Context, raw net.Conn) {
	client := raw.RemoteAddr().String()
	log := p.log.With("client", client)
	conn := &socksConn{Conn: raw}
	defer func() {
		if r := recover(); r != nil {
			log.Error("socks: panic while serving a connection; closed it", "panic", r, "stack", string(debug.Stack()))
		}
		raw.Close()
		p.mu.Lock()
		delete(p.handshakes, raw)
		p.dropStreamLocked(raw)
		p.mu.Unlock()
	}()
	raw.SetDeadline(time.Now().Add(p.socksTime))
	conf := &socks5.Config{
		Resolver: keepNames{},
		Rules:    socksRules{p: p, log: log, conn: conn},
		Logger:   p.socksLog,
		Dial: func(dctx context.Context, _, _ string) (net.Conn, error) {
			return p.socksDial(ctx, dctx, conn, log)
		},
	}
	if users := p.cfg.Load().SocksAuth; len(users) > 0 {
		creds := newSocksCredentials(users, log)
		creds.failed = func(user string) {
			// Always checked, so a right password always gets in; only
			// wrong ones are slowed and summed in the log.
			v := p.socksFails.Fail(client)
			if v.Log {
				log.Warn("socks: authentication failed", "username", strconv.Quote(user),
					"more_failures_from_source_last_window", v.Suppressed)
			}
			if v.Over {
				time.Sleep(limit.Delay)
			}
		}
		conf.Credentials = creds
	}
	srv, err := socks5.New(conf)
	if err != nil {
		log.Error("socks: cannot serve", "error", err)
		return
	}
	if err := srv.ServeConn(conn); err != nil && !conn.reached.Load() {
		p.socksBad.Add(1)
		log.Debug("socks: handshake failed", "error", err)
	}
}

// keepNames is go-socks5's resolver: it leaves a name target unresolved (nil
// IP), so the name travels to the agent, which alone may resolve it — it may
// not exist in the app side's DNS at all.
type keepNames struct{}

func (keepNames) Resolve(ctx context.Context, _ string) (context.Context, net.IP, error) {
	return ctx, nil, nil
}

// socksRules decides each request locally: go-socks5 answers a denial with
// 0x02 (connection not allowed by ruleset).
type socksRules struct {
	p    *Proxy
	log  hclog.Logger
	conn *socksConn
}

func (r socksRules) Allow(ctx context.Context, req *socks5.Request) (context.Context, bool) {
	r.conn.reached.Store(true)
	if req.Command != socks5.ConnectCommand {
		// go-socks5 answers BIND and UDP ASSOCIATE with 0x07 (command not
		// supported) only when the rules allow them; a denial would read
		// 0x02 and suggest the target was the problem.
		cmd := map[uint8]string{socks5.BindCommand: "BIND", socks5.AssociateCommand: "UDP ASSOCIATE"}[req.Command]
		r.log.Info("socks: refused: only CONNECT is supported", "command", cmd, "reply", socksCommandNotSupported)
		r.p.refused.Add(1)
		r.p.refusedUnmatched(r.conn.RemoteAddr().String(), "unsupported_command", "SOCKS "+cmd+" is not supported, only CONNECT")
		return ctx, true
	}
	c, target, hint := matchSocks(r.p.cfg.Load(), req.DestAddr)
	if c == nil {
		r.p.refused.Add(1)
		r.p.refusedUnmatched(r.conn.RemoteAddr().String(), "no_connection", "SOCKS CONNECT to "+target+": no connection publishes this target")
		args := []any{"target", target, "reply", socksNotAllowed}
		if hint != "" {
			args = append(args, "hint", hint)
		}
		r.log.Warn("socks: refused: no connection publishes this target", args...)
		return ctx, false
	}
	return context.WithValue(ctx, socksMatch{}, c), true
}

// matchSocks finds the connection of cfg whose endpoint a SOCKS target is,
// after the agent's own canonical normalisation. It returns the target as
// text for logs and, when there is no match, perhaps a hint.
func matchSocks(cfg *rules.Proxy, dest *socks5.AddrSpec) (c *rules.ProxyConnection, target, hint string) {
	host := dest.FQDN
	if host == "" && dest.IP != nil {
		host = dest.IP.String()
	}
	raw := net.JoinHostPort(host, strconv.Itoa(dest.Port))
	canon, err := endpoint.Canonical(raw)
	if err != nil {
		return nil, strconv.Quote(raw), "not a valid host:port"
	}
	for i := range cfg.Connections {
		if cfg.Connections[i].Endpoint == canon {
			return &cfg.Connections[i], canon, ""
		}
	}
	if dest.FQDN != "" {
		return nil, canon, ""
	}
	// The client sent an address: if a connection names its endpoint by a
	// name, the app resolved that name itself (to something else).
	var named, samePort string
	for _, pc := range cfg.Connections {
		e, err := endpoint.Parse(pc.Endpoint)
		if err != nil || e.IsIP() {
			continue
		}
		if named == "" {
			named = pc.Endpoint
		}
		if samePort == "" && int(e.Port) == dest.Port {
			samePort = pc.Endpoint
		}
	}
	switch {
	case samePort != "":
		return nil, canon, fmt.Sprintf("the client resolved the name itself: if it meant %s, make it send names to the proxy (remote resolution: socks5h://, curl --socks5-hostname, proxy_dns in proxychains)", samePort)
	case named != "":
		return nil, canon, fmt.Sprintf("connections are published by name (%s, ...): make the client send names to the proxy (remote resolution: socks5h://, curl --socks5-hostname, proxy_dns in proxychains)", named)
	}
	return nil, canon, ""
}

// socksDial opens the stream for a matched CONNECT. runCtx is the proxy's
// (go-socks5's own context can never be cancelled).
func (p *Proxy) socksDial(runCtx, ctx context.Context, conn *socksConn, log hclog.Logger) (net.Conn, error) {
	c, _ := ctx.Value(socksMatch{}).(*rules.ProxyConnection)
	if c == nil { // cannot happen: Allow let it through without a match
		conn.reply(socksGeneralFailure)
		return nil, errors.New("socks: no matched connection")
	}
	// The handshake is complete. Opening may take a while (the agent dials
	// the resource), and the stream then lives as long as the app wants.
	conn.SetDeadline(time.Time{})
	log = log.With("hc", c.Name, "target", c.Endpoint)
	up, err := p.openStream(runCtx, c, nil)
	if err != nil {
		code := socksReplyFor(err)
		p.refused.Add(1)
		log.Error("socks: stream refused", "reply", code, "error", err)
		conn.reply(code)
		return nil, fmt.Errorf("%s: %w", socksReplyNames[code], err)
	}
	local, ok := conn.LocalAddr().(*net.TCPAddr)
	if !ok {
		local = &net.TCPAddr{IP: net.IPv4zero}
	}
	ss := &socksStream{Conn: up, local: local}
	p.mu.Lock()
	if !p.running {
		p.mu.Unlock()
		up.Close()
		conn.reply(socksGeneralFailure)
		return nil, errors.New("socks: the proxy is stopping")
	}
	delete(p.handshakes, conn.Conn)
	p.streams[conn.Conn] = newFlow(c.Name, conn.Conn, &ss.up, &ss.down)
	p.mu.Unlock()
	p.opened.Add(1)
	log.Debug("socks: stream open")
	return ss, nil
}

// socksConn is the client's connection as go-socks5 sees it. Once we have
// sent a reply of our own, go-socks5's (which can never say 0x01, and guesses
// the others from error text) is dropped.
type socksConn struct {
	net.Conn
	muted   atomic.Bool // our reply is sent
	reached atomic.Bool // a complete request was read (the handshake did not fail)
}

func (c *socksConn) Write(b []byte) (int, error) {
	if c.muted.Load() {
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// CloseWrite passes go-socks5's half-close on to the client.
func (c *socksConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// reply sends a failure reply (bound address 0.0.0.0:0) and mutes go-socks5.
func (c *socksConn) reply(code socksReply) {
	c.muted.Store(true)
	c.Conn.SetWriteDeadline(time.Now().Add(socksReplyTimeout))
	c.Conn.Write([]byte{5, byte(code), 0, 1, 0, 0, 0, 0, 0, 0})
}

// socksStream is an open stream as go-socks5 sees it. go-socks5 asserts
// LocalAddr to *net.TCPAddr after a successful dial and panics on anything
// else (a WebSocket stream, a pipe): it gets the SOCKS listener's address,
// which is also the most useful BND.ADDR to tell the client.
type socksStream struct {
	net.Conn
	local    *net.TCPAddr
	up, down atomic.Int64 // bytes written to and read from the relay so far
}

func (s *socksStream) LocalAddr() net.Addr { return s.local }

// Read counts what comes back from the relay (go-socks5 copies with Read
// and Write: the counts run with the stream).
func (s *socksStream) Read(b []byte) (int, error) {
	n, err := s.Conn.Read(b)
	s.down.Add(int64(n))
	return n, err
}

// Write counts what goes to the relay.
func (s *socksStream) Write(b []byte) (int, error) {
	n, err := s.Conn.Write(b)
	s.up.Add(int64(n))
	return n, err
}

// CloseWrite passes go-socks5's half-close on to the stream.
func (s *socksStream) CloseWrite() error {
	if cw, ok := s.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// socksCredentials checks username/password pairs in constant time: every
// user is compared, always, on SHA-256 digests (equal lengths, so
// subtle.ConstantTimeCompare does not return early on a length mismatch).
type socksCredentials struct {
	users  []socksDigest
	log    hclog.Logger
	failed func(user string) // called on a wrong username or password; may be nil
}

type socksDigest struct{ user, pass [sha256.Size]byte }

func newSocksCredentials(users []rules.SocksUser, log hclog.Logger) *socksCredentials {
	c := &socksCredentials{log: log}
	for _, u := range users {
		c.users = append(c.users, socksDigest{sha256.Sum256([]byte(u.Username)), sha256.Sum256([]byte(u.Password))})
	}
	return c
}

func (c *socksCredentials) Valid(user, password string) bool {
	u, pw := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(password))
	ok := 0
	for _, d := range c.users {
		ok |= subtle.ConstantTimeCompare(u[:], d.user[:]) & subtle.ConstantTimeCompare(pw[:], d.pass[:])
	}
	if ok != 1 {
		if c.failed != nil {
			c.failed(user)
		} else {
			c.log.Warn("socks: authentication failed", "username", strconv.Quote(user))
		}
	}
	return ok == 1
}
