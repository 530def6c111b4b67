package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
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

// Defaults of the core's Config.
const (
	// DefaultJoinTimeout bounds the wait for an agent's first answer to a
	// stream (an ACK, a JOIN, a result or a refusal). A healthy agent
	// answers in milliseconds; one that does not within this is taken out
	// of rotation and the stream is offered to the next agent.
	DefaultJoinTimeout = 2 * time.Second
	// DefaultDialTimeout bounds the wait after an agent acknowledged a
	// stream: it is dialling the resource (its own dial timeout is 10 s).
	DefaultDialTimeout = 15 * time.Second
	// DefaultPingInterval is how often the relay pings each control
	// channel. A channel silent for two intervals is closed; an agent that
	// missed one is out of rotation until it answers.
	DefaultPingInterval = 5 * time.Second
	// DefaultListenerWait is how long an open waits for an agent to attach
	// when one may be on its way: in the first seconds after the relay
	// started, or right after the last agent of the connection left (an
	// agent reconnecting after a relay restart or GOAWAY).
	DefaultListenerWait = 2 * time.Second
	// listenerWaitWindow is how long after start, or after the last
	// listener of a connection left, opens wait for one.
	listenerWaitWindow = 10 * time.Second
	// maxAttempts bounds how many agents one stream is offered to.
	maxAttempts = 8
)

// Config are the core's tunables. Zero fields take the defaults above (and
// those of rules for the limits).
type Config struct {
	JoinTimeout   time.Duration
	DialTimeout   time.Duration
	PingInterval  time.Duration
	ListenerWait  time.Duration // negative: none
	RotationGrace time.Duration // negative: none
	// Pending caps the streams of one hybrid connection waiting for an
	// agent; PendingPerKey those of one sender key. Beyond: busy.
	Pending, PendingPerKey int
	// RelayID names this relay in WELCOME frames and logs.
	RelayID string
}

func (c Config) withDefaults() Config {
	if c.JoinTimeout <= 0 {
		c.JoinTimeout = DefaultJoinTimeout
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.PingInterval <= 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.ListenerWait < 0 {
		c.ListenerWait = 0
	} else if c.ListenerWait == 0 {
		c.ListenerWait = DefaultListenerWait
	}
	if c.RotationGrace < 0 {
		c.RotationGrace = 0 // no grace: a rotated key's streams end at once
	} else if c.RotationGrace == 0 {
		c.RotationGrace = 24 * time.Hour
	}
	if c.Pending <= 0 {
		c.Pending = 1024
	}
	if c.PendingPerKey <= 0 {
		c.PendingPerKey = 256
	}
	return c
}

// StreamID names a stream at the relay. It is random and single-use: it only
// travels on authenticated channels, and a native join must also carry a
// valid listen token for the stream's hybrid connection.
type StreamID [16]byte

// String returns the id in hex.
func (id StreamID) String() string { return hex.EncodeToString(id[:]) }

// SessionID names a control channel at the relay; PARK and WARM name it.
type SessionID [16]byte

// String returns the id in hex.
func (id SessionID) String() string { return hex.EncodeToString(id[:]) }

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
	// Early is the app's first bytes (native senders only). A front door
	// that can carry them with the notice (a parked connection) does; the
	// others leave them to the core, which writes them once joined.
	Early []byte
	// Azure is what a WebSocket sender's request adds (azure.go); nil
	// for native senders.
	Azure *AzureOpen
}

// ListenerConn is a front door's side of a control channel: the core pushes
// notices through it. Implementations must not block for long.
type ListenerConn interface {
	// Accept asks the agent to serve a stream. It may wait, for at most
	// until ctx is done, for room in the channel's queue (back-pressure),
	// but must not close a channel because it is momentarily full.
	Accept(ctx context.Context, a Accept) error
	// Detached tells the client the relay ended its attachment to hc.
	Detached(hc string, why error)
	// Close ends the control channel.
	Close(why error)
}

// GoAwayer is a ListenerConn that can tell its client the relay is going
// away, so it connects a new channel at once while this one still works.
type GoAwayer interface {
	GoAway(why error)
}

// Peer is one side of a stream as a front door hands it to the core: the
// connection that will carry raw bytes, and how to tell that side in its own
// wire format that the stream is established.
type Peer struct {
	Conn net.Conn
	// Ready sends the "ok, raw bytes follow" answer on Conn; nil when
	// nothing is to be sent (the side already knows).
	Ready func() error
	// Addr is the peer's address, for logs.
	Addr string
	// Serve, when set, runs the copy of this peer's bytes on the peer's
	// own goroutine, one that stays with the stream anyway (a WebSocket
	// handler's, which must not return while its connection lives); it
	// must call run exactly once. Without it the copy gets a fresh
	// goroutine: not the one that read a handshake, whose stack grew with
	// it and would stay that size for the stream's life.
	Serve func(run func())
	// EarlySent says the stream's early data already reached this peer
	// (with the ACCEPT on a parked connection).
	EarlySent bool
}

// abort closes a peer that will not be used and releases its goroutine.
func (p *Peer) abort() {
	p.Conn.Close()
	if p.Serve != nil {
		p.Serve(func() {})
	}
}

// serveHere returns a Peer.Serve that hands the copy to the calling
// goroutine, and the wait that runs it there.
func serveHere() (serve func(run func()), wait func()) {
	runc := make(chan func(), 1)
	return func(run func()) { runc <- run }, func() { (<-runc)() }
}

// serveInline is the Peer.Serve of a peer whose goroutine calls Splice
// itself: the copy runs right there.
func serveInline(run func()) { run() }

// OpenRequest is a sender's request for a stream.
type OpenRequest struct {
	HC     string
	Token  string
	Target string
	Remote string // sender's address
	// Headers are forwarded to WebSocket listeners (see Accept.Headers).
	Headers map[string]string
	// Early is the app's first bytes, sent to the agent with the stream.
	Early []byte
	// Session is the sender's control channel, if it named one: the
	// stream is then re-proven with the session's attachments.
	Session SessionID
	// Progress, if set, is called when setting the stream up takes a while
	// (an agent is dialling, the stream moves to another agent, or every
	// ProgressEvery while it waits), so the front door can tell the sender
	// to keep waiting. Calls never overlap and none comes after Open
	// returns.
	Progress func()
	// Azure is passed to the listener (see Accept.Azure).
	Azure *AzureOpen

	// forwarded marks an open another relay of the fleet forwarded here:
	// authorised there, never forwarded again.
	forwarded bool
	grant     Grant // the sender's grant, for a forwarded open
}

// Core is the relay's heart: who listens for what, authentication, pairing,
// limits and revocation. It knows no wire format; front doors translate
// their protocol into calls on it.
type Core struct {
	log     hclog.Logger
	cfg     atomic.Pointer[Config]
	auth    atomic.Pointer[authState]
	started time.Time

	mu        sync.Mutex
	closing   bool // no new sessions or streams
	goingAway bool // no new sessions; streams still open
	sessions  map[*Session]struct{}
	byID      map[SessionID]*Session
	hcs       map[string]*hcState
	pending   map[StreamID]*attempt
	streams   map[*activeStream]struct{}
	passes    map[*stream.Joint]bool // connections carried whole to another relay; true: parked
	held      map[net.Conn]struct{}  // idle client connections tied to no session here (Hold)
	streamWG  sync.WaitGroup         // streams and passes

	stats Stats
	fails *limit.Failures

	// maxListeners caps the sessions listening on one hybrid connection
	// (admitListener, azure.go); 0 = no cap.
	maxListeners atomic.Int64
	requestTurn  int // HTTP mode's rotation over listeners (httpmode.go), under mu

	// fleet carries streams to other relays; nil for a lone relay. prefix
	// starts every stream and session id this relay makes, so a relay that
	// receives a join, a park or a rendezvous for one can tell whose it is.
	fleet  Fleet
	prefix [4]byte

	obs observer // per-connection metrics, events, access lines (metrics.go)
}

// Fleet is what the core needs of a relay fleet (relay/fleet provides it,
// wired in by the binary; the core knows no directory and no Redis).
type Fleet interface {
	// HasRemote reports whether another relay has a listener for hc.
	HasRemote(hc string) bool
	// Holders returns the id prefixes of the other relays with a healthy
	// listener for hc, the most listeners first (for Pipe).
	Holders(hc string) [][4]byte
	// Forward offers a stream that no agent here can take to relays whose
	// agents can; on success the connection carries it, joined. A refusal
	// is a *status.Error; status.NoListener when no relay takes it (with
	// "fleet directory unavailable" when the directory is down).
	Forward(ctx context.Context, req RemoteOpen) (net.Conn, error)
	// Reproved tells the other relays that a sender session of this one
	// proved a key again (for its streams that run through them).
	Reproved(session SessionID, hc string, g Grant)
	// Changed nudges the fleet: a listener attached, left, or changed
	// health here. It must not block (it may be called under the core's
	// lock) and must not call back into the core.
	Changed()
	// Pipe opens a connection to the relay whose ids start with prefix
	// and sends it a client connection's first bytes (already read), head,
	// and the client's address, remote; the caller copies the rest
	// (Core.PassThrough). kind is wire.PipeData or wire.PipeHTTP.
	Pipe(ctx context.Context, prefix [4]byte, kind uint8, remote string, head []byte) (net.Conn, error)
	// Status says how the fleet looks from here.
	Status() FleetStatus
}

// FleetStatus is the fleet as one relay sees it.
type FleetStatus struct {
	ID        string `json:"id"`
	Directory bool   `json:"directory"` // the directory answers
	Relays    int    `json:"relays"`    // other relays it knows
}

// Listeners returns, by hybrid connection, how many agents here are
// healthy and in rotation: what the fleet's directory advertises.
func (c *Core) Listeners() map[string]int {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for hc, h := range c.hcs {
		for _, s := range h.listeners {
			if rank, _ := s.rank(hc, now); rank == 0 {
				out[hc]++
			}
		}
	}
	return out
}

// RemoteOpen is a stream forwarded between relays: authorised where it
// landed, served where its agent listens.
type RemoteOpen struct {
	HC, Target, SenderAddr string
	// Headers and Azure are a WebSocket sender's (see OpenRequest).
	Headers map[string]string
	Azure   *AzureOpen
	// Grant is the sender's, as the landing relay verified it.
	Grant Grant
	Early []byte
	// Session is the sender's control channel, if it named one (a session
	// of any relay of the fleet).
	Session SessionID
	// Progress, if set, is called when the remote relay says it is
	// working on it.
	Progress func()
}

// Stats are the core's running counters.
type Stats struct {
	StreamsOpened, StreamsFailed, AuthFailures atomic.Int64
	BytesUp, BytesDown                         atomic.Int64
	// Retried counts streams that moved to another agent (a missed join or
	// a transient refusal); Busy counts opens refused over a limit.
	Retried, Busy atomic.Int64
}

// hcState is what the core knows of one hybrid connection.
type hcState struct {
	listeners    []*Session // agent sessions attached, in attach order
	pending      int
	pendingByKey map[string]int
	// lastLeft is when its last listener left; an open soon after waits
	// for one to come back (ListenerWait).
	lastLeft time.Time
	// attached is closed (and replaced) whenever a listener attaches.
	attached chan struct{}
}

// NewCore returns a core with the given authentication rules and tunables.
func NewCore(log hclog.Logger, a *Auth, cfg Config) *Core {
	c := &Core{
		log:      log,
		started:  time.Now(),
		sessions: map[*Session]struct{}{},
		byID:     map[SessionID]*Session{},
		hcs:      map[string]*hcState{},
		pending:  map[StreamID]*attempt{},
		streams:  map[*activeStream]struct{}{},
		passes:   map[*stream.Joint]bool{},
		held:     map[net.Conn]struct{}{},
		fails:    limit.NewFailures(),
	}
	c.SetConfig(cfg)
	c.SetAuth(a)
	return c
}

// SetConfig replaces the tunables; they apply to what starts from now on.
func (c *Core) SetConfig(cfg Config) {
	cfg = cfg.withDefaults()
	c.cfg.Store(&cfg)
}

// Config returns the tunables in force.
func (c *Core) Config() Config { return *c.cfg.Load() }

// Stats returns the core's counters.
func (c *Core) Stats() *Stats { return &c.stats }

func (c *Core) hcLocked(name string) *hcState {
	h := c.hcs[name]
	if h == nil {
		h = &hcState{pendingByKey: map[string]int{}, attached: make(chan struct{})}
		c.hcs[name] = h
	}
	return h
}

// newID returns random bytes for a stream or session id, starting with
// the relay's prefix in a fleet.
func (c *Core) newID() ([16]byte, error) {
	var id [16]byte
	_, err := rand.Read(id[:])
	if c.fleet != nil {
		copy(id[:4], c.prefix[:])
	}
	return id, err
}

// SetFleet joins the core to a fleet, with prefix for its ids. Call it
// before serving.
func (c *Core) SetFleet(f Fleet, prefix [4]byte) {
	c.fleet, c.prefix = f, prefix
}

// Foreign reports whether id (a stream's or a session's) was made by
// another relay of the fleet, and that relay's prefix.
func (c *Core) Foreign(id [16]byte) (prefix [4]byte, foreign bool) {
	copy(prefix[:], id[:4])
	return prefix, c.fleet != nil && prefix != c.prefix
}

// fleetChanged nudges the fleet when listeners change.
func (c *Core) fleetChanged() {
	if c.fleet != nil {
		c.fleet.Changed()
	}
}

// Open authenticates a sender, offers the stream to a listening agent (the
// least loaded healthy one first, then the next when one does not answer in
// time or answers a transient failure) and waits until one joins. On
// success the returned pairing must be passed to Splice.
func (c *Core) Open(ctx context.Context, req OpenRequest) (*Pairing, error) {
	if req.HC == "" {
		return nil, status.Errorf(status.BadRequest, "no hybrid connection named")
	}
	var grant Grant
	if req.forwarded {
		grant = req.grant
		a := c.auth.Load()
		if a == nil || a.Auth == nil {
			return nil, status.Errorf(status.Internal, "no rules loaded")
		}
		if _, ok := a.connections[req.HC]; !ok {
			return nil, status.Errorf(status.NotFound, "no hybrid connection named %q at this relay", req.HC)
		}
		if a.judge(grant) == revoked {
			return nil, status.Errorf(status.Unauthorized, "key %q revoked", grant.Rule)
		}
	} else {
		var err error
		if grant, err = c.authorize(req.HC, req.Token, sas.Send, req.Remote); err != nil {
			return nil, err
		}
	}
	cfg := c.cfg.Load()
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return nil, status.Errorf(status.ShuttingDown, "relay is stopping")
	}
	h := c.hcLocked(req.HC)
	if h.pending >= cfg.Pending {
		c.mu.Unlock()
		c.stats.Busy.Add(1)
		return nil, status.Errorf(status.Busy, "%d streams of %q already wait for an agent", h.pending, req.HC)
	}
	if h.pendingByKey[grant.Rule] >= cfg.PendingPerKey {
		c.mu.Unlock()
		c.stats.Busy.Add(1)
		return nil, status.Errorf(status.Busy, "%d streams of key %q already wait for an agent", h.pendingByKey[grant.Rule], grant.Rule)
	}
	h.pending++
	h.pendingByKey[grant.Rule]++
	sender := c.byID[req.Session]
	c.mu.Unlock()
	if req.Progress != nil {
		var stop func()
		req.Progress, stop = keepProgressing(req.Progress)
		defer stop()
	}
	defer func() {
		c.mu.Lock()
		h.pending--
		if h.pendingByKey[grant.Rule]--; h.pendingByKey[grant.Rule] <= 0 {
			delete(h.pendingByKey, grant.Rule)
		}
		c.mu.Unlock()
	}()
	if sender != nil && (sender.role != roleSender || !sender.proves(req.HC)) {
		sender = nil // only a sender session attached to hc may adopt the stream
	}
	var foreign SessionID
	if _, ok := c.Foreign(req.Session); ok && sender == nil {
		foreign = req.Session // re-proven through the fleet
	}

	tried := map[*Session]bool{}
	var last error
	for n := 0; n < maxAttempts; n++ {
		s, err := c.choose(ctx, req.HC, tried, n > 0)
		if err != nil {
			if c.fleet != nil && !req.forwarded {
				// No agent (left) here: one of the fleet's may take it.
				pr, ferr := c.forward(ctx, req, grant)
				if ferr == nil {
					pr.senderSession, pr.foreignSession = sender, foreign
					return pr, nil
				}
				if status.CodeOf(ferr) != status.NoListener || last == nil {
					return nil, ferr
				}
			}
			if last != nil {
				return nil, last
			}
			return nil, err
		}
		tried[s] = true
		if n > 0 {
			c.stats.Retried.Add(1)
			if req.Progress != nil {
				req.Progress()
			}
		}
		pr, err := c.offer(ctx, cfg, s, req, grant)
		if err == nil {
			pr.senderSession, pr.foreignSession = sender, foreign
			pr.forwarded = req.forwarded
			return pr, nil
		}
		if !transient(err) || ctx.Err() != nil {
			return nil, err
		}
		c.log.Debug("agent did not take the stream; trying the next", "hc", req.HC, "agent", s.name, "remote", s.remote, "error", err)
		last = err
	}
	return nil, last
}

// ProgressEvery is how often a stream that is still being set up tells
// its sender so: a sender that hears nothing for a few seconds may take
// the relay for frozen and try another, whatever join_timeout says.
const ProgressEvery = time.Second

// keepProgressing calls progress every ProgressEvery until stop, and
// returns it serialised with those calls, for the open's own use; stop
// waits for a call in flight.
func keepProgressing(progress func()) (serial func(), stop func()) {
	var mu sync.Mutex
	serial = func() {
		mu.Lock()
		defer mu.Unlock()
		if progress != nil {
			progress()
		}
	}
	t := time.NewTicker(ProgressEvery)
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		for {
			select {
			case <-done:
				return
			case <-t.C:
				serial()
			}
		}
	}()
	return serial, func() {
		t.Stop()
		close(done)
		<-exited
		mu.Lock()
		progress = nil // a late call from the open's own path does nothing
		mu.Unlock()
	}
}

// transient reports whether another agent may succeed where one failed.
func transient(err error) bool {
	switch status.CodeOf(err) {
	case status.Timeout, status.Unreachable, status.Busy, status.NoListener, status.ShuttingDown:
		return true
	}
	return false
}

// choose picks the agent for the next offer of a stream of hc: healthy
// agents in rotation before others, the least loaded first, ties at
// random; agents already tried are skipped. With none, it may wait for one
// to attach (see DefaultListenerWait) unless this is a retry.
func (c *Core) choose(ctx context.Context, hc string, tried map[*Session]bool, retry bool) (*Session, error) {
	cfg := c.cfg.Load()
	for waited := false; ; waited = true {
		now := time.Now()
		c.mu.Lock()
		h := c.hcLocked(hc)
		var best *Session
		bestRank, bestLoad := 0, 0
		ties := 0
		for _, s := range h.listeners {
			if tried[s] {
				continue
			}
			rank, load := s.rank(hc, now)
			switch {
			case best == nil || rank < bestRank || rank == bestRank && load < bestLoad:
				best, bestRank, bestLoad, ties = s, rank, load, 1
			case rank == bestRank && load == bestLoad:
				ties++
				if randN(ties) == 0 { // reservoir: a uniform pick among equals
					best = s
				}
			}
		}
		wait := h.attached
		maybeComing := !retry && !waited && cfg.ListenerWait > 0 && len(h.listeners) == 0 &&
			(now.Sub(c.started) < listenerWaitWindow || !h.lastLeft.IsZero() && now.Sub(h.lastLeft) < listenerWaitWindow)
		c.mu.Unlock()
		if best == nil && maybeComing && c.fleet != nil && c.fleet.HasRemote(hc) {
			maybeComing = false // another relay has one now: no need to wait here
		}
		if best != nil {
			return best, nil
		}
		if !maybeComing {
			if retry {
				return nil, status.Errorf(status.NoListener, "no other agent is listening for %q", hc)
			}
			return nil, status.Errorf(status.NoListener, "no agent is listening for %q", hc)
		}
		t := time.NewTimer(cfg.ListenerWait)
		select {
		case <-wait:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		if ctx.Err() != nil {
			return nil, status.Errorf(status.ShuttingDown, "open cancelled: %v", context.Cause(ctx))
		}
	}
}

// attempt is one offer of a stream to one agent.
type attempt struct {
	id      StreamID
	req     *OpenRequest
	session *Session
	answers chan answer   // the agent's acks and its one final word
	done    chan struct{} // closed when the offer is over, taken or not
	// listenGrant is set by Claim: the key the agent side used.
	listenGrant Grant
	claimed     atomic.Bool
	// parked is the connection the offer went down, if any.
	parked ParkedConn

	mu   sync.Mutex
	over bool
}

// answer is one word from the agent on an attempt.
type answer struct {
	ack   bool  // alive, still dialling
	err   error // refusal or failure
	peer  *Peer // joined: the agent's connection
	grant Grant // the agent side's grant, with peer
}

// answersBuffer holds an attempt's final answer and a few acks; extra acks
// are dropped (one is enough).
const answersBuffer = 4

// deliver hands x to the attempt; false when the offer is over (the caller
// then owns what x carries).
func (a *attempt) deliver(x answer) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.over {
		return false
	}
	if x.ack && len(a.answers) >= answersBuffer-1 {
		return true // keep room for the final answer
	}
	a.answers <- x // never blocks: at most one final answer per attempt
	return true
}

// finish ends the offer and returns answers nobody read.
func (a *attempt) finish() []answer {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.over = true
	close(a.done)
	var left []answer
	for len(a.answers) > 0 {
		left = append(left, <-a.answers)
	}
	return left
}

// offer offers a stream to agent s and waits for its answer.
func (c *Core) offer(ctx context.Context, cfg *Config, s *Session, req OpenRequest, grant Grant) (*Pairing, error) {
	id, err := c.newID()
	if err != nil {
		return nil, status.Errorf(status.Internal, "stream id: %v", err)
	}
	at := &attempt{id: id, req: &req, session: s, answers: make(chan answer, answersBuffer), done: make(chan struct{})}
	c.mu.Lock()
	c.pending[id] = at
	c.mu.Unlock()
	s.addActive(1)
	taken := false
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		for _, x := range at.finish() {
			if x.peer != nil { // an agent connection that arrived as we gave up must not leak
				x.peer.abort()
			}
		}
		if !taken {
			s.addActive(-1)
		}
	}()

	acc := Accept{ID: id, HC: req.HC, Target: req.Target, SenderKey: grant.Rule, SenderAddr: req.Remote,
		Headers: req.Headers, Early: req.Early, Azure: req.Azure}
	t := time.NewTimer(cfg.JoinTimeout)
	defer t.Stop()
	earlySent, err := s.deliver(ctx, at, acc, cfg.JoinTimeout)
	if err != nil {
		return nil, err
	}
	defer func() {
		if !taken && at.parked != nil {
			at.parked.Close() // its reader then gives up on the offer
		}
	}()
	acked := false
	for {
		select {
		case x := <-at.answers:
			switch {
			case x.ack:
				if !acked {
					acked = true
					t.Reset(cfg.DialTimeout)
					if req.Progress != nil {
						req.Progress()
					}
				}
				s.heard()
				continue
			case x.err != nil:
				s.heard()
				if status.CodeOf(x.err) == status.Unreachable {
					s.setHealth(req.HC, false, x.err.Error())
				}
				return nil, x.err
			}
			taken = true
			s.heard()
			x.peer.EarlySent = x.peer.EarlySent || earlySent
			return &Pairing{ID: id, HC: req.HC, Agent: *x.peer, agentSession: s, early: req.Early,
				senderGrant: grant, listenerGrant: x.grant}, nil
		case <-t.C:
			if acked {
				return nil, status.Errorf(status.Timeout, "agent %s acknowledged the stream but did not connect within %s", s.remote, cfg.DialTimeout)
			}
			s.missedJoin()
			c.log.Warn("agent missed a join; out of rotation until it answers", "hc", req.HC, "agent", s.name, "remote", s.remote, "after", cfg.JoinTimeout)
			return nil, status.Errorf(status.Timeout, "agent %s did not answer within %s", s.remote, cfg.JoinTimeout)
		case <-ctx.Done():
			return nil, status.Errorf(status.ShuttingDown, "open cancelled: %v", context.Cause(ctx))
		}
	}
}

// Pairing is a stream whose agent side has joined. The front door must
// pass it to Splice, or to Abort if its sender went away meanwhile.
type Pairing struct {
	ID    StreamID
	HC    string
	Agent Peer

	agentSession, senderSession *Session  // agentSession is nil for a stream forwarded to another relay
	foreignSession              SessionID // the sender's session, on another relay
	forwarded                   bool      // forwarded here by another relay
	early                       []byte
	senderGrant, listenerGrant  Grant
}

// Abort ends a pairing that will not be spliced (its sender's handshake
// failed): the agent's connection is closed.
func (pr *Pairing) Abort() {
	pr.agentSession.addActive(-1)
	pr.Agent.abort()
}

// forward carries the stream to a relay of the fleet whose agent takes it.
func (c *Core) forward(ctx context.Context, req OpenRequest, grant Grant) (*Pairing, error) {
	conn, err := c.fleet.Forward(ctx, RemoteOpen{HC: req.HC, Target: req.Target, SenderAddr: req.Remote,
		Headers: req.Headers, Azure: req.Azure,
		Grant: grant, Early: req.Early, Session: req.Session, Progress: req.Progress})
	if err != nil {
		return nil, err
	}
	id, _ := c.newID()
	return &Pairing{ID: id, HC: req.HC, Agent: Peer{Conn: conn, Addr: conn.RemoteAddr().String(), EarlySent: true},
		senderGrant: grant}, nil
}

// OpenForwarded opens a stream another relay of the fleet authorised and
// carried here (over conn's peer connection), for a local agent; it is
// never forwarded again. The grant is judged by this relay's rules too:
// a key revoked here is refused.
func (c *Core) OpenForwarded(ctx context.Context, r RemoteOpen, remote string) (*Pairing, error) {
	return c.Open(ctx, OpenRequest{HC: r.HC, Target: r.Target, Remote: r.SenderAddr, Early: r.Early,
		Headers: r.Headers, Azure: r.Azure,
		Session: r.Session, Progress: r.Progress, forwarded: true, grant: r.Grant})
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
	at *attempt
}

// Join hands the agent's connection to the stream; the core owns it. If the
// stream was given up meanwhile, the connection is closed.
func (cl *Claim) Join(peer Peer) {
	if !cl.at.deliver(answer{peer: &peer, grant: cl.at.listenGrant}) {
		peer.abort()
	}
}

// Ack passes on that the agent is alive and dialling the resource.
func (cl *Claim) Ack() { cl.at.deliver(answer{ack: true}) }

// Fail ends the stream with err (an agent's rejection, or a failed upgrade).
func (cl *Claim) Fail(err error) { cl.at.deliver(answer{err: err}) }

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
	at := c.pending[id]
	if at == nil || at.req.HC != hc || !at.claimed.CompareAndSwap(false, true) {
		c.mu.Unlock()
		return nil, status.Errorf(status.NotFound, "no pending stream %s for %q (expired or already joined)", id, hc)
	}
	c.mu.Unlock()
	if token == "" {
		g, ok := at.session.grant(hc)
		if !ok {
			return nil, status.Errorf(status.Unauthorized, "no token, and the notified agent no longer listens for %q", hc)
		}
		grant = g
	}
	at.listenGrant = grant
	return &Claim{at: at}, nil
}

// answerFrom passes an agent's word on stream id to its attempt, if s is
// the agent it was offered to.
func (c *Core) answerFrom(s *Session, id StreamID, x answer) {
	c.mu.Lock()
	at := c.pending[id]
	c.mu.Unlock()
	if at != nil && at.session == s && (x.ack || at.claimed.CompareAndSwap(false, true)) {
		at.deliver(x)
	}
}

// Shutdown stops the core: new sessions and streams are refused, control
// channels are closed (agents reconnect elsewhere), live streams get until
// ctx is done to finish, then are closed.
func (c *Core) Shutdown(ctx context.Context) {
	c.mu.Lock()
	c.closing = true
	c.goingAway = true
	for j, parked := range c.passes {
		if parked && j.AToB.Load() == 0 && j.BToA.Load() == 0 {
			j.Close() // an idle parked connection: its agent parks another elsewhere
		}
	}
	for conn := range c.held {
		conn.Close() // its client opens another, elsewhere
	}
	c.mu.Unlock()
	c.CloseSessions(status.Errorf(status.ShuttingDown, "relay is stopping"))
	done := make(chan struct{})
	go func() { c.streamWG.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	c.mu.Lock()
	for st := range c.streams {
		st.cut()
	}
	for j := range c.passes {
		j.Close()
	}
	c.mu.Unlock()
	<-done
}

// Hold registers an idle client connection that waits for its first
// frame tied to no session of this relay (a proxy's warm connection for a
// session at another relay of the fleet): Shutdown closes it at once,
// since no session's end will. It reports false, and closes conn, when
// the relay is already stopping. The caller must Release it.
func (c *Core) Hold(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		conn.Close()
		return false
	}
	c.held[conn] = struct{}{}
	return true
}

// Release ends what Hold began: the connection carries a stream now, or
// is gone.
func (c *Core) Release(conn net.Conn) {
	c.mu.Lock()
	delete(c.held, conn)
	c.mu.Unlock()
}

// GoAway tells every client the relay is going away (a GOAWAY frame, or
// close code 1001 on WebSocket channels that cannot say more) and refuses
// new control channels, so clients connect elsewhere — to the relay that
// takes over the listening sockets, or another of the fleet — while their
// channels here keep working until CloseSessions.
func (c *Core) GoAway(why error) {
	c.mu.Lock()
	c.goingAway = true
	sessions := c.sessionsLocked()
	c.mu.Unlock()
	for _, s := range sessions {
		if g, ok := s.conn.(GoAwayer); ok {
			g.GoAway(why)
		}
	}
}

// GoingAway reports whether the relay is stopping or handing over: it
// takes no new control channels.
func (c *Core) GoingAway() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.goingAway
}

// CloseSessions closes every control channel and the connections parked on
// them. Streams live on.
func (c *Core) CloseSessions(why error) {
	c.mu.Lock()
	c.goingAway = true
	sessions := c.sessionsLocked()
	c.mu.Unlock()
	for _, s := range sessions {
		s.conn.Close(why)
		s.Close()
	}
}

// sessionCount returns how many control channels are open.
func (c *Core) sessionCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sessions)
}

func (c *Core) sessionsLocked() []*Session {
	out := make([]*Session, 0, len(c.sessions))
	for s := range c.sessions {
		out = append(out, s)
	}
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
	c.denied(hc, need, remote, err)
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

// errClosed reports a session that ended.
var errClosed = errors.New("session closed")
