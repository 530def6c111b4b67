package relay

import (
	"context"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
)

// Role is what a control channel's client is.
type Role uint8

// Roles of sessions.
const (
	// RoleAgent serves hybrid connections (listen right).
	RoleAgent Role = iota + 1
	// RoleSender opens streams (send right): a proxy's session, which
	// re-proves its keys for the streams it opened.
	RoleSender
)

const roleSender = RoleSender

// maxTied caps the connections one session may park (agent) or keep warm
// (sender) at the relay.
const maxTied = 64

// Session is a client's control channel as the core sees it: an agent
// listening for hybrid connections, or a sender (proxy) proving its keys.
type Session struct {
	core   *Core
	id     SessionID
	role   Role
	conn   ListenerConn
	remote string
	name   string
	since  time.Time
	ping   time.Duration // the ping interval the client was told when it connected

	lastHeard atomic.Int64 // unix nanos of the last word from the client; 0: never reported
	active    atomic.Int64 // streams offered to or carried by this agent

	mu       sync.Mutex // after core.mu when both are held
	closed   bool
	missed   bool // missed a join since it was last heard
	attached map[string]*attachment
	parked   []ParkedConn           // idle pre-opened connections, newest last
	tied     map[io.Closer]struct{} // parked and warm connections, closed with the session
}

// attachment is one hybrid connection a session attached.
type attachment struct {
	grant   Grant
	healthy bool   // the agent reaches what it publishes
	why     string // why not, when not
}

// ParkedConn is a data connection an agent opened ahead of its next
// stream. The front door that received it implements the offer: it sends
// the accept notice (with the stream's early data) and passes the agent's
// answers to the claim.
type ParkedConn interface {
	io.Closer
	// Offer sends acc on the connection. The door's goroutine reading it
	// then calls cl.Ack, cl.Fail or cl.Join.
	Offer(cl *Claim, acc Accept) error
}

// NewSession registers an agent's control channel (the WebSocket door's
// listeners).
func (c *Core) NewSession(conn ListenerConn, remote, name string) (*Session, error) {
	return c.NewSessionRole(conn, RoleAgent, remote, name)
}

// NewSessionRole registers a control channel of the given role.
func (c *Core) NewSessionRole(conn ListenerConn, role Role, remote, name string) (*Session, error) {
	id, err := c.newID()
	if err != nil {
		return nil, status.Errorf(status.Internal, "session id: %v", err)
	}
	s := &Session{core: c, id: id, role: role, conn: conn, remote: remote, name: name, since: time.Now(),
		ping:     c.cfg.Load().PingInterval,
		attached: map[string]*attachment{}, tied: map[io.Closer]struct{}{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.goingAway {
		return nil, status.Errorf(status.ShuttingDown, "relay is stopping")
	}
	c.sessions[s] = struct{}{}
	c.byID[s.id] = s
	return s, nil
}

// PingInterval returns the ping interval of the session's channel, fixed
// when it connected (a reload changes it for new channels only: the client
// pings at the interval it was told).
func (s *Session) PingInterval() time.Duration { return s.ping }

// ID returns the session's id.
func (s *Session) ID() SessionID { return s.id }

// Remote returns the client's address.
func (s *Session) Remote() string { return s.remote }

func (s *Session) attachedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.attached)
}

// Heard records a word from the client (any frame, a pong): it is alive,
// and back in rotation if it had missed a join.
func (s *Session) Heard() { s.heard() }

func (s *Session) heard() {
	s.lastHeard.Store(time.Now().UnixNano())
	s.mu.Lock()
	back := s.missed
	s.missed = false
	s.mu.Unlock()
	if back {
		s.core.log.Info("agent answers again; back in rotation", "agent", s.name, "remote", s.remote)
	}
}

func (s *Session) missedJoin() {
	s.mu.Lock()
	s.missed = true
	s.mu.Unlock()
}

func (s *Session) addActive(n int64) {
	if s != nil {
		s.active.Add(n)
	}
}

// rank orders agents for a new stream of hc: 0 healthy and in rotation,
// 1 in rotation but its endpoint unreachable, 2 out of rotation (missed a
// join, or silent past a ping interval and a half). load is its streams.
func (s *Session) rank(hc string, now time.Time) (rank, load int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	load = int(s.active.Load())
	heard := s.lastHeard.Load()
	if s.missed || heard != 0 && now.Sub(time.Unix(0, heard)) > s.ping*3/2 {
		return 2, load
	}
	if a := s.attached[hc]; a != nil && !a.healthy {
		return 1, load
	}
	return 0, load
}

func randN(n int) int { return rand.IntN(n) }

// grant returns the grant of s's attachment to hc.
func (s *Session) grant(hc string) (Grant, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.attached[hc]
	if a == nil {
		return Grant{}, false
	}
	return a.grant, true
}

// proves reports whether s is attached to hc (a sender session proving a
// send key for it).
func (s *Session) proves(hc string) bool {
	_, ok := s.grant(hc)
	return ok
}

// setHealth records whether the agent reaches what it publishes for hc.
func (s *Session) setHealth(hc string, healthy bool, why string) {
	s.mu.Lock()
	a := s.attached[hc]
	changed := a != nil && a.healthy != healthy
	if a != nil {
		a.healthy, a.why = healthy, why
	}
	s.mu.Unlock()
	if changed {
		s.core.fleetChanged()
		if healthy {
			s.core.log.Info("agent reaches its endpoint again", "hc", hc, "agent", s.name, "remote", s.remote)
		} else {
			s.core.log.Warn("agent cannot reach its endpoint; other agents take its streams", "hc", hc,
				"agent", s.name, "remote", s.remote, "reason", why)
		}
	}
}

// Health records the agent's report on hc's endpoint.
func (s *Session) Health(hc string, code status.Code, msg string) {
	s.heard()
	s.setHealth(hc, code == status.OK, msg)
}

// Attach starts listening for (agent) or proving a send key for (sender)
// hc with token.
func (s *Session) Attach(hc, token string) error {
	c := s.core
	need := sas.Listen
	if s.role == RoleSender {
		need = sas.Send
	}
	g, err := c.authorize(hc, token, need, s.remote)
	if err != nil {
		return err
	}
	c.mu.Lock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.mu.Unlock()
		return status.Errorf(status.ShuttingDown, "session closed")
	}
	a := s.attached[hc]
	if a == nil {
		if s.role == RoleAgent {
			if err := c.admitListener(hc, len(c.hcLocked(hc).listeners)); err != nil {
				s.mu.Unlock()
				c.mu.Unlock()
				return err
			}
		}
		a = &attachment{healthy: true}
		s.attached[hc] = a
		if s.role == RoleAgent {
			h := c.hcLocked(hc)
			h.listeners = append(h.listeners, s)
			close(h.attached)
			h.attached = make(chan struct{})
		}
	}
	a.grant = g
	s.mu.Unlock()
	// The channel proved the key again: its streams of hc adopt the proof
	// (a rotated value they opened with no longer matters).
	for st := range c.streams {
		if st.hc != hc {
			continue
		}
		switch s {
		case st.agentSession:
			st.listenerGrant = g
		case st.senderSession:
			st.senderGrant = g
		}
	}
	c.mu.Unlock()
	if c.fleet != nil {
		if s.role == RoleSender {
			c.fleet.Reproved(s.id, hc, g)
		} else {
			c.fleet.Changed()
		}
	}
	kind := "agent listening"
	if s.role == RoleSender {
		kind = "sender session attached"
	}
	c.log.Info(kind, "hc", hc, "agent", s.name, "remote", s.remote, "key", g.Rule)
	return nil
}

// Renew replaces the token of an attached hybrid connection.
func (s *Session) Renew(hc, token string) error {
	if _, ok := s.grant(hc); !ok {
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
	if s.role != RoleAgent {
		return
	}
	if h := c.hcs[hc]; h != nil {
		for i, x := range h.listeners {
			if x == s {
				h.listeners = append(h.listeners[:i], h.listeners[i+1:]...)
				break
			}
		}
		if len(h.listeners) == 0 {
			h.lastLeft = time.Now()
		}
	}
	if c.fleet != nil {
		c.fleet.Changed() // it never blocks
	}
	c.log.Info("agent stopped listening", "hc", hc, "agent", s.name, "remote", s.remote)
}

// Reject fails the pending stream id on the agent's word.
func (s *Session) Reject(id StreamID, code status.Code, msg string) {
	if code == status.OK {
		code = status.Refused
	}
	s.heard()
	s.core.answerFrom(s, id, answer{err: &status.Error{Code: code, Msg: msg}})
}

// Ack records that the agent is alive and dialling for stream id.
func (s *Session) Ack(id StreamID) {
	s.heard()
	s.core.answerFrom(s, id, answer{ack: true})
}

// Park offers pc for the session's next stream. It fails when the session
// ended, is not an agent's, or has maxTied connections already.
func (s *Session) Park(pc ParkedConn) error {
	if s.role != RoleAgent {
		return status.Errorf(status.BadRequest, "only an agent's session parks connections")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.tieLocked(pc); err != nil {
		return err
	}
	s.parked = append(s.parked, pc)
	return nil
}

// Tie keeps c open only as long as the session: a sender's warm connection.
func (s *Session) Tie(c io.Closer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tieLocked(c)
}

func (s *Session) tieLocked(c io.Closer) error {
	if s.closed {
		return status.Errorf(status.NotFound, "session closed")
	}
	if len(s.tied) >= maxTied {
		return status.Errorf(status.Busy, "session already holds %d connections", maxTied)
	}
	s.tied[c] = struct{}{}
	return nil
}

// Untie forgets c (parked or warm): it was used, or went away.
func (s *Session) Untie(c io.Closer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tied, c)
	for i, p := range s.parked {
		if p == c {
			s.parked = append(s.parked[:i], s.parked[i+1:]...)
			break
		}
	}
}

// takeParked returns the newest parked connection, or nil.
func (s *Session) takeParked() ParkedConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.parked)
	if n == 0 {
		return nil
	}
	pc := s.parked[n-1]
	s.parked = s.parked[:n-1]
	delete(s.tied, pc)
	return pc
}

// Parked returns how many connections the agent has parked.
func (s *Session) Parked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.parked)
}

// deliver sends the stream's accept to the agent: down a parked connection
// (with the early data) when it has one, else on its control channel,
// waiting up to wait for room there. earlySent says the early data went.
func (s *Session) deliver(ctx context.Context, at *attempt, acc Accept, wait time.Duration) (earlySent bool, err error) {
	for {
		pc := s.takeParked()
		if pc == nil {
			break
		}
		if !at.claimed.CompareAndSwap(false, true) {
			pc.Close()
			return false, status.Errorf(status.Internal, "stream claimed twice")
		}
		g, ok := s.grant(acc.HC)
		if !ok {
			pc.Close()
			return false, status.Errorf(status.NoListener, "agent no longer listens for %q", acc.HC)
		}
		at.listenGrant = g
		at.parked = pc
		if err := pc.Offer(&Claim{at: at}, acc); err != nil {
			at.parked = nil
			pc.Close()
			at.claimed.Store(false)
			continue // that one died while parked: the next, or the channel
		}
		return true, nil
	}
	dctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	acc.Early = nil // control frames stay small: the core writes it once joined
	if err := s.conn.Accept(dctx, acc); err != nil {
		return false, status.Errorf(status.NoListener, "agent %s: %v", s.remote, err)
	}
	return false, nil
}

// Close unregisters the session, detaches everything it listened for,
// closes the connections tied to it and fails the streams offered to it.
func (s *Session) Close() {
	c := s.core
	c.mu.Lock()
	s.mu.Lock()
	var tied []io.Closer
	if !s.closed {
		s.closed = true
		for hc := range s.attached {
			s.detachLocked(hc)
		}
		delete(c.sessions, s)
		delete(c.byID, s.id)
		for t := range s.tied {
			tied = append(tied, t)
		}
		s.tied, s.parked = map[io.Closer]struct{}{}, nil
	}
	s.mu.Unlock()
	var orphans []*attempt
	for _, at := range c.pending {
		if at.session == s {
			orphans = append(orphans, at)
		}
	}
	c.mu.Unlock()
	for _, t := range tied {
		t.Close()
	}
	// Streams this agent was asked to serve but has not joined go to
	// another agent now rather than at the join timeout.
	for _, at := range orphans {
		if at.claimed.CompareAndSwap(false, true) {
			at.deliver(answer{err: status.Errorf(status.NoListener, "agent %s went away", s.remote)})
		}
	}
}
