// Package proxy runs beside the app: it maps local ports to hybrid
// connections, so an app reaches an on-premises resource through the relay
// with its connection string unchanged. Apps whose connection strings name
// the on-premises host itself are served by a SOCKS5 listener (socks.go) or,
// for any client, by transparent hosts mode (hosts.go).
package proxy

import (
	"context"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/limit"
	"github.com/hybridconn/hybrid/internal/stream"
	"github.com/hybridconn/hybrid/rules"
)

// Defaults of the proxy.
const (
	// TokenTTL is the lifetime of the send tokens the proxy mints, one per
	// stream; the relay checks it only when the stream opens.
	TokenTTL = time.Hour
	// DefaultGrace is how long live streams may go on after a stop is asked for.
	DefaultGrace = 10 * time.Second
)

// Proxy runs a proxy section. Its configuration can be replaced while it
// runs (Apply): listeners open, close and rebind to match, and untouched
// mappings are never disturbed.
type Proxy struct {
	log hclog.Logger
	// Grace is how long live streams may go on after ctx is done; zero means DefaultGrace.
	Grace time.Duration

	cfg    atomic.Pointer[rules.Proxy]
	relays atomic.Pointer[relaySet]

	mu         sync.Mutex
	running    bool
	ctx        context.Context
	mappings   map[string]*mapping // by listen address
	socks      *socksListener      // nil when proxy.socks is unset
	hosts      *hostsPlan          // the hosts file block as last written; nil when none
	streams    map[net.Conn]*flow
	handshakes map[net.Conn]struct{} // SOCKS connections not yet carrying a stream
	loops      sync.WaitGroup        // accept loops
	wg         sync.WaitGroup        // forwards and SOCKS connections

	// openStream opens a stream on a connection, with the app's first
	// bytes: Open, except in tests.
	openStream func(ctx context.Context, c *rules.ProxyConnection, early []byte) (net.Conn, error)
	socksLog   *stdlog.Logger // go-socks5's logger, into ours
	socksTime  time.Duration  // SOCKS handshake deadline: SocksHandshakeTimeout, except in tests

	opened, refused atomic.Int64
	// socksBad counts SOCKS handshakes that failed (garbage, stalled, bad
	// credentials); socksBusy those closed at once over maxSocksHandshakes.
	socksBad, socksBusy atomic.Int64
	// socksFails limits wrong SOCKS passwords per client address.
	socksFails *limit.Failures
	obs        observer // per-connection metrics and events (metrics.go)
}

// mapping is one listening port and the connection it currently forwards to;
// Apply swaps the connection without touching the listener.
type mapping struct {
	ln   net.Listener
	conn atomic.Pointer[rules.ProxyConnection]
}

// New prepares a proxy; it does not listen yet.
func New(cfg *rules.Proxy, log hclog.Logger) (*Proxy, error) {
	p := &Proxy{log: log, mappings: map[string]*mapping{}, streams: map[net.Conn]*flow{},
		handshakes: map[net.Conn]struct{}{}, socksFails: limit.NewFailures()}
	p.openStream = p.Open
	p.socksTime = SocksHandshakeTimeout
	// go-socks5 logs every failed handshake as [ERR]: a scanner could fill
	// the log. Its lines go in at debug; the proxy logs the outcomes itself.
	p.socksLog = log.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug})
	if err := p.store(cfg); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Proxy) store(cfg *rules.Proxy) error {
	if len(cfg.Relays) == 0 {
		return errors.New("proxy: no relay configured")
	}
	old := map[string]*link{}
	if prev := p.relays.Load(); prev != nil {
		for _, l := range prev.links {
			old[linkKey(l.ep, p.cfg.Load())] = l
		}
	}
	set := &relaySet{policy: cfg.RelayPolicy}
	var kept []*link
	for _, ep := range cfg.Relays {
		k := linkKey(ep, cfg)
		l := old[k]
		if l != nil {
			delete(old, k)
			kept = append(kept, l)
		} else {
			l = newLink(ep, cfg, p.log)
		}
		set.links = append(set.links, l)
	}
	p.cfg.Store(cfg)
	p.relays.Store(set)
	// Keys may have changed: the kept links re-prove them. Only now, when
	// the session loop that the kick wakes reads the new configuration (a
	// kick before the Store could be taken with the old one, and the new
	// key never proven: a rotation then cut every stream at its grace).
	for _, l := range kept {
		l.kick()
	}
	if p.running {
		for _, l := range old {
			l.cancel()
		}
		p.startLinksLocked()
	}
	return nil
}

func linkKey(ep rules.RelayEndpoint, cfg *rules.Proxy) string {
	return fmt.Sprintf("%s|%d|%d|%d|%t|%s|%s|%s", ep.Host, ep.Control, ep.Data, ep.HTTP, ep.TLS, ep.Namespace, cfg.Transport, cfg.ProxyURL)
}

// startLinksLocked starts the loops of links not running yet.
func (p *Proxy) startLinksLocked() {
	for _, l := range p.relays.Load().links {
		if l.cancel != nil {
			continue
		}
		ctx, cancel := context.WithCancel(p.ctx)
		l.cancel = cancel
		p.loops.Add(1)
		go func() {
			defer p.loops.Done()
			l.run(ctx, p)
		}()
	}
}

// Run opens every mapping's listener (and the SOCKS5 listener, and writes
// the hosts file block in hosts mode, replacing whatever a crash left) and
// serves until ctx is done; then it removes the hosts file block, stops
// accepting, drops SOCKS clients still in their handshake, lets live streams
// finish for the grace period and closes them. It fails at once if a
// listener cannot be opened or the hosts file cannot be written.
func (p *Proxy) Run(ctx context.Context) error {
	p.mu.Lock()
	p.ctx = ctx
	p.running = true
	err := p.syncLocked(p.cfg.Load())
	if err != nil {
		p.running = false
	} else {
		p.startLinksLocked()
	}
	p.mu.Unlock()
	if err != nil {
		return err
	}
	<-ctx.Done()
	p.mu.Lock()
	p.running = false
	// Names stop resolving to us before the listeners go.
	p.syncHostsLocked(nil)
	for addr, m := range p.mappings {
		m.ln.Close()
		delete(p.mappings, addr)
	}
	if p.socks != nil {
		p.socks.ln.Close()
		p.socks = nil
	}
	for c := range p.handshakes {
		c.Close()
	}
	p.mu.Unlock()
	p.loops.Wait()
	p.drain()
	p.log.Info("proxy stopped")
	return nil
}

// Apply replaces the configuration. New listeners are bound first; if any
// fails, nothing changes and the error is returned. Then removed mappings'
// listeners close (their live streams finish undisturbed), changed ones
// forward new streams with the new name, key and endpoint, and untouched
// ones are left alone.
func (p *Proxy) Apply(cfg *rules.Proxy) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return p.store(cfg)
	}
	return p.syncLocked(cfg)
}

// syncLocked makes the listeners (port forwards, hosts mode's, SOCKS5) and
// the hosts file block match cfg, all or nothing: everything new is bound
// and the block written before anything old is closed.
func (p *Proxy) syncLocked(cfg *rules.Proxy) error {
	if len(cfg.Relays) == 0 {
		return errors.New("proxy: no relay configured")
	}
	want := map[string]*rules.ProxyConnection{}
	for i := range cfg.Connections {
		if c := &cfg.Connections[i]; c.Listen != "" {
			want[c.Listen] = c
		}
	}
	plan, err := planHosts(cfg)
	if err != nil {
		return err
	}
	if plan != nil {
		// rules keeps explicit listen addresses out of the range: no overlap.
		for addr, c := range plan.listens {
			want[addr] = c
		}
	}
	added := map[string]*mapping{}
	var socks *socksListener
	rollback := func() {
		for _, m := range added {
			m.ln.Close()
		}
		if socks != nil {
			socks.ln.Close()
		}
	}
	for addr, c := range want {
		if _, ok := p.mappings[addr]; ok {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			rollback()
			return fmt.Errorf("proxy: listen for %q: %w", c.Name, err)
		}
		m := &mapping{ln: ln}
		m.conn.Store(c)
		added[addr] = m
	}
	if cfg.Socks != "" && (p.socks == nil || p.socks.addr != cfg.Socks) {
		ln, err := net.Listen("tcp", cfg.Socks)
		if err != nil {
			rollback()
			return fmt.Errorf("proxy: listen for socks: %w", err)
		}
		socks = &socksListener{addr: cfg.Socks, ln: ln}
	}
	if err := p.syncHostsLocked(plan); err != nil {
		rollback()
		return err
	}
	if err := p.store(cfg); err != nil { // cannot fail: relays checked above
		rollback()
		return err
	}
	for addr, m := range p.mappings {
		c, ok := want[addr]
		if !ok {
			m.ln.Close()
			delete(p.mappings, addr)
			p.log.Info("stopped forwarding", "listen", addr, "hc", m.conn.Load().Name)
			continue
		}
		if old := m.conn.Swap(c); *old != *c {
			p.log.Info("forwarding changed", "listen", addr, "hc", c.Name)
		}
	}
	for addr, m := range added {
		p.mappings[addr] = m
		p.log.Info("forwarding", "listen", m.ln.Addr().String(), "hc", m.conn.Load().Name)
		p.loops.Add(1)
		go func() {
			defer p.loops.Done()
			p.acceptLoop(p.ctx, m)
		}()
	}
	if p.socks != nil && (cfg.Socks == "" || socks != nil) {
		p.socks.ln.Close() // SOCKS streams already open go on
		p.log.Info("socks: stopped listening", "listen", p.socks.ln.Addr().String())
		p.socks = nil
	}
	if socks != nil {
		p.socks = socks
		p.log.Info("socks: listening", "listen", socks.ln.Addr().String(), "auth", len(cfg.SocksAuth) > 0)
		p.loops.Add(1)
		go func() {
			defer p.loops.Done()
			p.socksAcceptLoop(p.ctx, socks)
		}()
	}
	return nil
}

// syncHostsLocked makes the hosts file block match plan (nil: no block) and
// remembers it. A failure to write the wanted block is returned (nothing has
// changed then); a failure to remove a block that is no longer wanted (hosts
// mode turned off, or its file changed) is only logged, since its names then
// point at closed ports at worst.
func (p *Proxy) syncHostsLocked(plan *hostsPlan) error {
	old := p.hosts
	if plan != nil {
		changed, inPlace, shadowed, err := updateHostsFile(plan.file, plan.entries, plan.rng)
		if err != nil {
			return err
		}
		if changed {
			p.log.Info("hosts: file updated", "file", plan.file, "entries", len(plan.entries), "in_place", inPlace)
			for _, e := range plan.entries {
				p.log.Info("hosts: mapped", "name", e.Name, "address", e.Addr.String())
			}
		}
		if changed || old == nil {
			for _, s := range shadowed {
				p.log.Warn("hosts: a name is also mapped outside the managed block; the resolver may use that line instead",
					"file", plan.file, "line", s)
			}
		}
	}
	if old != nil && (plan == nil || old.file != plan.file) {
		if changed, _, _, err := updateHostsFile(old.file, nil, old.rng); err != nil {
			p.log.Error("hosts: could not remove the managed block", "file", old.file, "error", err)
		} else if changed {
			p.log.Info("hosts: removed the managed block", "file", old.file)
		}
	}
	p.hosts = plan
	return nil
}

// Addrs returns the listening addresses by hybrid connection name.
func (p *Proxy) Addrs() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]string{}
	for _, m := range p.mappings {
		out[m.conn.Load().Name] = m.ln.Addr().String()
	}
	return out
}

func (p *Proxy) drain() {
	grace := p.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	if n := stream.Drain(&p.wg, grace, func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		for c, f := range p.streams {
			if f.cut != nil {
				f.cut() // through the copy, which may be parked
			} else {
				c.Close()
			}
		}
		return len(p.streams)
	}); n > 0 {
		p.log.Warn("grace period over; closed live streams", "streams", n)
	}
}

func (p *Proxy) acceptLoop(ctx context.Context, m *mapping) {
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			p.log.Warn("accept failed; backing off", "listen", m.ln.Addr().String(), "error", err)
			select {
			case <-time.After(100 * time.Millisecond):
				continue
			case <-ctx.Done():
				return
			}
		}
		c := m.conn.Load() // the mapping as it is now: reloads apply to new streams
		p.wg.Add(1)
		go p.forward(ctx, conn, c, p.wg.Done)
	}
}

// forward carries one app connection through a hybrid connection. What the
// app has sent already goes with the OPEN, so it needs no round trip. It
// returns once the copy has started (it goes on, on goroutines of its own);
// done runs when the stream has ended, or failed.
func (p *Proxy) forward(ctx context.Context, app net.Conn, c *rules.ProxyConnection, done func()) {
	early := readyBytes(app)
	up, err := p.openStream(ctx, c, early)
	if err != nil {
		defer done()
		p.refused.Add(1)
		p.log.Error("stream refused", "hc", c.Name, "app", app.RemoteAddr().String(), "error", err)
		// Reset rather than close: the app sees a failure at once instead
		// of an orderly end of a conversation that never started.
		if tc, ok := app.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		app.Close()
		return
	}
	p.opened.Add(1)
	j := stream.NewJoint(app, up)
	j.AToB.Add(int64(len(early))) // sent with the open
	f := newFlow(c.Name, app, &j.AToB, &j.BToA)
	f.cut = j.Close
	p.mu.Lock()
	p.streams[app] = f
	p.mu.Unlock()
	p.log.Debug("stream open", "hc", c.Name, "app", f.app)
	j.OnDone(func() {
		p.mu.Lock()
		p.dropStreamLocked(app)
		p.mu.Unlock()
		p.log.Debug("stream closed", "hc", c.Name, "app", f.app, "up", j.AToB.Load(), "down", j.BToA.Load(),
			"duration", time.Since(f.since).Round(time.Millisecond))
		done()
	})
	j.Start()
}

// Open opens a stream on connection c, with early (the app's first bytes,
// possibly none): over the healthy relays first, spread or in priority
// order, moving to the next relay at once when one fails (see
// relaySet.open).
func (p *Proxy) Open(ctx context.Context, c *rules.ProxyConnection, early []byte) (net.Conn, error) {
	start := time.Now()
	conn, err := p.relays.Load().open(ctx, c, early)
	p.observeOpen(c.Name, start, err)
	return conn, err
}
