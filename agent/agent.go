// Package agent is the on-premises side: it dials out to every relay,
// listens for its hybrid connections, and for each accepted stream dials the
// one endpoint that connection publishes — never anything else, whatever a
// relay asks for.
package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/buildinfo"
	"github.com/hybridconn/hybrid/internal/endpoint"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/stream"
	"github.com/hybridconn/hybrid/rules"
)

// Defaults of the agent.
const (
	// DialTimeout bounds the dial to a published resource; the relay waits
	// 20 s for the join, so a filtered port fails cleanly before that.
	DialTimeout = 10 * time.Second
	// TokenTTL is the lifetime of the listen tokens the agent mints; they are
	// renewed at three quarters of it.
	TokenTTL = time.Hour
	// DefaultGrace is how long live streams may go on after a stop is asked for.
	DefaultGrace = 10 * time.Second
	maxBackoff   = 30 * time.Second
)

// Agent runs an agent section. Its configuration can be replaced while it
// runs (Apply): connections attach and detach, and live streams that the new
// configuration no longer permits are cut.
type Agent struct {
	log    hclog.Logger
	name   string
	dialer net.Dialer
	// Grace is how long live streams may go on after ctx is done; zero means DefaultGrace.
	Grace time.Duration

	cfg   atomic.Pointer[rules.Agent]
	audit atomic.Pointer[Audit]

	mu      sync.Mutex
	runCtx  context.Context    // set by Run; nil before
	relays  map[string]*runner // by relayKey
	changed chan struct{}      // closed and replaced by every Apply
	streams map[*liveStream]struct{}
	wg      sync.WaitGroup // serve goroutines

	opened, denied, unreachable, revoked atomic.Int64
	// rogue counts accept notices dropped because they named an address
	// off the relay.
	rogue atomic.Int64
}

// runner is the goroutine keeping one relay's control channel.
type runner struct {
	cancel context.CancelFunc
	done   chan struct{}
	name   string

	mu        sync.Mutex
	connected bool
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

func (r *runner) set(connected bool, attached map[string]rules.AgentConnection, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.connected = connected
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

// liveStream is a stream being copied, as Apply needs to judge it.
type liveStream struct {
	conn     net.Conn
	hc       string
	target   string
	endpoint string
	ev       AuditEvent
}

// New prepares an agent; it opens the audit log but does not dial yet.
func New(cfg *rules.Agent, log hclog.Logger) (*Agent, error) {
	a := &Agent{log: log, dialer: net.Dialer{Timeout: DialTimeout},
		relays: map[string]*runner{}, changed: make(chan struct{}), streams: map[*liveStream]struct{}{}}
	a.name, _ = os.Hostname()
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
			s.conn.Close()
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
	}
	close(a.changed)
	a.changed = make(chan struct{})
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
		a.audit.Load().Record(ev)
		a.revoked.Add(1)
		s.conn.Close()
	}
	return nil
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

// runRelay keeps one control channel up, reconnecting with jittered backoff.
func (a *Agent) runRelay(ctx context.Context, c relayclient.Client, ep rules.RelayEndpoint, r *runner) {
	log := a.log.With("relay", c.String())
	backoff := time.Second
	for ctx.Err() == nil {
		start := time.Now()
		err := a.session(ctx, c, ep, r, log)
		r.set(false, nil, err)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		log.Warn("no control channel to the relay; retrying", "error", err, "in", wait.Round(time.Millisecond))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

func token(ep rules.RelayEndpoint, c rules.AgentConnection) string {
	return sas.NewToken(sas.ResourceURI(ep.Namespace, c.Name), c.KeyName, c.Key, time.Now().Add(TokenTTL))
}

// retryAttach is how long a connection the relay refused (or detached)
// waits before the agent tries again with a fresh token.
const retryAttach = 10 * time.Second

// session runs one control channel until it ends.
func (a *Agent) session(ctx context.Context, c relayclient.Client, ep rules.RelayEndpoint, r *runner, log hclog.Logger) error {
	ctl, err := c.Listen(ctx, a.name, buildinfo.Version)
	if err != nil {
		return err
	}
	defer ctl.Close()
	attached := map[string]rules.AgentConnection{} // what the relay has, with the key used
	retry := time.NewTimer(retryAttach)
	defer retry.Stop()
	// sync attaches what the configuration has and the relay lacks (or has
	// with another key), and detaches the rest.
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
				attached[conn.Name] = conn
				continue
			}
			if err := ctl.Attach(ctx, conn.Name, token(ep, conn)); err != nil {
				if ctl.Err() != nil {
					return err
				}
				log.Error("relay refused to let us listen", "hc", conn.Name, "key_name", conn.KeyName, "error", err, "retry_in", retryAttach)
				delete(attached, conn.Name)
				failed = true
				continue
			}
			attached[conn.Name] = conn
			log.Info("listening", "hc", conn.Name, "endpoint", conn.Endpoint)
		}
		for name := range attached {
			if !want[name] {
				ctl.Detach(name)
				delete(attached, name)
				log.Info("stopped listening", "hc", name)
			}
		}
		if failed {
			retry.Reset(retryAttach)
		}
		r.set(true, attached, nil)
		return nil
	}
	if err := sync(); err != nil {
		return err
	}
	renew := time.NewTicker(TokenTTL * 3 / 4)
	defer renew.Stop()
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
		case ev, ok := <-ctl.Events():
			if !ok {
				return ctl.Err()
			}
			if d := ev.Dropped; d != nil {
				a.dropped(c.String(), d, log)
				continue
			}
			if d := ev.Detached; d != nil {
				log.Error("relay ended our listening", "hc", d.HC, "error", d.Err, "retry_in", retryAttach)
				delete(attached, d.HC)
				r.set(true, attached, d.Err)
				retry.Reset(retryAttach)
				continue
			}
			acc := ev.Accept
			conn, ok := attached[acc.HC]
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				a.serve(ctx, ctl, ep, c.String(), acc, conn, ok, log)
			}()
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

// serve handles one accepted stream: check, dial the resource, join, copy.
// conn is the connection as attached at the relay (its key joins the stream).
func (a *Agent) serve(ctx context.Context, ctl relayclient.Control, ep rules.RelayEndpoint, relay string,
	acc *relayclient.Accept, conn rules.AgentConnection, attached bool, log hclog.Logger) {
	log = log.With("hc", acc.HC, "stream", acc.ID.String(), "sender", acc.SenderAddr, "sender_key", acc.SenderKey)
	ev := AuditEvent{HC: acc.HC, Stream: acc.ID.String(), Target: acc.Target, SenderKey: acc.SenderKey,
		SenderAddr: acc.SenderAddr, Relay: relay}
	audit := a.audit.Load()
	target, serr := Authorize(a.cfg.Load(), acc.HC, acc.Target)
	if serr == nil && !attached {
		serr = status.Errorf(status.NotFound, "this agent is not listening for %q on this relay", acc.HC)
	}
	if serr != nil {
		log.Warn("stream denied", "target", acc.Target, "reason", serr.Msg)
		ev.Event, ev.Reason = "deny", serr.Error()
		audit.Record(ev)
		a.denied.Add(1)
		ctl.Reject(acc.ID, serr.Code, serr.Msg)
		return
	}
	ev.Endpoint = target
	dctx, cancel := context.WithTimeout(ctx, DialTimeout)
	res, err := a.dialer.DialContext(dctx, "tcp", target)
	cancel()
	if err != nil {
		msg := describeDialError(target, err)
		log.Warn("resource unreachable", "endpoint", target, "error", msg)
		ev.Event, ev.Reason = "unreachable", msg
		audit.Record(ev)
		a.unreachable.Add(1)
		ctl.Reject(acc.ID, status.Unreachable, msg)
		return
	}
	up, err := ctl.Join(ctx, acc, token(ep, conn))
	if err != nil {
		res.Close()
		log.Warn("could not join stream at relay", "error", err)
		return
	}
	ls := &liveStream{conn: up, hc: acc.HC, target: acc.Target, endpoint: target, ev: ev}
	if !a.track(ls) {
		up.Close()
		res.Close()
		return
	}
	defer a.untrack(ls)
	start := time.Now()
	ev.Event = "open"
	audit.Record(ev)
	a.opened.Add(1)
	log.Debug("stream open", "endpoint", target)
	n := stream.Pipe(up, res)
	ev.Event, ev.BytesIn, ev.BytesOut = "close", n.AToB, n.BToA
	ev.DurationMS = time.Since(start).Milliseconds()
	a.audit.Load().Record(ev)
	log.Debug("stream closed", "to_resource", n.AToB, "from_resource", n.BToA)
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
