// Package fleet joins relays into a fleet behind one public address: a
// directory in Redis says which relay has listeners for which hybrid
// connection, and relays carry streams, joins, parks and rendezvous that
// landed on the wrong one to the right one over authenticated
// relay-to-relay connections. It is the only package that imports Redis;
// the relay's core sees it through relay.Fleet.
//
// A stream whose sender and agent are on the same relay never touches the
// fleet. Without Redis, each relay goes on pairing its own agents and
// senders; only cross-relay streams fail, saying why.
package fleet

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/limit"
	"github.com/hybridconn/hybrid/internal/safefile"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/stream"
	"github.com/hybridconn/hybrid/internal/wire"
	"github.com/hybridconn/hybrid/relay"
	"github.com/hybridconn/hybrid/rules"
)

// Timing of forwarded streams.
const (
	// firstAnswer bounds the wait for a peer's first word on a forwarded
	// open; a PROGRESS extends it to openTimeout.
	firstAnswer = 3 * time.Second
	openTimeout = 30 * time.Second
)

// Local is the relay a fleet serves (*relay.Server).
type Local interface {
	Core() *relay.Core
	ServePeerOpen(ctx context.Context, conn net.Conn, f *wire.PeerOpen)
	ServeDataConn(ctx context.Context, conn net.Conn)
	ServeHTTPConn(conn net.Conn) bool
}

// Fleet is one relay's membership of a fleet. It implements relay.Fleet.
type Fleet struct {
	id     string
	prefix [4]byte
	listen string
	log    hclog.Logger
	local  Local
	auth   *auth
	peers  *pool
	dir    *directory

	mu    sync.Mutex
	conns map[net.Conn]struct{} // peer connections being served
	wg    sync.WaitGroup

	// handshakes bounds the peer connections being authenticated at once:
	// the peer port is reachable from the relays' network, and what
	// connects to it without the fleet's credential must cost a bounded
	// amount, as must its log lines (fails: one line per source per
	// limit.Window).
	handshakes chan struct{}
	fails      *limit.Failures
}

// maxPeerHandshakes is how many peer connections may be in their
// handshake (peerHandshake at most) at once; more are closed at once.
const maxPeerHandshakes = 256

// New prepares the fleet membership of the relay local from cfg. relayTLS
// is the relay's own TLS server config (nil without TLS): with a fleet
// secret and no fleet TLS, peers speak TLS with the relay's certificate.
func New(cfg *rules.Fleet, relayTLS *tls.Config, local Local, log hclog.Logger) (*Fleet, error) {
	rdb, err := newRedis(cfg.Redis)
	if err != nil {
		return nil, err
	}
	f := &Fleet{id: cfg.ID, listen: cfg.Listen, log: log, local: local, conns: map[net.Conn]struct{}{},
		handshakes: make(chan struct{}, maxPeerHandshakes), fails: limit.NewFailures()}
	if _, err := rand.Read(f.prefix[:]); err != nil {
		return nil, err
	}
	a := &auth{id: cfg.ID, secret: []byte(cfg.Secret)}
	switch {
	case cfg.TLS != nil:
		if a.serverTLS, a.clientTLS, err = mutualTLS(cfg.TLS); err != nil {
			return nil, err
		}
	case relayTLS != nil:
		a.serverTLS = relayTLS
		// The peer's certificate names the public address, not the peer
		// address; the secret's HMAC, bound to this TLS session, is what
		// authenticates it.
		a.clientTLS = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true}
	}
	f.auth = a
	f.peers = newPool(a, func(addr string) bool { return f.dir.hasPeer(addr) }, log)
	self := entry{ID: cfg.ID, Peer: cfg.Advertise, Prefix: hex.EncodeToString(f.prefix[:])}
	f.dir = newDirectory(rdb, self, local.Core().Listeners, f.reproved, log)
	return f, nil
}

// mutualTLS loads the fleet's certificate and CA: every peer, dialling or
// listening, must present a certificate the CA signed.
func mutualTLS(t *rules.FleetTLS) (server, client *tls.Config, err error) {
	certPEM, err := safefile.Read(t.Cert, 1<<20)
	if err != nil {
		return nil, nil, fmt.Errorf("fleet.tls: %w", err)
	}
	keyPEM, err := safefile.Read(t.Key, 1<<20)
	if err != nil {
		return nil, nil, fmt.Errorf("fleet.tls: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("fleet.tls: %w", err)
	}
	caPEM, err := safefile.Read(t.CA, 1<<20)
	if err != nil {
		return nil, nil, fmt.Errorf("fleet.tls: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, nil, fmt.Errorf("fleet.tls.ca %s: no certificate", t.CA)
	}
	server = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	// Peers are dialled by address; what matters is that the fleet CA
	// signed the certificate, whatever name it carries.
	client = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("peer sent no certificate")
			}
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			inter := x509.NewCertPool()
			for _, r := range raw[1:] {
				if c, err := x509.ParseCertificate(r); err == nil {
					inter.AddCert(c)
				}
			}
			_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			return err
		}}
	return server, client, nil
}

// Prefix returns the 4 bytes every id this relay makes starts with.
func (f *Fleet) Prefix() [4]byte { return f.prefix }

// ID returns this relay's fleet id.
func (f *Fleet) ID() string { return f.id }

// Status implements relay.Fleet.
func (f *Fleet) Status() relay.FleetStatus {
	return relay.FleetStatus{ID: f.id, Directory: f.dir.available(), Relays: f.dir.count()}
}

// Run listens for peers and keeps the directory until ctx is done.
func (f *Fleet) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("fleet listener: %w", err)
	}
	f.log.Info("fleet member listening", "id", f.id, "peer", ln.Addr().String(), "advertise", f.dir.self.Peer)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); f.dir.run(ctx) }()
	go func() { defer wg.Done(); f.serve(ctx, ln) }()
	<-ctx.Done()
	ln.Close()
	wg.Wait()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	f.peers.close()
	return nil
}

// serve accepts peer connections until ln closes.
func (f *Fleet) serve(ctx context.Context, ln net.Listener) {
	for {
		raw, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		select {
		case f.handshakes <- struct{}{}:
		default:
			f.refused(raw.RemoteAddr().String(), "", fmt.Errorf("%d peer handshakes in progress already", maxPeerHandshakes))
			raw.Close()
			continue
		}
		f.track(raw, true)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.track(raw, false)
			f.handle(ctx, raw)
		}()
	}
}

func (f *Fleet) track(c net.Conn, add bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if add {
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
}

// handle authenticates a peer connection, waits (idle, in a peer's pool)
// for its request and serves it.
func (f *Fleet) handle(ctx context.Context, raw net.Conn) {
	conn, peer, err := f.auth.accept(raw)
	<-f.handshakes
	if err != nil {
		f.refused(raw.RemoteAddr().String(), peer, err)
		raw.Close()
		return
	}
	if tc := stream.TCPOf(raw); tc != nil {
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(peerKeepAlive)
	}
	req, err := wire.Read(conn)
	if err != nil {
		conn.Close()
		return
	}
	switch r := req.(type) {
	case *wire.PeerOpen:
		f.local.ServePeerOpen(ctx, conn, r)
	case *wire.PeerPipe:
		if ap, err := netip.ParseAddrPort(r.Remote); err == nil {
			conn = &fromClient{Conn: conn, remote: net.TCPAddrFromAddrPort(ap)}
		}
		switch r.Kind {
		case wire.PipeData:
			f.local.ServeDataConn(ctx, conn)
		case wire.PipeHTTP:
			if !f.local.ServeHTTPConn(conn) {
				conn.Close()
			}
		default:
			conn.Close()
		}
	default:
		f.log.Warn("unexpected frame from a peer", "peer", peer, "frame", req.Type().String())
		conn.Close()
	}
}

// refused logs a peer connection refused before it was authenticated:
// the first of each source per limit.Window, with how many of the window
// before were not logged.
func (f *Fleet) refused(remote, peer string, err error) {
	if v := f.fails.Fail(remote); v.Log {
		f.log.Warn("peer connection refused", "remote", remote, "peer", peer, "error", err,
			"more_refused_from_source_last_window", v.Suppressed)
	}
}

// fromClient is a piped connection as the client it carries: the peer
// connection, answering with the client's address, so limits and logs see
// the client rather than the relay that forwarded it.
type fromClient struct {
	net.Conn
	remote net.Addr
}

func (c *fromClient) RemoteAddr() net.Addr { return c.remote }

// NetConn returns the peer connection (stream.TCPOf finds the socket).
func (c *fromClient) NetConn() net.Conn { return c.Conn }

// CloseWrite half-closes the peer connection, so half-close crosses relays.
func (c *fromClient) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// HasRemote implements relay.Fleet.
func (f *Fleet) HasRemote(hc string) bool {
	return f.dir.available() && len(f.dir.remote(hc)) > 0
}

// Holders implements relay.Fleet.
func (f *Fleet) Holders(hc string) [][4]byte {
	if !f.dir.available() {
		return nil
	}
	var out [][4]byte
	for _, e := range f.dir.remote(hc) {
		var p [4]byte
		if b, err := hex.DecodeString(e.Prefix); err == nil && len(b) == len(p) {
			copy(p[:], b)
			out = append(out, p)
		}
	}
	return out
}

// Changed implements relay.Fleet.
func (f *Fleet) Changed() {
	select {
	case f.dir.changed <- struct{}{}:
	default:
	}
}

// Reproved implements relay.Fleet.
func (f *Fleet) Reproved(session relay.SessionID, hc string, g relay.Grant) {
	f.dir.announceReproof(reproof{Session: hex.EncodeToString(session[:]), HC: hc, Rule: g.Rule,
		Value: g.Value(), Expiry: g.Expiry, From: f.id})
}

// reproved applies another relay's re-proof here.
func (f *Fleet) reproved(r reproof) {
	b, err := hex.DecodeString(r.Session)
	if err != nil || len(b) != 16 {
		return
	}
	var id relay.SessionID
	copy(id[:], b)
	f.local.Core().Reprove(id, r.HC, relay.RemoteGrant(r.HC, r.Rule, r.Value, r.Expiry))
}

// Forward implements relay.Fleet: the relays with the most healthy
// listeners for the connection first; one that refuses with a transient
// code (its agents busy, gone) yields to the next.
func (f *Fleet) Forward(ctx context.Context, req relay.RemoteOpen) (net.Conn, error) {
	if !f.dir.available() {
		return nil, status.Errorf(status.NoListener, "no agent listening for %q here (fleet directory unavailable)", req.HC)
	}
	cands := f.dir.remote(req.HC)
	if len(cands) == 0 {
		return nil, status.Errorf(status.NoListener, "no agent is listening for %q on any relay of the fleet", req.HC)
	}
	var exp uint64
	if !req.Grant.Expiry.IsZero() {
		exp = uint64(req.Grant.Expiry.Unix())
	}
	open := &wire.PeerOpen{HC: req.HC, Target: req.Target, SenderKey: req.Grant.Rule, Value: req.Grant.Value(),
		Expiry: exp, SenderAddr: req.SenderAddr, Early: req.Early, SenderRelay: f.id, Session: wire.SessionID(req.Session)}
	if len(req.Headers) > 0 {
		b, _ := json.Marshal(req.Headers)
		if len(b) <= wire.MaxString {
			open.Headers = string(b)
		}
	}
	if a := req.Azure; a != nil {
		open.Azure, open.Tracking, open.Suffix, open.Query = true, a.Tracking, a.Suffix, a.Query
	}
	var last error
	for _, e := range cands {
		if err := f.peers.isDown(e.Peer); err != nil {
			last = status.Errorf(status.NoListener, "relay %s: %v", e.ID, err)
			continue
		}
		conn, err := f.open(ctx, e.Peer, open, req.Progress)
		if err == nil {
			return conn, nil
		}
		last = err
		var se *status.Error
		if errors.As(err, &se) && !transient(se.Code) {
			return nil, err
		}
		f.log.Debug("relay did not take a forwarded stream; trying the next", "relay", e.ID, "error", err)
	}
	return nil, last
}

// peerFailed takes the peer at addr out of use after err (a dial, a
// handshake, or an answer that did not come), unless the caller gave up
// first: until a probe reaches it again, streams for it go to other relays
// or fail at once instead of each waiting for a timeout.
func (f *Fleet) peerFailed(ctx context.Context, addr string, err error) {
	if ctx.Err() != nil {
		return
	}
	if f.peers.markDown(addr, err) {
		f.log.Warn("fleet peer unreachable: not used until it answers again", "peer", addr, "error", err)
	}
}

func transient(c status.Code) bool {
	switch c {
	case status.NoListener, status.Busy, status.Timeout, status.ShuttingDown, status.Unreachable:
		return true
	}
	return false
}

// open sends open to the peer at addr and waits for its answer; an idle
// connection the peer dropped is replaced by a fresh one once.
func (f *Fleet) open(ctx context.Context, addr string, open *wire.PeerOpen, progress func()) (net.Conn, error) {
	for try := 0; ; try++ {
		conn, reused, err := f.peers.get(ctx, addr)
		if err != nil {
			f.peerFailed(ctx, addr, err)
			return nil, status.Errorf(status.NoListener, "relay %s: %v", addr, err)
		}
		err = answer(ctx, conn, open, progress)
		if err == nil {
			return conn, nil
		}
		conn.Close()
		// An idle connection the peer dropped fails at once: try a fresh
		// one. One that timed out is a silent peer, not a stale connection.
		var se *status.Error
		var ne net.Error
		if reused && try == 0 && !errors.As(err, &se) && !(errors.As(err, &ne) && ne.Timeout()) {
			continue
		}
		if !errors.As(err, &se) {
			f.peerFailed(ctx, addr, err)
			err = status.Errorf(status.NoListener, "relay %s: %v", addr, err)
		}
		return nil, err
	}
}

// answer writes open and reads PROGRESS frames until the RESULT.
func answer(ctx context.Context, conn net.Conn, open *wire.PeerOpen, progress func()) error {
	conn.SetDeadline(time.Now().Add(firstAnswer))
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := wire.Write(conn, open); err != nil {
		return err
	}
	for {
		fr, err := wire.Read(conn)
		if err != nil {
			return err
		}
		switch r := fr.(type) {
		case *wire.Progress:
			conn.SetReadDeadline(time.Now().Add(openTimeout))
			if progress != nil {
				progress()
			}
		case *wire.Result:
			if err := r.Err(); err != nil {
				return err
			}
			conn.SetDeadline(time.Time{})
			return nil
		default:
			return fmt.Errorf("%w: %s from a peer", wire.ErrMalformed, fr.Type())
		}
	}
}

// Pipe implements relay.Fleet.
func (f *Fleet) Pipe(ctx context.Context, prefix [4]byte, kind uint8, remote string, head []byte) (net.Conn, error) {
	e, ok := f.dir.byPrefix(prefix)
	if !ok {
		if !f.dir.available() {
			return nil, errors.New("fleet directory unavailable")
		}
		return nil, fmt.Errorf("no relay of the fleet has id prefix %x (it restarted, or died)", prefix)
	}
	if err := f.peers.isDown(e.Peer); err != nil {
		return nil, fmt.Errorf("relay %s: %w", e.ID, err)
	}
	for try := 0; ; try++ {
		pc, reused, err := f.peers.get(ctx, e.Peer)
		if err != nil {
			f.peerFailed(ctx, e.Peer, err)
			return nil, fmt.Errorf("relay %s: %w", e.ID, err)
		}
		pc.SetWriteDeadline(time.Now().Add(peerHandshake))
		_, err = pc.Write(append(wire.Append(nil, &wire.PeerPipe{Kind: kind, Remote: remote}), head...))
		pc.SetWriteDeadline(time.Time{})
		if err != nil {
			pc.Close()
			if reused && try == 0 {
				continue
			}
			f.peerFailed(ctx, e.Peer, err)
			return nil, fmt.Errorf("relay %s: %w", e.ID, err)
		}
		return pc, nil
	}
}
