package integration

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// scGate is a TCP forwarder to target, standing for the network between
// relays: open, it forwards; refused, its listener is closed and its
// connections reset (a peer that is down, or a firewall that rejects);
// blackholed, it accepts but forwards nothing either way, and drops what
// its open connections carry (a partition that drops packets).
type scGate struct {
	addr, target string
	black        atomic.Bool
	mu           sync.Mutex
	ln           net.Listener
	conns        map[net.Conn]struct{}
}

func (g *scGate) open(t testing.TB) {
	t.Helper()
	g.black.Store(false)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ln != nil {
		return
	}
	ln, err := net.Listen("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	g.ln = ln
	if g.conns == nil {
		g.conns = map[net.Conn]struct{}{}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.conns[c] = struct{}{}
			g.mu.Unlock()
			if g.black.Load() {
				continue // held, silent
			}
			u, err := net.Dial("tcp", g.target)
			if err != nil {
				c.Close()
				continue
			}
			g.mu.Lock()
			g.conns[u] = struct{}{}
			g.mu.Unlock()
			go g.pipe(u, c)
			go g.pipe(c, u)
		}
	}()
}

// pipe copies src to dst while the gate is not blackholed; blackholed, it
// drops what it reads.
func (g *scGate) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !g.black.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// refuse closes the listener and resets every connection.
func (g *scGate) refuse() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ln != nil {
		g.ln.Close()
		g.ln = nil
	}
	for c := range g.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
	clear(g.conns)
}

// blackhole stops forwarding; connections stay open, and silent.
func (g *scGate) blackhole() { g.black.Store(true) }

// startGatedFleet starts Redis and a fleet of 3 relays (with extra lines
// in each section) whose relay a is reached by its peers through a gate,
// open, and waits until every relay is a member.
func startGatedFleet(t *testing.T, c *cluster, extra string) (*fleetEnv, *scGate) {
	t.Helper()
	f := &fleetEnv{c: c, redisPort: freePort(t), redisDir: t.TempDir()}
	f.startRedisAt(t)
	gate := &scGate{addr: freeAddr(t, "127.0.0.1")}
	for i := 0; i < 3; i++ {
		f.peers = append(f.peers, freeAddr(t, "127.0.0.1"))
		adv := f.peers[i]
		if i == 0 {
			gate.target, adv = f.peers[0], gate.addr
		}
		f.relays = append(f.relays, c.startRelay(t, f.fleetYAML(i, fmt.Sprintf("relay-%c", 'a'+i))+fmt.Sprintf("    advertise: %s\n", adv)+extra))
	}
	gate.open(t)
	for _, r := range f.relays {
		r.Proc.WaitLog(t, "fleet member listening", e2eStartTimeout)
	}
	return f, gate
}
