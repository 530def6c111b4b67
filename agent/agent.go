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
	"sync"
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

// Agent runs an agent section.
type Agent struct {
	log     hclog.Logger
	cfg     *rules.Agent
	name    string
	audit   *Audit
	clients []relayclient.Client
	dialer  net.Dialer
	// Grace is how long live streams may go on after ctx is done; zero means DefaultGrace.
	Grace time.Duration

	mu      sync.Mutex
	streams map[net.Conn]struct{}
	wg      sync.WaitGroup
}

// New prepares an agent; it opens the audit log but does not dial yet.
func New(cfg *rules.Agent, log hclog.Logger) (*Agent, error) {
	a := &Agent{log: log, cfg: cfg, streams: map[net.Conn]struct{}{}, dialer: net.Dialer{Timeout: DialTimeout}}
	a.name, _ = os.Hostname()
	if cfg.Audit != "" {
		au, err := OpenAudit(cfg.Audit)
		if err != nil {
			return nil, err
		}
		a.audit = au
	}
	for _, ep := range cfg.Relays {
		a.clients = append(a.clients, relayclient.New(ep))
	}
	return a, nil
}

// Run keeps a control channel to every relay until ctx is done, then stops
// taking streams, lets live ones finish for the grace period and closes them.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for i, c := range a.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.runRelay(ctx, c, a.cfg.Relays[i])
		}()
	}
	<-ctx.Done()
	wg.Wait()
	grace := a.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		a.mu.Lock()
		n := len(a.streams)
		for c := range a.streams {
			c.Close()
		}
		a.mu.Unlock()
		a.log.Warn("grace period over; closed live streams", "streams", n)
		<-done
	}
	if a.audit != nil {
		a.audit.Close()
	}
	a.log.Info("agent stopped")
	return nil
}

// runRelay keeps one control channel up, reconnecting with jittered backoff.
func (a *Agent) runRelay(ctx context.Context, c relayclient.Client, ep rules.RelayEndpoint) {
	log := a.log.With("relay", c.String())
	backoff := time.Second
	for ctx.Err() == nil {
		start := time.Now()
		err := a.session(ctx, c, ep, log)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		log.Warn("relay connection lost; reconnecting", "error", err, "in", wait.Round(time.Millisecond))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

func (a *Agent) token(ep rules.RelayEndpoint, c *rules.AgentConnection) string {
	return sas.NewToken(sas.ResourceURI(ep.Namespace, c.Name), c.KeyName, c.Key, time.Now().Add(TokenTTL))
}

// session runs one control channel until it ends.
func (a *Agent) session(ctx context.Context, c relayclient.Client, ep rules.RelayEndpoint, log hclog.Logger) error {
	ctl, err := c.Listen(ctx, a.name, buildinfo.Version)
	if err != nil {
		return err
	}
	defer ctl.Close()
	attached := 0
	for i := range a.cfg.Connections {
		conn := &a.cfg.Connections[i]
		if err := ctl.Attach(ctx, conn.Name, a.token(ep, conn)); err != nil {
			log.Error("relay refused to let us listen", "hc", conn.Name, "key_name", conn.KeyName, "error", err)
			continue
		}
		attached++
		log.Info("listening", "hc", conn.Name, "endpoint", conn.Endpoint)
	}
	if attached == 0 && len(a.cfg.Connections) > 0 {
		return errors.New("no hybrid connection could be attached")
	}
	renew := time.NewTicker(TokenTTL * 3 / 4)
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ctl.Done():
			return ctl.Err()
		case <-renew.C:
			for i := range a.cfg.Connections {
				conn := &a.cfg.Connections[i]
				if err := ctl.Renew(ctx, conn.Name, a.token(ep, conn)); err != nil {
					log.Error("token renewal refused", "hc", conn.Name, "error", err)
				}
			}
		case ev, ok := <-ctl.Events():
			if !ok {
				return ctl.Err()
			}
			if ev.Detached != nil {
				log.Error("relay ended our listening", "hc", ev.Detached.HC, "error", ev.Detached.Err)
				continue
			}
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				a.serve(ctx, ctl, ep, c.String(), ev.Accept, log)
			}()
		}
	}
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

func (a *Agent) connection(hc string) *rules.AgentConnection {
	for i := range a.cfg.Connections {
		if a.cfg.Connections[i].Name == hc {
			return &a.cfg.Connections[i]
		}
	}
	return nil
}

// serve handles one accepted stream: check, dial the resource, join, copy.
func (a *Agent) serve(ctx context.Context, ctl relayclient.Control, ep rules.RelayEndpoint, relay string, acc *relayclient.Accept, log hclog.Logger) {
	log = log.With("hc", acc.HC, "stream", acc.ID.String(), "sender", acc.SenderAddr, "sender_key", acc.SenderKey)
	ev := AuditEvent{HC: acc.HC, Stream: acc.ID.String(), Target: acc.Target, SenderKey: acc.SenderKey,
		SenderAddr: acc.SenderAddr, Relay: relay}
	target, serr := Authorize(a.cfg, acc.HC, acc.Target)
	if serr != nil {
		log.Warn("stream denied", "target", acc.Target, "reason", serr.Msg)
		ev.Event, ev.Reason = "deny", serr.Error()
		a.audit.Record(ev)
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
		a.audit.Record(ev)
		ctl.Reject(acc.ID, status.Unreachable, msg)
		return
	}
	conn, err := ctl.Join(ctx, acc, a.token(ep, a.connection(acc.HC)))
	if err != nil {
		res.Close()
		log.Warn("could not join stream at relay", "error", err)
		return
	}
	a.track(conn)
	defer a.untrack(conn)
	start := time.Now()
	ev.Event = "open"
	a.audit.Record(ev)
	log.Debug("stream open", "endpoint", target)
	n := stream.Pipe(conn, res)
	ev.Event, ev.BytesIn, ev.BytesOut = "close", n.AToB, n.BToA
	ev.DurationMS = time.Since(start).Milliseconds()
	a.audit.Record(ev)
	log.Debug("stream closed", "to_resource", n.AToB, "from_resource", n.BToA)
}

func (a *Agent) track(conn net.Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.streams[conn] = struct{}{}
}

func (a *Agent) untrack(conn net.Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.streams, conn)
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
