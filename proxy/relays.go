package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/buildinfo"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/rules"
)

// Timing of the proxy's relay links.
const (
	// FirstAnswer bounds the wait for a relay's first word on an OPEN. A
	// healthy relay answers in milliseconds (or says it is working on it);
	// one that does not is frozen or gone, and the stream goes to the next
	// relay at once.
	FirstAnswer = 3 * time.Second
	// downFor is how often a relay out of the spread is probed, doubling
	// up to maxDownFor while it keeps failing; it is back as soon as a
	// probe (or its session) succeeds, and not before: a frozen relay costs
	// one FirstAnswer, not one per stream.
	downFor    = 500 * time.Millisecond
	maxDownFor = 10 * time.Second
	// probeTimeout bounds one background probe of a relay.
	probeTimeout = 2 * time.Second
	// linkRetry is how often a link tries to reconnect its session.
	linkRetry = time.Second
)

// link is the proxy's side of one relay: its client, its health, its
// control session (which proves the proxy's keys for rotation and hears
// GOAWAY) and its warm connections.
type link struct {
	ep     rules.RelayEndpoint
	client relayclient.Client
	log    hclog.Logger
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	down      bool          // out of the spread until a probe succeeds
	nextProbe time.Time     // when the background probe tries again
	downStep  time.Duration // how long it waits between probes
	lastErr   string
	ctl       relayclient.Control // nil while none
	warm      []*relayclient.Warm
	tokens    map[string]cachedToken // by hc|key name|key
	opened    atomic.Int64
	changed   chan struct{} // kicks the link loop (config change)
}

type cachedToken struct {
	token string
	until time.Time
}

func newLink(ep rules.RelayEndpoint, cfg *rules.Proxy, log hclog.Logger) *link {
	c := relayclient.New(ep.ClientEndpoint(), relayclient.WithProxy(cfg.ProxyURL),
		relayclient.WithTransport(cfg.Transport), relayclient.WithLogger(log))
	return &link{ep: ep, client: c, log: log.With("relay", c.String()), done: make(chan struct{}),
		tokens: map[string]cachedToken{}, changed: make(chan struct{}, 1)}
}

// token returns a send token for c at this relay, minted at most once per
// half TokenTTL.
func (l *link) token(c *rules.ProxyConnection) string {
	k := c.Name + "|" + c.KeyName + "|" + c.Key
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.tokens[k]; ok && now.Before(t.until) {
		return t.token
	}
	if len(l.tokens) > 1024 { // keys rotated many times: start over
		l.tokens = map[string]cachedToken{}
	}
	t := sas.NewToken(sas.ResourceURI(l.ep.Namespace, c.Name), c.KeyName, c.Key, now.Add(TokenTTL))
	l.tokens[k] = cachedToken{token: t, until: now.Add(TokenTTL / 2)}
	return t
}

func (l *link) healthy() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.down
}

// markDown takes the relay out of the spread until a probe succeeds.
func (l *link) markDown(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.down {
		l.log.Warn("relay out of the spread until it answers again", "error", err)
	}
	l.down = true
	if l.downStep == 0 {
		l.downStep = downFor
	}
	l.nextProbe = time.Now().Add(l.downStep)
	l.lastErr = err.Error()
}

// up brings the relay back.
func (l *link) up() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down {
		l.log.Info("relay back in the spread")
	}
	l.down, l.downStep, l.lastErr = false, 0, ""
}

// probeLoop probes the relay while it is out of the spread, every downFor
// and then less often while it keeps failing, until ctx is done.
func (l *link) probeLoop(ctx context.Context) {
	t := time.NewTicker(downFor / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.mu.Lock()
		due := l.down && !time.Now().Before(l.nextProbe)
		l.mu.Unlock()
		if !due {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := l.client.Probe(pctx)
		cancel()
		if err == nil {
			l.up()
			l.kick()
			continue
		}
		l.mu.Lock()
		l.downStep = min(2*l.downStep, maxDownFor)
		l.nextProbe = time.Now().Add(l.downStep)
		l.lastErr = err.Error()
		l.mu.Unlock()
	}
}

// session returns the control session's id, or zero.
func (l *link) session() relayclient.SessionID {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctl == nil {
		return relayclient.SessionID{}
	}
	return l.ctl.Session()
}

// takeWarm returns a warm connection, or nil.
func (l *link) takeWarm() *relayclient.Warm {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.warm)
	if n == 0 {
		return nil
	}
	w := l.warm[n-1]
	l.warm = l.warm[:n-1]
	select {
	case l.changed <- struct{}{}: // refill
	default:
	}
	return w
}

func (l *link) dropWarm() {
	l.mu.Lock()
	ws := l.warm
	l.warm = nil
	l.mu.Unlock()
	for _, w := range ws {
		w.Close()
	}
}

func (l *link) kick() {
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// run keeps the link's session and warm connections until ctx is done. A
// relay that cannot be reached is tried every linkRetry; one that goes
// away is left for a new session at once.
func (l *link) run(ctx context.Context, p *Proxy) {
	defer close(l.done)
	defer l.dropWarm()
	go l.probeLoop(ctx)
	for ctx.Err() == nil {
		err := l.runSession(ctx, p)
		if ctx.Err() != nil {
			return
		}
		wait := linkRetry/2 + rand.N(linkRetry)
		if errors.Is(err, relayclient.ErrUnsupported) {
			wait = 30 * time.Second // WebSocket has no sessions (transport auto may come back to native)
		} else if errors.Is(err, errGoneAway) {
			wait = 20*time.Millisecond + rand.N(80*time.Millisecond)
		} else if err != nil {
			l.log.Debug("relay session ended", "error", err)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
	}
}

var errGoneAway = errors.New("relay going away")

// runSession holds one session: attach every connection's key, keep the
// warm pool full, follow config changes, until the session ends.
func (l *link) runSession(ctx context.Context, p *Proxy) error {
	ctl, err := l.client.Connect(ctx, "proxy", buildinfo.Version)
	if err != nil {
		var se *status.Error
		if !errors.Is(err, relayclient.ErrUnsupported) && !errors.As(err, &se) {
			l.markDown(err)
		}
		return err
	}
	defer ctl.Close()
	attached := map[string]string{} // hc → token attached
	sync := func() {
		cfg := p.cfg.Load()
		for i := range cfg.Connections {
			c := &cfg.Connections[i]
			tok := l.token(c)
			if attached[c.Name] == c.KeyName+"|"+c.Key {
				continue
			}
			if err := ctl.Attach(ctx, c.Name, tok); err != nil {
				l.log.Warn("relay refused the proxy's key for its session (streams still open with their own tokens)",
					"hc", c.Name, "key_name", c.KeyName, "error", err)
				continue
			}
			attached[c.Name] = c.KeyName + "|" + c.Key
		}
	}
	sync()
	l.mu.Lock()
	l.ctl = ctl
	l.mu.Unlock()
	l.up()
	defer func() {
		l.mu.Lock()
		l.ctl = nil
		l.mu.Unlock()
		l.dropWarm() // tied to this session at the relay
	}()
	renew := time.NewTicker(TokenTTL / 2)
	defer renew.Stop()
	for {
		l.fillWarm(ctx, ctl, p.cfg.Load().Pool)
		select {
		case <-ctx.Done():
			return nil
		case <-ctl.Done():
			return ctl.Err()
		case <-l.changed:
			sync()
		case <-renew.C:
			clear(attached) // fresh tokens on the next sync
			sync()
		case ev, ok := <-ctl.Events():
			if !ok {
				return ctl.Err()
			}
			if ev.GoAway != nil {
				l.log.Info("relay is going away; opening a new session", "reason", ev.GoAway.Msg)
				return errGoneAway
			}
		}
	}
}

// fillWarm tops the warm pool up to n.
func (l *link) fillWarm(ctx context.Context, ctl relayclient.Control, n int) {
	for {
		l.mu.Lock()
		have := len(l.warm)
		l.mu.Unlock()
		if have >= n {
			return
		}
		w, err := ctl.Warm(ctx)
		if err != nil {
			return // WebSocket, or the relay is going: the next round tries again
		}
		l.mu.Lock()
		l.warm = append(l.warm, w)
		l.mu.Unlock()
	}
}

// isTimeout reports an error that says the relay did not answer in time.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// relaySet is the proxy's relays, in configuration order.
type relaySet struct {
	links  []*link
	policy string
	next   atomic.Uint64 // spread: where the next stream starts
}

// order returns the links to try for a new stream: healthy ones first —
// spread starts at the next one in turn, priority keeps the list order —
// then the ones out of the spread, as a last resort.
func (s *relaySet) order() []*link {
	var good, bad []*link
	for _, l := range s.links {
		if l.healthy() {
			good = append(good, l)
		} else {
			bad = append(bad, l)
		}
	}
	if s.policy == rules.RelayPolicySpread && len(good) > 1 {
		k := int(s.next.Add(1) % uint64(len(good)))
		good = append(good[k:], good[:k]...)
	}
	return append(good, bad...)
}

// retryable reports whether another relay (or a fresh connection to the
// same one) may succeed where err failed: nothing said why (a dead
// connection), or a code another relay may not share.
func retryable(err error) bool {
	var se *status.Error
	if !errors.As(err, &se) {
		return true
	}
	switch se.Code {
	case status.NoListener, status.ShuttingDown, status.Timeout, status.Busy:
		return true
	}
	return false
}

// open opens a stream for c over the links in order. A relay that does not
// answer in FirstAnswer, or cannot be reached, is taken out of the spread
// and the next one is tried at once; a stale warm connection is retried
// fresh on the same relay. Refusals that every relay would share (a bad
// key, an unknown name, the agent's refusal) come back at once.
func (s *relaySet) open(ctx context.Context, c *rules.ProxyConnection, early []byte) (net.Conn, error) {
	var errs []error
	for _, l := range s.order() {
		for try := 0; try < 3; try++ {
			var warm *relayclient.Warm
			if try == 0 {
				warm = l.takeWarm()
			}
			req := relayclient.OpenRequest{HC: c.Name, Token: l.token(c), Target: c.Endpoint, Early: early,
				Session: l.session(), Warm: warm, FirstAnswer: FirstAnswer}
			conn, err := l.client.OpenStream(ctx, req)
			if err == nil {
				l.up()
				l.opened.Add(1)
				return conn, nil
			}
			if ctx.Err() != nil {
				return nil, err
			}
			var se *status.Error
			errors.As(err, &se)
			switch {
			case isTimeout(err):
				// Frozen or unreachable: out of the spread until a probe
				// says otherwise; the next relay now.
			case warm != nil && (se == nil || se.Code == status.NotFound || se.Code == status.Busy):
				// A warm connection the relay had dropped, or refused when
				// it came (no such session, too many: that RESULT reads as
				// this OPEN's answer): once more, fresh.
				continue
			case se != nil && se.Code == status.ShuttingDown && try < 2:
				// A relay handing over its ports: a fresh connection
				// reaches the one taking over.
				time.Sleep(20 * time.Millisecond)
				continue
			}
			errs = append(errs, fmt.Errorf("relay %s: %w", l.client, err))
			if se == nil {
				l.markDown(err) // unreachable or frozen: not for the next streams
			}
			if !retryable(err) {
				return nil, errors.Join(errs...)
			}
			break
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("no relay configured")
	}
	return nil, errors.Join(errs...)
}
