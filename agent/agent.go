// Package agent is the on-premises side: it dials out to every relay,
// listens for its hybrid connections, and for each accepted stream dials the
// one endpoint that connection publishes — never anything else, whatever a
// relay asks for.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/buildinfo"
	"github.com/hybridconn/hybrid/internal/endpoint"
	"github.com/hybridconn/hybrid/internal/events"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/stream"
	"github.com/hybridconn/hybrid/internal/wire"
	"github.com/hybridconn/hybrid/rules"
)

// Defaults of the agent.
const (
	// DialTimeout bounds the dial to a published resource. The relay waits
	// for it once the agent acknowledged the stream.
	DialTimeout = 10 * time.Second
	// ackAfter is how long a dial may take before the agent tells the
	// relay it is alive and still dialling (so the relay waits rather than
	// offering the stream to another agent). Fast dials need no ACK.
	ackAfter = 100 * time.Millisecond
	// TokenTTL is the lifetime of the listen tokens the agent mints; they are
	// renewed at three quarters of it.
	TokenTTL = time.Hour
	// DefaultGrace is how long live streams may go on after a stop is asked for.
	DefaultGrace = 10 * time.Second
	// Reconnection: a relay that cannot be reached is tried again every
	// downRetry (with jitter), whatever the length of the outage, so the
	// agent is back within about that much of the relay coming back. Only a
	// relay that answers and refuses backs off, up to maxBackoff.
	downRetry  = time.Second
	maxBackoff = 30 * time.Second
	// autoReprobe is how often an agent on the WebSocket fallback of
	// transport: auto checks whether the native protocol works again.
	autoReprobe = 30 * time.Second
)

// Agent runs an agent section. Its configuration can be replaced while it
// runs (Apply): connections attach and detach, and live streams that the new
// configuration no longer permits are cut.
type Agent struct {
	log    hclog.Logger
	dialer net.Dialer
	// Grace is how long live streams may go on after ctx is done; zero means DefaultGrace.
	Grace time.Duration

	cfg   atomic.Pointer[rules.Agent]
	audit atomic.Pointer[Audit]

	mu      sync.Mutex
	runCtx  context.Context    // set by Run; nil before
	relays  map[string]*runner // by relayKey
	changed chan struct{}      // closed and replaced by every Apply and health change
	streams map[*liveStream]struct{}
	slots   map[string]int // streams (dialling or live) by connection
	total   int            // streams (dialling or live) in all
	health  map[string]*endpointHealth
	wg      sync.WaitGroup // stream and session goroutines

	opened, denied, unreachable, revoked, busy atomic.Int64
	// rogue counts accept notices dropped because they named an address
	// off the relay.
	rogue atomic.Int64
	// httpc forwards HTTP-mode requests (httpmode.go); made on first use.
	httpc atomic.Pointer[http.Client]
	obs   observer // per-connection metrics and events (metrics.go)
}

// runner keeps one relay's control channel.
type runner struct {
	cancel context.CancelFunc
	done   chan struct{}
	name   string

	mu        sync.Mutex
	connected bool
	transport string
	why       string // why the websocket fallback, under transport auto
	parked    int
	listening []string
	lastError string
	warnedFor map[string]bool // connections already logged as outside allow
}

// warned reports whether name was already logged as not served, and marks it.
func (r *runner) warned(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.warnedFor == nil {
		r.warnedFor = map[string]bool{}
	}
	w := r.warnedFor[name]
	r.warnedFor[name] = true
	return w
}

func (r *runner) set(connected bool, transport string, attached map[string]rules.AgentConnection, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.connected = connected
	r.transport = transport
	r.listening = r.listening[:0]
	for name := range attached {
		r.listening = append(r.listening, name)
	}
	switch {
	case err != nil:
		r.lastError = err.Error()
	case connected:
		r.lastError = ""
	}
}

// fallback records why c (transport auto) uses WebSocket, if it does.
func (r *runner) fallback(c relayclient.Client) {
	why := ""
	if f, ok := c.(relayclient.Fallbacker); ok {
		if err := f.Fallback(); err != nil {
			why = err.Error()
		}
	}
	r.mu.Lock()
	r.why = why
	r.mu.Unlock()
}

func (r *runner) addParked(n int) {
	r.mu.Lock()
	r.parked += n
	r.mu.Unlock()
}

// liveStream is a stream being copied, as Apply needs to judge it.
type liveStream struct {
	conn     io.Closer // to the relay; for an HTTP exchange, its cancel
	res      net.Conn  // to the resource; nil for an HTTP exchange
	hc       string
	target   string
	endpoint string
	ev       AuditEvent
	joint    *stream.Joint // the copy, counting as it goes
	since    time.Time
}

// cut ends the stream at once, both ways: resetting the resource side, so a
// server busy in a long query learns its client is gone.
func (s *liveStream) cut() {
	if s.joint != nil {
		s.joint.Close() // resets both sides, the relay's too
		return
	}
	s.conn.Close()
}

// New prepares an agent; it opens the audit log but does not dial yet.
func New(cfg *rules.Agent, log hclog.Logger) (*Agent, error) {
	a := &Agent{log: log, dialer: net.Dialer{Timeout: DialTimeout},
		relays: map[string]*runner{}, changed: make(chan struct{}), streams: map[*liveStream]struct{}{},
		slots: map[string]int{}, health: map[string]*endpointHealth{}}
	if cfg.Audit != "" {
		au, err := OpenAudit(cfg.Audit)
		if err != nil {
			return nil, err
		}
		a.audit.Store(au)
	}
	a.cfg.Store(cfg)
	return a, nil
}

func relayKey(ep rules.RelayEndpoint) string {
	return fmt.Sprintf("%s|%d|%d|%d|%t|%s|%s", ep.Host, ep.Control, ep.Data, ep.HTTP, ep.TLS, ep.Namespace, strings.Join(ep.RendezvousHosts, ","))
}

// Run keeps a control channel to every relay until ctx is done, then stops
// taking streams, lets live ones finish for the grace period and closes them.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	a.runCtx = ctx
	a.syncRelaysLocked(a.cfg.Load())
	a.syncHealthLocked(a.cfg.Load())
	a.mu.Unlock()
	<-ctx.Done()
	a.mu.Lock()
	var runners []*runner
	for _, r := range a.relays {
		runners = append(runners, r)
	}
	a.mu.Unlock()
	for _, r := range runners {
		<-r.done
	}
	grace := a.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	if n := stream.Drain(&a.wg, grace, func() int {
		a.mu.Lock()
		defer a.mu.Unlock()
		for s := range a.streams {
			s.cut()
		}
		return len(a.streams)
	}); n > 0 {
		a.log.Warn("grace period over; closed live streams", "streams", n)
	}
	a.audit.Load().Close()
	a.log.Info("agent stopped")
	return nil
}

// Apply replaces the configuration: new relays are dialled and removed ones
// dropped, each control channel attaches and detaches to match, and every
// live stream the new configuration does not permit (its connection gone,
// its endpoint changed, or outside allow) is closed at once.
func (a *Agent) Apply(cfg *rules.Agent) error {
	old := a.cfg.Load()
	if cfg.Audit != old.Audit {
		var au *Audit
		if cfg.Audit != "" {
			var err error
			if au, err = OpenAudit(cfg.Audit); err != nil {
				return err
			}
		}
		a.audit.Swap(au).Close()
	}
	a.cfg.Store(cfg)
	a.mu.Lock()
	if a.runCtx != nil {
		a.syncRelaysLocked(cfg)
		a.syncHealthLocked(cfg)
	}
	a.notifyLocked()
	var cut []*liveStream
	for s := range a.streams {
		if ep, err := Authorize(cfg, s.hc, s.target); err != nil || ep != s.endpoint {
			cut = append(cut, s)
		}
	}
	a.mu.Unlock()
	for _, s := range cut {
		_, err := Authorize(cfg, s.hc, s.target)
		reason := "endpoint changed"
		if err != nil {
			reason = err.Msg
		}
		a.log.Warn("stream cut: no longer permitted", "hc", s.hc, "stream", s.ev.Stream, "endpoint", s.endpoint, "reason", reason)
		ev := s.ev
		ev.Event, ev.Reason = "revoke", reason
		a.record(ev)
		a.revoked.Add(1)
		s.cut()
	}
	return nil
}

// notifyLocked wakes every session loop (a new config, a health change).
func (a *Agent) notifyLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// syncRelaysLocked starts a runner for every relay in cfg and stops the
// others.
func (a *Agent) syncRelaysLocked(cfg *rules.Agent) {
	want := map[string]rules.RelayEndpoint{}
	for _, ep := range cfg.Relays {
		want[relayKey(ep)+"|"+cfg.ProxyURL+"|"+cfg.Transport] = ep
	}
	for k, r := range a.relays {
		if _, ok := want[k]; !ok {
			r.cancel()
			delete(a.relays, k)
		}
	}
	for k, ep := range want {
		if _, ok := a.relays[k]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(a.runCtx)
		c := relayclient.New(ep.ClientEndpoint(), relayclient.WithProxy(cfg.ProxyURL), relayclient.WithTransport(cfg.Transport),
			relayclient.WithLogger(a.log))
		r := &runner{cancel: cancel, done: make(chan struct{}), name: c.String()}
		a.relays[k] = r
		go func() {
			defer close(r.done)
			a.runRelay(ctx, c, ep, r)
		}()
	}
}

func (a *Agent) changes() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.changed
}

// errGoAway ends a session whose relay said it is going away: the next one
// starts at once.
var errGoAway = errors.New("relay is going away")

// errBackToNative ends a WebSocket session of transport auto when the
// native protocol works again.
var errBackToNative = errors.New("the native protocol answers again; moving back from websocket")

// runRelay keeps one control channel up. A relay that cannot be reached is
// tried every downRetry; one that answers and refuses backs off; a relay
// going away is replaced at once, the old channel serving until it closes.
func (a *Agent) runRelay(ctx context.Context, c relayclient.Client, ep rules.RelayEndpoint, r *runner) {
	log := a.log.With("relay", c.String())
	backoff := downRetry
	var wg sync.WaitGroup // sessions replaced after a GOAWAY, still serving
	defer wg.Wait()
	for ctx.Err() == nil {
		start := time.Now()
		replaced := make(chan struct{})
		res := make(chan error, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			res <- a.session(ctx, c, ep, r, log, replaced)
		}()
		var err error
		select {
		case err = <-res:
		case <-replaced:
			log.Info("relay is going away; connecting a new control channel", "transport", c.Transport())
			backoff = downRetry
			continue // the old one serves on until the relay closes it
		}
		r.set(false, c.Transport(), nil, err)
		r.fallback(c)
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		var se *status.Error
		switch {
		case errors.Is(err, errBackToNative):
			log.Info(err.Error())
			continue
		case errors.As(err, &se) && se.Code == status.ShuttingDown:
			// A relay handing over to its successor: try again at once.
			wait = 50*time.Millisecond + rand.N(100*time.Millisecond)
		case errors.As(err, &se) || errors.Is(err, wire.ErrMalformed):
			// The relay answered and refused: back off.
			if time.Since(start) > time.Minute {
				backoff = downRetry
			}
			wait = backoff/2 + rand.N(backoff/2+1)
			backoff = min(backoff*2, maxBackoff)
		default:
			// Unreachable, or the channel broke: the relay may be back any
			// moment, so look again soon, with jitter against a stampede.
			backoff = downRetry
			wait = downRetry/2 + rand.N(downRetry)
		}
		log.Warn("no control channel to the relay; retrying", "error", err, "in", wait.Round(time.Millisecond))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
	}
}

func token(ep rules.RelayEndpoint, c rules.AgentConnection) string {
	return sas.NewToken(sas.ResourceURI(ep.Namespace, c.Name), c.KeyName, c.Key, time.Now().Add(TokenTTL))
}

// retryAttach is how long a connection the relay refused (or detached)
// waits before the agent tries again with a fresh token.
const retryAttach = 10 * time.Second

// session runs one control channel until it ends. On GOAWAY it closes
// replaced (so the runner starts the next channel) and serves on.
func (a *Agent) session(ctx context.Context, c relayclient.Client, ep rules.RelayEndpoint, r *runner, log hclog.Logger, replaced chan struct{}) error {
	cfg := a.cfg.Load()
	ctl, err := c.Listen(ctx, cfg.ID, buildinfo.Version)
	if err != nil {
		return err
	}
	defer ctl.Close()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	attached := map[string]rules.AgentConnection{} // what the relay has, with the key used
	var attachedMu sync.Mutex                      // attached is read by the pool's streams
	reported := map[string]bool{}                  // health as last told to the relay
	retry := time.NewTimer(retryAttach)
	defer retry.Stop()
	// sync attaches what the configuration has and the relay lacks (or has
	// with another key), detaches the rest, and tells the relay about
	// endpoints whose health changed.
	sync := func() error {
		cfg := a.cfg.Load()
		want := map[string]bool{}
		failed := false
		for _, conn := range cfg.Connections {
			if _, err := Authorize(cfg, conn.Name, ""); err != nil {
				// Published but outside allow: the cap wins.
				if _, ok := attached[conn.Name]; ok || !r.warned(conn.Name) {
					log.Error("not serving: "+err.Msg, "hc", conn.Name)
				}
				continue
			}
			want[conn.Name] = true
			if have, ok := attached[conn.Name]; ok && have.KeyName == conn.KeyName && have.Key == conn.Key {
				attachedMu.Lock()
				attached[conn.Name] = conn
				attachedMu.Unlock()
				continue
			}
			if err := ctl.Attach(ctx, conn.Name, token(ep, conn)); err != nil {
				if ctl.Err() != nil {
					return err
				}
				log.Error("relay refused to let us listen", "hc", conn.Name, "key_name", conn.KeyName, "error", err, "retry_in", retryAttach)
				a.note(events.Denial, status.CodeOf(err).Reason(), conn.Name, c.String(), "relay refused to let us listen: "+err.Error())
				attachedMu.Lock()
				delete(attached, conn.Name)
				attachedMu.Unlock()
				failed = true
				continue
			}
			attachedMu.Lock()
			attached[conn.Name] = conn
			attachedMu.Unlock()
			delete(reported, conn.Name) // a new attachment starts healthy at the relay
			log.Info("listening", "hc", conn.Name, "endpoint", conn.Endpoint, "transport", ctl.Transport())
		}
		for name := range attached {
			if !want[name] {
				ctl.Detach(name)
				attachedMu.Lock()
				delete(attached, name)
				attachedMu.Unlock()
				log.Info("stopped listening", "hc", name)
			}
		}
		for name := range attached {
			healthy, why := a.healthOf(name)
			if was, ok := reported[name]; (ok && was != healthy) || (!ok && !healthy) {
				code := status.OK
				if !healthy {
					code = status.Unreachable
				}
				ctl.Health(name, code, why)
				reported[name] = healthy
			}
		}
		if failed {
			retry.Reset(retryAttach)
		}
		r.set(true, ctl.Transport(), attached, nil)
		return nil
	}
	if err := sync(); err != nil {
		return err
	}
	r.fallback(c)
	lookup := func(hc string) (rules.AgentConnection, bool) {
		attachedMu.Lock()
		defer attachedMu.Unlock()
		conn, ok := attached[hc]
		return conn, ok
	}
	pool := newPool(a, ctl, ep, r, c.String(), lookup, log)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		pool.run(sctx)
	}()
	renew := time.NewTicker(TokenTTL * 3 / 4)
	defer renew.Stop()
	var reprobe <-chan time.Time
	rp, canReprobe := c.(relayclient.Reprober)
	if canReprobe && ctl.Transport() == relayclient.TransportWebSocket {
		t := time.NewTicker(autoReprobe)
		defer t.Stop()
		reprobe = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ctl.Done():
			return ctl.Err()
		case <-a.changes():
			if err := sync(); err != nil {
				return err
			}
		case <-retry.C:
			if err := sync(); err != nil {
				return err
			}
		case <-renew.C:
			for name, conn := range attached {
				if err := ctl.Renew(ctx, name, token(ep, conn)); err != nil {
					log.Error("token renewal refused", "hc", name, "error", err)
				}
			}
		case <-reprobe:
			if rp.NativeBack(ctx) {
				return errBackToNative // live streams carry on; new ones go native
			}
		case ev, ok := <-ctl.Events():
			if !ok {
				return ctl.Err()
			}
			switch {
			case ev.Dropped != nil:
				a.dropped(c.String(), ev.Dropped, log)
			case ev.Detached != nil:
				d := ev.Detached
				log.Error("relay ended our listening", "hc", d.HC, "error", d.Err, "retry_in", retryAttach)
				a.note(events.Denial, status.CodeOf(d.Err).Reason(), d.HC, c.String(), fmt.Sprintf("relay ended our listening: %v", d.Err))
				attachedMu.Lock()
				delete(attached, d.HC)
				attachedMu.Unlock()
				r.set(true, ctl.Transport(), attached, d.Err)
				retry.Reset(retryAttach)
			case ev.GoAway != nil:
				if replaced != nil {
					close(replaced)
					replaced = nil
				}
			case ev.Request != nil: // HTTP mode (httpmode.go)
				req := ev.Request
				_, attachedOK := lookup(req.HC)
				a.wg.Add(1)
				go func() {
					defer a.wg.Done()
					a.serveHTTP(ctx, c.String(), req, attachedOK, log)
				}()
			case ev.Accept != nil:
				// No parked connection was free: the pool is too small
				// for the load.
				pool.grow()
				acc := ev.Accept
				conn, attachedOK := lookup(acc.HC)
				a.serveAccept(ctx, &controlOffer{ctl: ctl, acc: acc}, ep, c.String(), acc, conn, attachedOK, log)
			}
		}
	}
}

// dropped records an accept notice the relay client refused to follow: the
// relay named a rendezvous address the agent must not dial.
func (a *Agent) dropped(relay string, d *relayclient.Dropped, log hclog.Logger) {
	log.Warn("dropped an accept notice naming an address off the relay", "relay", relay,
		"hc", d.Accept.HC, "address", d.Address, "reason", d.Reason)
	a.rogue.Add(1)
	a.audit.Load().Record(AuditEvent{Event: "deny", HC: d.Accept.HC, Stream: d.Accept.ID.String(),
		Target: d.Accept.Target, SenderKey: d.Accept.SenderKey, SenderAddr: d.Accept.SenderAddr, Relay: relay,
		Reason: "rendezvous address refused: " + d.Reason})
	a.note(events.Denial, "rogue_notice", d.Accept.HC, relay, "dropped an accept notice naming "+d.Address+": "+d.Reason)
}

// Authorize decides whether a stream for hc asking for target may be served,
// and returns the endpoint to dial: always the configured, canonical one —
// never the requested text. An empty target means the published endpoint.
// It is the agent's last line of defence and trusts nothing the relay says.
func Authorize(cfg *rules.Agent, hc, target string) (string, *status.Error) {
	var conn *rules.AgentConnection
	for i := range cfg.Connections {
		if cfg.Connections[i].Name == hc {
			conn = &cfg.Connections[i]
			break
		}
	}
	if conn == nil {
		return "", status.Errorf(status.NotFound, "this agent does not serve %q", hc)
	}
	if target != "" {
		canon, err := endpoint.Canonical(target)
		if err != nil {
			return "", status.Errorf(status.Refused, "target %q is not a valid endpoint", target)
		}
		if canon != conn.Endpoint {
			return "", status.Errorf(status.Refused, "target %s is not published by %q", canon, hc)
		}
	}
	if cfg.Allow != nil && !contains(cfg.Allow, conn.Endpoint) {
		return "", status.Errorf(status.Refused, "endpoint %s of %q is outside agent.allow", conn.Endpoint, hc)
	}
	return conn.Endpoint, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// offer is how one stream request reached the agent, and how to answer it:
// on the control channel (then a JOIN), or down a parked connection.
type offer interface {
	ack()
	refuse(code status.Code, msg string)
	// ready accepts the stream and returns the connection to the relay
	// that carries it; early holds bytes to write to the resource first.
	ready(ctx context.Context, token string) (conn net.Conn, early []byte, err error)
}

type controlOffer struct {
	ctl relayclient.Control
	acc *relayclient.Accept
}

func (o *controlOffer) ack()                                { o.ctl.Ack(o.acc.ID) }
func (o *controlOffer) refuse(code status.Code, msg string) { o.ctl.Reject(o.acc.ID, code, msg) }
func (o *controlOffer) ready(ctx context.Context, token string) (net.Conn, []byte, error) {
	c, err := o.ctl.Join(ctx, o.acc, token)
	return c, nil, err
}

type parkedOffer struct {
	p   *relayclient.Parked
	acc *relayclient.Accept
}

func (o *parkedOffer) ack()                                { o.p.Ack(o.acc.ID) }
func (o *parkedOffer) refuse(code status.Code, msg string) { o.p.Refuse(code, msg) }
func (o *parkedOffer) ready(context.Context, string) (net.Conn, []byte, error) {
	c, err := o.p.Ready()
	return c, o.acc.Early, err
}

// serveAccept takes a stream request from the control channel: the checks
// and the cap are decided here, synchronously, so a flood of requests is
// refused at once instead of queued; the dial and the copy run on a
// goroutine of their own.
func (a *Agent) serveAccept(ctx context.Context, o offer, ep rules.RelayEndpoint, relay string,
	acc *relayclient.Accept, conn rules.AgentConnection, attached bool, log hclog.Logger) {
	target, ok := a.admit(o, relay, acc, attached, log)
	if !ok {
		return
	}
	a.wg.Add(1)
	go a.serve(ctx, o, ep, relay, acc, conn, target, log, func() {
		a.release(acc.HC)
		a.wg.Done()
	})
}

// admit checks a stream request and takes a slot for it; false means it
// was refused (and answered).
func (a *Agent) admit(o offer, relay string, acc *relayclient.Accept, attached bool, log hclog.Logger) (string, bool) {
	ev := auditOf(relay, acc)
	target, serr := Authorize(a.cfg.Load(), acc.HC, acc.Target)
	if serr == nil && !attached {
		serr = status.Errorf(status.NotFound, "this agent is not listening for %q on this relay", acc.HC)
	}
	if serr != nil {
		log.Warn("stream denied", "hc", acc.HC, "stream", acc.ID.String(), "target", acc.Target, "sender", acc.SenderAddr,
			"sender_key", acc.SenderKey, "reason", serr.Msg)
		ev.Event, ev.Reason = "deny", serr.Error()
		a.record(ev)
		a.denied.Add(1)
		o.refuse(serr.Code, serr.Msg)
		return "", false
	}
	if err := a.acquire(acc.HC); err != nil {
		a.busy.Add(1)
		log.Warn("stream refused: agent busy", "hc", acc.HC, "stream", acc.ID.String(), "reason", err.Msg)
		ev.Event, ev.Reason = "busy", err.Error()
		a.record(ev)
		o.refuse(err.Code, err.Msg)
		return "", false
	}
	return target, true
}

// acquire takes a stream slot of hc, within agent.max_streams and the
// connection's max_streams.
func (a *Agent) acquire(hc string) *status.Error {
	cfg := a.cfg.Load()
	perConn := 0
	for _, c := range cfg.Connections {
		if c.Name == hc {
			perConn = c.MaxStreams
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if cfg.MaxStreams > 0 && a.total >= cfg.MaxStreams {
		return status.Errorf(status.Busy, "agent at max_streams %d", cfg.MaxStreams)
	}
	if perConn > 0 && a.slots[hc] >= perConn {
		return status.Errorf(status.Busy, "connection %q at max_streams %d", hc, perConn)
	}
	a.total++
	a.slots[hc]++
	return nil
}

func (a *Agent) release(hc string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.total--
	if a.slots[hc]--; a.slots[hc] <= 0 {
		delete(a.slots, hc)
	}
}

func auditOf(relay string, acc *relayclient.Accept) AuditEvent {
	return AuditEvent{HC: acc.HC, Stream: acc.ID.String(), Target: acc.Target, SenderKey: acc.SenderKey,
		SenderAddr: acc.SenderAddr, Relay: relay}
}

// serve handles one admitted stream: dial the resource, answer, start the
// copy, and return (the copy goes on, on goroutines of its own); done runs
// once the stream has ended, or failed. conn is the connection as attached
// at the relay (its key joins the stream).
func (a *Agent) serve(ctx context.Context, o offer, ep rules.RelayEndpoint, relay string,
	acc *relayclient.Accept, conn rules.AgentConnection, target string, log hclog.Logger, done func()) {
	started := false
	defer func() {
		if !started {
			done()
		}
	}()
	ev := auditOf(relay, acc)
	ev.Endpoint = target
	ack := time.AfterFunc(ackAfter, o.ack) // a slow dial: tell the relay we are on it
	dctx, cancel := context.WithTimeout(ctx, DialTimeout)
	res, err := a.dialer.DialContext(dctx, "tcp", target)
	cancel()
	ack.Stop()
	if err != nil {
		msg := describeDialError(target, err)
		log.Warn("resource unreachable", "hc", acc.HC, "stream", acc.ID.String(), "endpoint", target, "error", msg)
		ev.Event, ev.Reason = "unreachable", msg
		a.record(ev)
		a.unreachable.Add(1)
		a.endpointFailed(acc.HC, target, msg)
		o.refuse(status.Unreachable, msg)
		return
	}
	a.endpointOK(acc.HC)
	up, early, err := o.ready(ctx, token(ep, conn))
	if err != nil {
		res.Close()
		log.Warn("could not join stream at relay", "hc", acc.HC, "stream", acc.ID.String(), "error", err)
		return
	}
	if len(early) > 0 {
		res.SetWriteDeadline(time.Now().Add(DialTimeout))
		_, err := res.Write(early)
		res.SetWriteDeadline(time.Time{})
		if err != nil {
			res.Close()
			up.Close()
			log.Warn("resource refused the stream's first bytes", "hc", acc.HC, "stream", acc.ID.String(), "error", err)
			return
		}
	}
	ls := &liveStream{conn: up, res: res, hc: acc.HC, target: acc.Target, endpoint: target, ev: ev,
		joint: stream.NewJoint(up, res), since: time.Now()}
	ls.joint.AToB.Add(int64(len(early))) // written above
	if !a.track(ls) {
		up.Close()
		res.Close()
		return
	}
	start := time.Now()
	ev.Event = "open"
	a.record(ev)
	a.opened.Add(1)
	log.Debug("stream open", "hc", acc.HC, "stream", ev.Stream, "endpoint", target)
	ls.joint.OnDone(func() {
		ev.Event, ev.BytesIn, ev.BytesOut = "close", ls.joint.AToB.Load(), ls.joint.BToA.Load()
		ev.DurationMS = time.Since(start).Milliseconds()
		a.record(ev)
		log.Debug("stream closed", "hc", acc.HC, "stream", ev.Stream, "to_resource", ev.BytesIn, "from_resource", ev.BytesOut)
		a.untrack(ls)
		done()
	})
	started = true
	ls.joint.Start()
}

// track registers a live stream, unless a reload since the check already
// forbids it (the check and the registration race with Apply).
func (a *Agent) track(s *liveStream) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ep, err := Authorize(a.cfg.Load(), s.hc, s.target); err != nil || ep != s.endpoint {
		return false
	}
	a.streams[s] = struct{}{}
	return true
}

func (a *Agent) untrack(s *liveStream) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.streams, s)
	a.finished(s)
}

// describeDialError says which way a dial failed: refused (port closed),
// timed out (filtered) or otherwise.
func describeDialError(target string, err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("dial %s: no answer within %s (filtered or down)", target, DialTimeout)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("dial %s: connection refused (nothing listens there)", target)
	}
	return fmt.Sprintf("dial %s: %v", target, err)
}
