package fleet

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wire"
)

// Timing of peer connections.
const (
	peerHandshake = 3 * time.Second // a silent peer costs one such wait, then is probed
	peerKeepAlive = 15 * time.Second
	// peerIdle is how many authenticated idle connections a relay keeps to
	// each peer it forwards to: a forwarded stream then costs no handshake.
	peerIdle = 2
)

// auth is how peers prove they belong to the fleet: mutual TLS with the
// fleet CA, an HMAC with the fleet secret over both nonces and the TLS
// session, or both.
type auth struct {
	id        string
	secret    []byte
	serverTLS *tls.Config // nil: plaintext (loopback only, with a secret)
	clientTLS *tls.Config
}

// mac proves the secret for one side of one handshake, bound to the TLS
// session (so a man in the middle cannot relay it).
func (a *auth) mac(label string, first, second [16]byte, conn net.Conn) [32]byte {
	var out [32]byte
	if len(a.secret) == 0 {
		return out
	}
	h := hmac.New(sha256.New, a.secret)
	h.Write([]byte("hybrid fleet " + label))
	h.Write(first[:])
	h.Write(second[:])
	h.Write(exporter(conn))
	copy(out[:], h.Sum(nil))
	return out
}

// exporter is the TLS session's keying material, or nothing in plaintext.
func exporter(conn net.Conn) []byte {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return nil
	}
	cs := tc.ConnectionState()
	km, err := cs.ExportKeyingMaterial("hybrid fleet", nil, 32)
	if err != nil {
		return nil
	}
	return km
}

func nonce() [16]byte {
	var n [16]byte
	rand.Read(n[:])
	return n
}

func writeFrame(conn net.Conn, f wire.Frame) error {
	conn.SetWriteDeadline(time.Now().Add(peerHandshake))
	defer conn.SetWriteDeadline(time.Time{})
	return wire.Write(conn, f)
}

// accept authenticates a connection a peer dialled; the connection is then
// ready for its request.
func (a *auth) accept(raw net.Conn) (net.Conn, string, error) {
	conn := raw
	raw.SetDeadline(time.Now().Add(peerHandshake))
	defer raw.SetDeadline(time.Time{})
	if a.serverTLS != nil {
		tc := tls.Server(raw, a.serverTLS)
		if err := tc.Handshake(); err != nil {
			return nil, "", fmt.Errorf("tls: %w", err)
		}
		conn = tc
	}
	if err := wire.ReadPeerPreface(conn); err != nil {
		return nil, "", err
	}
	f, err := wire.Read(conn)
	if err != nil {
		return nil, "", err
	}
	hello, ok := f.(*wire.PeerHello)
	if !ok {
		return nil, "", fmt.Errorf("expected PEERHELLO, got %s", f.Type())
	}
	mine := nonce()
	if err := wire.Write(conn, &wire.PeerChallenge{Relay: a.id, Nonce: mine, MAC: a.mac("listener", hello.Nonce, mine, conn)}); err != nil {
		return nil, hello.Relay, err
	}
	f, err = wire.Read(conn)
	if err != nil {
		return nil, hello.Relay, err
	}
	proof, ok := f.(*wire.PeerAuth)
	if !ok {
		return nil, hello.Relay, fmt.Errorf("expected PEERAUTH, got %s", f.Type())
	}
	if want := a.mac("dialler", mine, hello.Nonce, conn); !hmac.Equal(want[:], proof.MAC[:]) {
		wire.Write(conn, &wire.Result{Code: status.Unauthorized, Msg: "bad fleet credential"})
		return nil, hello.Relay, errors.New("bad fleet credential (the fleet secret differs)")
	}
	if err := wire.Write(conn, &wire.Result{}); err != nil {
		return nil, hello.Relay, err
	}
	return conn, hello.Relay, nil
}

// dial opens and authenticates a connection to the peer at addr.
func (a *auth) dial(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: peerHandshake, KeepAlive: peerKeepAlive}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	conn := raw
	raw.SetDeadline(time.Now().Add(peerHandshake))
	fail := func(err error) (net.Conn, error) { raw.Close(); return nil, err }
	if a.clientTLS != nil {
		tc := tls.Client(raw, a.clientTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(fmt.Errorf("tls: %w", err))
		}
		conn = tc
	}
	mine := nonce()
	if _, err := conn.Write(wire.Append([]byte(wire.PeerPreface), &wire.PeerHello{Relay: a.id, Nonce: mine})); err != nil {
		return fail(err)
	}
	f, err := wire.Read(conn)
	if err != nil {
		return fail(err)
	}
	ch, ok := f.(*wire.PeerChallenge)
	if !ok {
		if r, ok := f.(*wire.Result); ok && r.Err() != nil {
			return fail(r.Err())
		}
		return fail(fmt.Errorf("expected PEERCHALLENGE, got %s", f.Type()))
	}
	if want := a.mac("listener", mine, ch.Nonce, conn); !hmac.Equal(want[:], ch.MAC[:]) {
		return fail(fmt.Errorf("peer %s (%s) failed the fleet credential", ch.Relay, addr))
	}
	if err := wire.Write(conn, &wire.PeerAuth{MAC: a.mac("dialler", ch.Nonce, mine, conn)}); err != nil {
		return fail(err)
	}
	f, err = wire.Read(conn)
	if err != nil {
		return fail(err)
	}
	if r, ok := f.(*wire.Result); !ok || r.Err() != nil {
		if ok {
			return fail(r.Err())
		}
		return fail(fmt.Errorf("expected RESULT, got %s", f.Type()))
	}
	raw.SetDeadline(time.Time{})
	return conn, nil
}

// pool keeps authenticated idle connections to peers, and which peers
// are down: a peer that failed to connect or to answer is skipped until a
// background probe reaches it again, so a peer that drops packets costs
// one timeout, not one per stream.
type pool struct {
	auth *auth
	// known says whether addr is still a peer of the fleet; a probe stops
	// when it is not.
	known func(addr string) bool
	log   hclog.Logger

	mu   sync.Mutex
	idle map[string][]net.Conn // by peer address
	down map[string]downPeer   // by peer address
	wg   sync.WaitGroup
	done bool
	stop chan struct{} // closed by close: probes end
}

// downPeer is a peer taken out of use, and why.
type downPeer struct {
	since time.Time
	err   error
}

// probeEvery is how often a down peer is tried again.
const probeEvery = time.Second

// newPool returns a pool dialling with a; known as in pool; log says
// when a down peer answers again.
func newPool(a *auth, known func(addr string) bool, log hclog.Logger) *pool {
	return &pool{auth: a, known: known, log: log, idle: map[string][]net.Conn{}, down: map[string]downPeer{}, stop: make(chan struct{})}
}

// isDown returns why addr is out of use, or nil.
func (p *pool) isDown(addr string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.down[addr]
	if !ok {
		return nil
	}
	return fmt.Errorf("unreachable for %v (%v); probed every %v", time.Since(d.since).Round(time.Second), d.err, probeEvery)
}

// markDown takes addr out of use after err, drops its idle connections,
// and probes it in the background until it answers (then it is used
// again) or leaves the fleet. It reports whether addr was up until now.
func (p *pool) markDown(addr string, err error) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.down[addr]; ok || p.done {
		return false
	}
	p.down[addr] = downPeer{since: time.Now(), err: err}
	for _, c := range p.idle[addr] {
		c.Close()
	}
	delete(p.idle, addr)
	p.wg.Add(1)
	go p.probe(addr)
	return true
}

// probe dials addr every probeEvery until a dial succeeds (the connection
// joins the idle ones), addr leaves the fleet, or the pool closes.
func (p *pool) probe(addr string) {
	defer p.wg.Done()
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		if p.known != nil && !p.known(addr) {
			p.mu.Lock()
			delete(p.down, addr)
			p.mu.Unlock()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), peerHandshake)
		c, err := p.auth.dial(ctx, addr)
		cancel()
		if err != nil {
			continue
		}
		p.mu.Lock()
		since := p.down[addr].since
		delete(p.down, addr)
		if p.done {
			c.Close()
		} else {
			p.idle[addr] = append(p.idle[addr], c)
		}
		p.mu.Unlock()
		p.log.Info("fleet peer answers again", "peer", addr, "down_for", time.Since(since).Round(time.Millisecond).String())
		return
	}
}

// get returns an authenticated connection to addr: an idle one, or a new
// one (then the pool is refilled in the background). reused says it was
// idle (it may have died meanwhile).
func (p *pool) get(ctx context.Context, addr string) (conn net.Conn, reused bool, err error) {
	p.mu.Lock()
	if cs := p.idle[addr]; len(cs) > 0 {
		conn = cs[len(cs)-1]
		p.idle[addr] = cs[:len(cs)-1]
		p.mu.Unlock()
		p.refill(addr)
		return conn, true, nil
	}
	p.mu.Unlock()
	conn, err = p.auth.dial(ctx, addr)
	if err == nil {
		p.refill(addr)
	}
	return conn, false, err
}

// refill tops addr's idle connections up in the background.
func (p *pool) refill(addr string) {
	p.mu.Lock()
	if p.done || len(p.idle[addr]) >= peerIdle {
		p.mu.Unlock()
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), peerHandshake)
		defer cancel()
		c, err := p.auth.dial(ctx, addr)
		if err != nil {
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.done || len(p.idle[addr]) >= peerIdle {
			c.Close()
			return
		}
		p.idle[addr] = append(p.idle[addr], c)
	}()
}

// close drops every idle connection and waits for refills.
func (p *pool) close() {
	p.mu.Lock()
	if !p.done {
		close(p.stop)
	}
	p.done = true
	for _, cs := range p.idle {
		for _, c := range cs {
			c.Close()
		}
	}
	p.idle = map[string][]net.Conn{}
	p.mu.Unlock()
	p.wg.Wait()
}
