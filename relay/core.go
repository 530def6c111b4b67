package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/limit"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/stream"
)

// DefaultJoinTimeout bounds how long a sender waits for an agent to join its
// stream after the relay notified it. The agent dials the resource first
// (its own dial timeout is 10 s), so this must be comfortably above that.
const DefaultJoinTimeout = 20 * time.Second

// StreamID names a stream at the relay. It is random and single-use: it only
// travels on authenticated control channels, and the join must also carry a
// valid listen token for the stream's hybrid connection.
type StreamID [16]byte

// String returns the id in hex.
func (id StreamID) String() string { return hex.EncodeToString(id[:]) }

// Accept is the notice a listening agent gets when a sender opens a stream.
type Accept struct {
	ID         StreamID
	HC         string
	Target     string // requested host:port, "" for the published endpoint
	SenderKey  string // name of the key the sender authenticated with
	SenderAddr string // the sender's address as the relay sees it
	// Headers are the sender's connect headers (WebSocket senders only),
	// forwarded to WebSocket listeners as Azure's connectHeaders.
	Headers map[string]string
}

// ListenerConn is a front door's side of an agent's control channel: the
// core pushes notices through it. Implementations must not block for long
// (queue, with a bound).
type ListenerConn interface {
	// Accept asks the agent to serve a stream.
	Accept(a Accept) error
	// Detached tells the agent the relay ended its attachment to hc.
	Detached(hc string, why error)
	// Close ends the control channel.
	Close(why error)
}

// Peer is one side of a stream as a front door hands it to the core: the
// connection that will carry raw bytes, and how to tell that side in its own
// wire format that the stream is established.
type Peer struct {
	Conn net.Conn
	// Ready sends the "ok, raw bytes follow" answer on Conn.
	Ready func() error
	// Addr is the peer's address, for logs.
	Addr string
}

// OpenRequest is a sender's request for a stream.
type OpenRequest struct {
	HC     string
	Token  string
	Target string
	Remote string // sender's address
	// Headers are forwarded to WebSocket listeners (see Accept.Headers).
	Headers map[string]string
}

// Core is the relay's heart: who listens for what, authentication, pairing,
// limits and revocation. It knows no wire format; front doors translate
// their protocol into calls on it.
type Core struct {
	log         hclog.Logger
	joinTimeout time.Duration
	auth        atomic.Pointer[authState]

	mu       sync.Mutex
	closing  bool
	hcs      map[string]*hcListeners
	sessions map[*Session]struct{}
	pending  map[StreamID]*pending
	streams  map[*activeStream]struct{}
	streamWG sync.WaitGroup

	stats Stats
	fails *limit.Failures
}

// Stats are the core's running counters.
type Stats struct {
	StreamsOpened, StreamsFailed, AuthFailures atomic.Int64
	BytesUp, BytesDown                         atomic.Int64
}

type hcListeners struct {
	sessions []*Session
	next     int
}

type pending struct {
	req     OpenRequest
	grant   Grant
	session *Session
	joined  chan joined // buffered 1
	failed  chan error

	listenGrant Grant // set by Claim
}

type joined struct {
	peer  Peer
	grant Grant
}

type activeStream struct {
	id            StreamID
	hc            string
	sender, agent net.Conn
	senderGrant   Grant
	listenerGrant Grant
	start         time.Time
}

// NewCore returns a core with the given authentication rules.
func NewCore(log hclog.Logger, a *Auth) *Core {
	c := &Core{
		log:         log,
		joinTimeout: DefaultJoinTimeout,
		hcs:         map[string]*hcListeners{},
		sessions:    map[*Session]struct{}{},
		pending:     map[StreamID]*pending{},
		streams:     map[*activeStream]struct{}{},
		fails:       limit.NewFailures(),
	}
	c.SetAuth(a)
	return c
}

// SetAuth replaces the authentication rules. Every attachment and stream
// whose key (or key value, or connection) is gone ends at once: revocation
// is immediate, not at token expiry.
func (c *Core) SetAuth(a *Auth) {
	c.auth.Store(&authState{Auth: a})
	c.sweep(a.holds, true, status.Errorf(status.Unauthorized, "key revoked or connection removed"))
}

// Stats returns the core's counters.
func (c *Core) Stats() *Stats { return &c.stats }

// NewSession registers an agent's control channel.
func (c *Core) NewSession(conn ListenerConn, remote, agent string) (*Session, error) {
	s := &Session{core: c, conn: conn, remote: remote, agent: agent, attached: map[string]Grant{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return nil, status.Errorf(status.ShuttingDown, "relay is stopping")
	}
	c.sessions[s] = struct{}{}
	return s, nil
}

// Open authenticates a sender, notifies a listening agent and waits until it
// joins or refuses. On success the returned stream must be passed to Splice.
func (c *Core) Open(ctx context.Context, req OpenRequest) (*Pairing, error) {
	if req.HC == "" {
		return nil, status.Errorf(status.BadRequest, "no hybrid connection named")
	}
	grant, err := c.authorize(req.HC, req.Token, sas.Send, req.Remote)
	if err != nil {
		return nil, err
	}
	var id StreamID
	if _, err := rand.Read(id[:]); err != nil {
		return nil, status.Errorf(status.Internal, "stream id: %v", err)
	}
	p := &pending{req: req, grant: grant, joined: make(chan joined, 1), failed: make(chan error, 1)}

	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return nil, status.Errorf(status.ShuttingDown, "relay is stopping")
	}
	c.pending[id] = p
	cands := c.candidatesLocked(req.HC)
	c.mu.Unlock()
	delivered := false
	defer func() {
		c.mu.Lock()
		_, unclaimed := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if !unclaimed && !delivered {
			// A join or reject claimed the stream as we gave up on it: its
			// value is (or is about to be) in a channel. Don't leak the conn.
			go func() {
				select {
				case j := <-p.joined:
					j.peer.Conn.Close()
				case <-p.failed:
				}
			}()
		}
	}()

	if len(cands) == 0 {
		return nil, status.Errorf(status.NoListener, "no agent is listening for %q", req.HC)
	}
	acc := Accept{ID: id, HC: req.HC, Target: req.Target, SenderKey: grant.Rule, SenderAddr: req.Remote, Headers: req.Headers}
	var notified *Session
	for _, s := range cands { // failover: the first agent that takes the notice
		// Record the agent before notifying it: its REJECT may come back
		// before Accept returns, and only the notified agent may reject.
		c.mu.Lock()
		p.session = s
		c.mu.Unlock()
		if err := s.conn.Accept(acc); err != nil {
			c.log.Debug("accept notice failed, trying next agent", "hc", req.HC, "agent", s.remote, "error", err)
			continue
		}
		notified = s
		break
	}
	if notified == nil {
		return nil, status.Errorf(status.NoListener, "no agent for %q took the stream", req.HC)
	}

	t := time.NewTimer(c.joinTimeout)
	defer t.Stop()
	select {
	case j := <-p.joined:
		delivered = true
		return &Pairing{ID: id, HC: req.HC, Agent: j.peer, senderGrant: grant, listenerGrant: j.grant}, nil
	case err := <-p.failed:
		delivered = true
		return nil, err
	case <-t.C:
		return nil, status.Errorf(status.Timeout, "agent %s did not join within %s", notified.remote, c.joinTimeout)
	case <-ctx.Done():
		return nil, status.Errorf(status.ShuttingDown, "open cancelled: %v", context.Cause(ctx))
	}
}

// Pairing is a stream whose agent side has joined.
type Pairing struct {
	ID    StreamID
	HC    string
	Agent Peer

	senderGrant, listenerGrant Grant
}

// Join hands an agent's data connection to the stream it was notified of.
// On success the core owns peer.Conn.
func (c *Core) Join(id StreamID, hc, token string, peer Peer) error {
	cl, err := c.Claim(id, hc, token, peer.Addr)
	if err != nil {
		return err
	}
	cl.Join(peer)
	return nil
}

// Claim is a pending stream taken by its agent before the agent's connection
// exists (the WebSocket front door must answer the rendezvous handshake with
// a status before it upgrades). Exactly one of Join or Fail must be called.
type Claim struct {
	p *pending
}

// Join hands the agent's connection to the stream; the core owns it.
func (cl *Claim) Join(peer Peer) { cl.p.joined <- joined{peer: peer, grant: cl.p.listenGrant} }

// Fail ends the stream with err (an agent's rejection, or a failed upgrade).
func (cl *Claim) Fail(err error) { cl.p.failed <- err }

// Claim verifies an agent's right to pending stream id of hc and takes it
// (single use). token may be "" for Azure compatibility, where the
// rendezvous address is the capability: the grant of the agent session
// that was notified is used, and it must still be attached to hc.
func (c *Core) Claim(id StreamID, hc, token, remote string) (*Claim, error) {
	var grant Grant
	if token != "" {
		g, err := c.authorize(hc, token, sas.Listen, remote)
		if err != nil {
			return nil, err
		}
		grant = g
	}
	c.mu.Lock()
	p := c.pending[id]
	if p == nil || p.req.HC != hc {
		c.mu.Unlock()
		return nil, status.Errorf(status.NotFound, "no pending stream %s for %q (expired or already joined)", id, hc)
	}
	if token == "" {
		var ok bool
		if p.session != nil {
			p.session.mu.Lock()
			grant, ok = p.session.attached[hc]
			p.session.mu.Unlock()
		}
		if !ok {
			c.mu.Unlock()
			return nil, status.Errorf(status.Unauthorized, "no token, and the notified agent no longer listens for %q", hc)
		}
	}
	delete(c.pending, id) // single use
	p.listenGrant = grant
	c.mu.Unlock()
	return &Claim{p: p}, nil
}

// reject fails a pending stream on the agent's word.
func (c *Core) reject(s *Session, id StreamID, err error) {
	c.mu.Lock()
	p := c.pending[id]
	if p != nil && p.session == s {
		delete(c.pending, id)
	} else {
		p = nil
	}
	c.mu.Unlock()
	if p != nil {
		p.failed <- err
	}
}

// Splice tells both sides the stream is established and copies bytes between
// them until it ends. It owns and closes both connections.
func (c *Core) Splice(pr *Pairing, sender Peer) {
	log := c.log.With("hc", pr.HC, "stream", pr.ID.String())
	st := &activeStream{id: pr.ID, hc: pr.HC, sender: sender.Conn, agent: pr.Agent.Conn,
		senderGrant: pr.senderGrant, listenerGrant: pr.listenerGrant, start: time.Now()}
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		sender.Conn.Close()
		pr.Agent.Conn.Close()
		return
	}
	c.streams[st] = struct{}{}
	c.streamWG.Add(1)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.streams, st)
		c.mu.Unlock()
		c.streamWG.Done()
	}()

	// The agent hears first: it may start sending (a server greeting) as soon
	// as it knows; those bytes wait in the socket until the copy below runs.
	if err := pr.Agent.Ready(); err != nil {
		log.Warn("agent side failed before the stream started", "error", err)
		sender.Conn.Close()
		pr.Agent.Conn.Close()
		c.stats.StreamsFailed.Add(1)
		return
	}
	if err := sender.Ready(); err != nil {
		log.Debug("sender went away before the stream started", "error", err)
		sender.Conn.Close()
		pr.Agent.Conn.Close()
		c.stats.StreamsFailed.Add(1)
		return
	}
	c.stats.StreamsOpened.Add(1)
	log.Debug("stream open", "sender", sender.Addr, "agent", pr.Agent.Addr)
	n := stream.Pipe(sender.Conn, pr.Agent.Conn)
	c.stats.BytesUp.Add(n.AToB)
	c.stats.BytesDown.Add(n.BToA)
	log.Debug("stream closed", "up", n.AToB, "down", n.BToA, "duration", time.Since(st.start).Round(time.Millisecond))
}

// Shutdown stops the core: new sessions and streams are refused, control
// channels are closed (agents reconnect elsewhere), live streams get until
// ctx is done to finish, then are closed.
func (c *Core) Shutdown(ctx context.Context) {
	c.mu.Lock()
	c.closing = true
	sessions := make([]*Session, 0, len(c.sessions))
	for s := range c.sessions {
		sessions = append(sessions, s)
	}
	c.mu.Unlock()
	for _, s := range sessions {
		s.conn.Close(status.Errorf(status.ShuttingDown, "relay is stopping"))
		s.Close()
	}
	done := make(chan struct{})
	go func() { c.streamWG.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	c.mu.Lock()
	for st := range c.streams {
		st.sender.Close()
		st.agent.Close()
	}
	c.mu.Unlock()
	<-done
}

// candidatesLocked returns the sessions listening for hc, rotated so that
// successive streams start with successive agents.
func (c *Core) candidatesLocked(hc string) []*Session {
	l := c.hcs[hc]
	if l == nil || len(l.sessions) == 0 {
		return nil
	}
	n := len(l.sessions)
	out := make([]*Session, 0, n)
	for i := 0; i < n; i++ {
		out = append(out, l.sessions[(l.next+i)%n])
	}
	l.next = (l.next + 1) % n
	return out
}

// authorize verifies token for need on hc. A valid token is always
// accepted, whatever else came from the same address; failures are
// counted per source, logged once per window, and answered after a delay
// once a source is over its budget (limit.Failures).
func (c *Core) authorize(hc, token string, need sas.Rights, remote string) (Grant, error) {
	a := c.auth.Load()
	m, err := a.verify(hc, token, need)
	if err == nil {
		return m, nil
	}
	c.stats.AuthFailures.Add(1)
	v := c.fails.Fail(remote)
	if v.Log {
		c.log.Warn("authentication failed", "hc", hc, "need", need.String(), "remote", remote, "error", err,
			"more_failures_from_source_last_window", v.Suppressed)
	}
	if v.Over {
		time.Sleep(limit.Delay) // slow down a source that keeps failing; never a correct one
	}
	return m, err
}

// Session is an agent's control channel as the core sees it.
type Session struct {
	core   *Core
	conn   ListenerConn
	remote string
	agent  string

	mu       sync.Mutex
	closed   bool
	attached map[string]Grant
}

func (s *Session) attachedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.attached)
}

// Remote returns the agent's address.
func (s *Session) Remote() string { return s.remote }

// Attach starts listening for hc with a listen token.
func (s *Session) Attach(hc, token string) error {
	c := s.core
	m, err := c.authorize(hc, token, sas.Listen, s.remote)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return status.Errorf(status.ShuttingDown, "session closed")
	}
	if _, ok := s.attached[hc]; !ok {
		l := c.hcs[hc]
		if l == nil {
			l = &hcListeners{}
			c.hcs[hc] = l
		}
		l.sessions = append(l.sessions, s)
	}
	s.attached[hc] = m
	c.log.Info("agent listening", "hc", hc, "agent", s.agent, "remote", s.remote, "key", m.Rule)
	return nil
}

// Renew replaces the token of an attached hybrid connection.
func (s *Session) Renew(hc, token string) error {
	s.mu.Lock()
	_, ok := s.attached[hc]
	s.mu.Unlock()
	if !ok {
		return status.Errorf(status.NotFound, "not attached to %q", hc)
	}
	return s.Attach(hc, token)
}

// Detach stops listening for hc.
func (s *Session) Detach(hc string) {
	c := s.core
	c.mu.Lock()
	defer c.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.detachLocked(hc)
}

func (s *Session) detachLocked(hc string) {
	c := s.core
	if _, ok := s.attached[hc]; !ok {
		return
	}
	delete(s.attached, hc)
	if l := c.hcs[hc]; l != nil {
		for i, x := range l.sessions {
			if x == s {
				l.sessions = append(l.sessions[:i], l.sessions[i+1:]...)
				break
			}
		}
		if len(l.sessions) == 0 {
			delete(c.hcs, hc)
		} else {
			l.next %= len(l.sessions)
		}
	}
	c.log.Info("agent stopped listening", "hc", hc, "agent", s.agent, "remote", s.remote)
}

// Reject fails the pending stream id on the agent's word.
func (s *Session) Reject(id StreamID, code status.Code, msg string) {
	if code == status.OK {
		code = status.Refused
	}
	s.core.reject(s, id, &status.Error{Code: code, Msg: msg})
}

// Close unregisters the session and detaches everything it listened for.
func (s *Session) Close() {
	c := s.core
	c.mu.Lock()
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		for hc := range s.attached {
			s.detachLocked(hc)
		}
		delete(c.sessions, s)
	}
	s.mu.Unlock()
	// Streams this agent was asked to serve but has not joined fail now
	// rather than at the join timeout.
	var orphans []*pending
	for id, p := range c.pending {
		if p.session == s {
			orphans = append(orphans, p)
			delete(c.pending, id)
		}
	}
	c.mu.Unlock()
	for _, p := range orphans {
		p.failed <- status.Errorf(status.NoListener, "agent %s went away", s.remote)
	}
}

// expireTokens detaches every attachment whose token lapsed. Streams live
// on: as in Azure, a token is checked when a stream opens.
func (c *Core) expireTokens(now time.Time) {
	c.sweep(func(g Grant) bool { return g.Expiry.IsZero() || now.Before(g.Expiry) }, false,
		status.Errorf(status.Unauthorized, "token expired"))
}

// sweep ends every attachment, and with streams every stream, whose grant
// fails ok.
func (c *Core) sweep(ok func(Grant) bool, streams bool, why *status.Error) {
	type lapse struct {
		s  *Session
		hc string
	}
	var lapsed []lapse
	var cut []*activeStream
	c.mu.Lock()
	for s := range c.sessions {
		s.mu.Lock()
		for hc, g := range s.attached {
			if !ok(g) {
				s.detachLocked(hc)
				lapsed = append(lapsed, lapse{s, hc})
			}
		}
		s.mu.Unlock()
	}
	if streams {
		for st := range c.streams {
			if !ok(st.senderGrant) || !ok(st.listenerGrant) {
				cut = append(cut, st)
			}
		}
	}
	c.mu.Unlock()
	for _, l := range lapsed {
		c.log.Warn("agent attachment ended", "hc", l.hc, "agent", l.s.remote, "reason", why.Msg)
		l.s.conn.Detached(l.hc, why)
		if l.s.attachedCount() == 0 {
			// Nothing it authenticated for is left: end the channel too.
			l.s.conn.Close(why)
		}
	}
	for _, st := range cut {
		c.log.Warn("stream ended", "hc", st.hc, "stream", st.id.String(), "reason", why.Msg,
			"sender_key", st.senderGrant.Rule, "listener_key", st.listenerGrant.Rule)
		st.sender.Close()
		st.agent.Close()
	}
}

// RunExpiry detaches lapsed attachments every second until ctx is done.
func (c *Core) RunExpiry(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.expireTokens(now)
		}
	}
}
