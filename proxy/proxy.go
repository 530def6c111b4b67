// Package proxy runs beside the app: it maps local ports to hybrid
// connections, so an app reaches an on-premises resource through the relay
// with its connection string unchanged.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
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

// Proxy runs a proxy section.
type Proxy struct {
	log    hclog.Logger
	cfg    *rules.Proxy
	relays []relay
	// Grace is how long live streams may go on after ctx is done; zero means DefaultGrace.
	Grace time.Duration

	mu      sync.Mutex
	streams map[net.Conn]struct{}
	wg      sync.WaitGroup
}

type relay struct {
	ep     rules.RelayEndpoint
	client relayclient.Client
}

// New prepares a proxy; it does not listen yet.
func New(cfg *rules.Proxy, log hclog.Logger) (*Proxy, error) {
	p := &Proxy{log: log, cfg: cfg, streams: map[net.Conn]struct{}{}}
	for _, ep := range cfg.Relays {
		p.relays = append(p.relays, relay{ep: ep, client: relayclient.New(ep)})
	}
	if len(p.relays) == 0 {
		return nil, errors.New("proxy: no relay configured")
	}
	return p, nil
}

// Run opens every mapping's listener and serves until ctx is done; then it
// stops accepting, lets live streams finish for the grace period and closes
// them. It fails at once if a listener cannot be opened.
func (p *Proxy) Run(ctx context.Context) error {
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	for i := range p.cfg.Connections {
		c := &p.cfg.Connections[i]
		if c.Listen == "" {
			continue
		}
		ln, err := net.Listen("tcp", c.Listen)
		if err != nil {
			closeAll()
			return fmt.Errorf("proxy: listen for %q: %w", c.Name, err)
		}
		lns = append(lns, ln)
		p.log.Info("forwarding", "listen", ln.Addr().String(), "hc", c.Name)
	}
	var wg sync.WaitGroup
	for i, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.acceptLoop(ctx, ln, p.listenConn(i))
		}()
	}
	<-ctx.Done()
	closeAll()
	wg.Wait()
	p.drain()
	p.log.Info("proxy stopped")
	return nil
}

// listenConn returns the i-th connection that has a listen address.
func (p *Proxy) listenConn(i int) *rules.ProxyConnection {
	for j := range p.cfg.Connections {
		if p.cfg.Connections[j].Listen == "" {
			continue
		}
		if i == 0 {
			return &p.cfg.Connections[j]
		}
		i--
	}
	return nil
}

func (p *Proxy) drain() {
	grace := p.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		p.mu.Lock()
		n := len(p.streams)
		for c := range p.streams {
			c.Close()
		}
		p.mu.Unlock()
		p.log.Warn("grace period over; closed live streams", "streams", n)
		<-done
	}
}

func (p *Proxy) acceptLoop(ctx context.Context, ln net.Listener, c *rules.ProxyConnection) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			p.log.Warn("accept failed; backing off", "listen", c.Listen, "error", err)
			select {
			case <-time.After(100 * time.Millisecond):
				continue
			case <-ctx.Done():
				return
			}
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.forward(ctx, conn, c)
		}()
	}
}

// forward carries one app connection through a hybrid connection.
func (p *Proxy) forward(ctx context.Context, app net.Conn, c *rules.ProxyConnection) {
	log := p.log.With("hc", c.Name, "app", app.RemoteAddr().String())
	up, err := p.Open(ctx, c)
	if err != nil {
		log.Error("stream refused", "error", err)
		// Reset rather than close: the app sees a failure at once instead
		// of an orderly end of a conversation that never started.
		if tc, ok := app.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		app.Close()
		return
	}
	p.mu.Lock()
	p.streams[app] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.streams, app)
		p.mu.Unlock()
	}()
	start := time.Now()
	log.Debug("stream open")
	n := stream.Pipe(app, up)
	log.Debug("stream closed", "up", n.AToB, "down", n.BToA, "duration", time.Since(start).Round(time.Millisecond))
}

// Open opens a stream on connection c, trying each relay in turn. A relay
// that is unreachable, has no agent, or is stopping yields to the next; any
// other refusal (a bad key, an unknown name, an agent's refusal) would be the
// same everywhere and is returned at once.
func (p *Proxy) Open(ctx context.Context, c *rules.ProxyConnection) (net.Conn, error) {
	var errs []error
	for _, r := range p.relays {
		tok := sas.NewToken(sas.ResourceURI(r.ep.Namespace, c.Name), c.KeyName, c.Key, time.Now().Add(TokenTTL))
		conn, err := r.client.Open(ctx, c.Name, tok, c.Endpoint)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, fmt.Errorf("relay %s: %w", r.client, err))
		var se *status.Error
		if errors.As(err, &se) {
			switch se.Code {
			case status.NoListener, status.ShuttingDown, status.Timeout, status.Busy:
			default:
				return nil, errors.Join(errs...)
			}
		}
	}
	return nil, errors.Join(errs...)
}
