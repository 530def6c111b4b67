package agent

import (
	"context"
	"errors"
	"math/rand/v2"

	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/rules"
)

// pool keeps connections parked at one relay for one control channel, so
// that a new stream reaches the agent with its ACCEPT (and the app's first
// bytes) on a connection already open — no relay round trip, no TLS
// handshake on the stream's path. Each parked connection has a goroutine
// waiting on it, which serves the stream when one comes and is replaced at
// once. The pool grows when streams arrive on the control channel instead
// (it ran dry), up to rules.MaxPool, and shrinks back slowly.
type pool struct {
	a      *Agent
	ctl    relayclient.Control
	ep     rules.RelayEndpoint
	r      *runner
	relay  string
	lookup func(hc string) (rules.AgentConnection, bool)
	log    hclog.Logger

	mu          sync.Mutex
	target      int  // connections to keep parked
	idle        int  // parked now (or being parked)
	unsupported bool // the channel cannot park (WebSocket): the pool stays empty
	kick        chan struct{}
}

// shrinkEvery is how often a grown pool gives one connection back.
const shrinkEvery = 30 * time.Second

func newPool(a *Agent, ctl relayclient.Control, ep rules.RelayEndpoint, r *runner, relay string,
	lookup func(string) (rules.AgentConnection, bool), log hclog.Logger) *pool {
	return &pool{a: a, ctl: ctl, ep: ep, r: r, relay: relay, lookup: lookup, log: log,
		target: a.cfg.Load().Pool, kick: make(chan struct{}, 1)}
}

// grow adds one to the target (a stream came without a parked connection).
func (p *pool) grow() {
	p.mu.Lock()
	if p.target < rules.MaxPool && p.a.cfg.Load().Pool > 0 && !p.unsupported {
		p.target++
	}
	p.mu.Unlock()
	p.wake()
}

func (p *pool) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run keeps the pool filled until ctx is done (the channel ended); parked
// connections are closed then.
func (p *pool) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	shrink := time.NewTicker(shrinkEvery)
	defer shrink.Stop()
	changes := p.a.changes()
	for {
		p.mu.Lock()
		base := p.a.cfg.Load().Pool
		if base == 0 || p.unsupported {
			p.target = 0
		} else if p.target < base {
			p.target = base
		}
		for p.idle < p.target {
			p.idle++
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.park(ctx)
			}()
		}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-changes:
			changes = p.a.changes()
		case <-shrink.C:
			p.mu.Lock()
			if p.target > p.a.cfg.Load().Pool {
				p.target--
			}
			p.mu.Unlock()
		}
	}
}

// park opens one parked connection and waits on it. When a stream comes it
// hands the slot back to the pool (a replacement is parked at once) and
// serves the stream on this goroutine.
func (p *pool) park(ctx context.Context) {
	release := func() {
		p.mu.Lock()
		p.idle--
		p.mu.Unlock()
		p.wake()
	}
	for failures := 0; ; failures++ {
		if ctx.Err() != nil || p.overTarget() {
			release()
			return
		}
		pc, err := p.ctl.Park(ctx)
		if errors.Is(err, relayclient.ErrUnsupported) {
			p.mu.Lock()
			p.target, p.unsupported = 0, true // WebSocket: no parking, every stream comes on the channel
			p.mu.Unlock()
			release()
			return
		}
		if err != nil {
			// The relay may be going; the channel's own loop decides. Try
			// again a little later while the channel lives.
			select {
			case <-ctx.Done():
			case <-time.After(min(time.Duration(failures+1)*200*time.Millisecond, 2*time.Second) + rand.N(100*time.Millisecond)):
			}
			continue
		}
		p.r.addParked(1)
		stop := context.AfterFunc(ctx, func() { pc.Close() })
		acc, err := pc.Next()
		stop()
		p.r.addParked(-1)
		if err != nil {
			pc.Close()
			var se *status.Error
			if errors.As(err, &se) || ctx.Err() != nil {
				release() // refused (an unknown session, a full pool) or the channel ended
				return
			}
			continue // the relay dropped it (a restart): park another
		}
		release()
		p.serve(ctx, pc, acc)
		return
	}
}

func (p *pool) overTarget() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.idle > p.target
}

// serve handles a stream offered on a parked connection, on this goroutine.
func (p *pool) serve(ctx context.Context, pc *relayclient.Parked, acc *relayclient.Accept) {
	o := &parkedOffer{p: pc, acc: acc}
	conn, attached := p.lookup(acc.HC)
	target, ok := p.a.admit(o, p.relay, acc, attached, p.log)
	if !ok {
		return
	}
	p.a.wg.Add(1)
	p.a.serve(ctx, o, p.ep, p.relay, acc, conn, target, p.log, func() {
		p.a.release(acc.HC)
		p.a.wg.Done()
	})
}
