//go:build scaling

package integration

// The measurements behind docs/scaling.md: what one relay holds per idle
// stream, per active stream, per agent and per proxy; the load a fleet puts
// on its Redis directory; what clients see while a fleet behind HAProxy is
// rolled, and when a relay, Redis, a peer link or the balancer fails. Every
// role is a separate process of the real binary on loopback, as in the
// other integration tests (whose helpers these reuse).
//
// Not run by CI (build tag scaling). Run one at a time, gently on a shared
// machine:
//
//	nice -n 10 go test -tags scaling ./integration -run 'TestScaling/idle' -v -timeout 20m
//
// Each test prints its figures as "scaling: ..." lines (t.Logf).
//
// Knobs (environment):
//
//	HYBRID_BIN=$PWD/bin/hybrid    measure make build's binary (else one is built)
//	SCALING_IDLE=native,tls,ws    setups of TestScaling/idle
//	SCALING_IDLE_COUNTS=100,1000  idle streams, cumulative
//	SCALING_THROUGHPUT=native,tls,ws
//	SCALING_AGENTS=1,10,50        agent processes on one relay, cumulative
//	SCALING_PROXIES=1,10,20       proxy processes on one relay, cumulative
//	SCALING_HCS=10,100,1000       hybrid connections in TestScaling/directory
//	SCALING_LOGS=/tmp/scaling-logs  where the log of a relay that had to be
//	                              killed is kept (with its goroutines)

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// scLimits lets the idle streams through the per-source cap: on loopback
// the proxy and the agent share one source address.
const scLimits = "  limits: {per_source: 50000, connections: 100000}\n"

// scSettle is how long a phase waits before it is sampled: past
// stream.IdleAfter (1 s) where idle copies are parked, and past the
// agents' and proxies' pool refills.
const scSettle = 3 * time.Second

// TestScaling groups the measurements; run them one at a time with
// -run 'TestScaling/<name>'.
func TestScaling(t *testing.T) {
	t.Run("idle", scalingIdle)
	t.Run("throughput", scalingThroughput)
	t.Run("agents", scalingAgents)
	t.Run("proxies", scalingProxies)
	t.Run("directory", scalingDirectory)
	t.Run("rolling", scalingRolling)
	t.Run("failures", scalingFailures)
	t.Run("httpmode", scalingHTTPMode)
	t.Run("onlyagent", scalingOnlyAgent)
}

// ---- sampling a process ----

type scSample struct {
	RSS        int64   // KiB
	FDs, Socks int     // descriptors, of which sockets
	Goroutines float64 // go_goroutines from its /metrics
	Heap       float64 // go_memstats_heap_inuse_bytes, MiB
	CPU        float64 // user+system seconds so far
}

// scTake samples the process pid whose /metrics is at base.
func scTake(t testing.TB, pid int, base string) scSample {
	t.Helper()
	s := scSample{RSS: rssKiB(t, pid)}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	es, _ := os.ReadDir(dir)
	s.FDs = len(es)
	for _, e := range es {
		if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			s.Socks++
		}
	}
	if base != "" {
		m, err := metrics(base)
		if err != nil {
			t.Fatalf("metrics of pid %d: %v", pid, err)
		}
		s.Goroutines = m["go_goroutines"]
		s.Heap = m["go_memstats_heap_inuse_bytes"] / (1 << 20)
	}
	s.CPU = scCPU(pid)
	return s
}

// scCPU is a process's user+system CPU seconds (/proc/pid/stat; the
// kernel's USER_HZ is 100 on Linux).
func scCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100
}

func (s scSample) String() string {
	return fmt.Sprintf("rss=%d KiB fds=%d sockets=%d goroutines=%.0f heap_inuse=%.1f MiB", s.RSS, s.FDs, s.Socks, s.Goroutines, s.Heap)
}

// scPer is what grew from a to b, per n.
func scPer(a, b scSample, n int) string {
	d := float64(n)
	return fmt.Sprintf("%.1f KiB rss, %.2f fds (%.2f sockets), %.2f goroutines, %.1f KiB heap",
		float64(b.RSS-a.RSS)/d, float64(b.FDs-a.FDs)/d, float64(b.Socks-a.Socks)/d,
		(b.Goroutines-a.Goroutines)/d, (b.Heap-a.Heap)*1024/d)
}

// ---- knobs ----

func scList(env, def string) []string {
	v := os.Getenv(env)
	if v == "" {
		v = def
	}
	return strings.Split(v, ",")
}

func scInts(t testing.TB, env, def string) []int {
	var out []int
	for _, s := range scList(env, def) {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			t.Fatalf("%s: %v", env, err)
		}
		out = append(out, n)
	}
	return out
}

// scTunnel is one relay, one agent and one proxy for hcs, speaking
// transport ("tcp" or "websocket"), with TLS on both links if tls.
type scTunnel struct {
	r     *crelay
	admin string // the relay's admin listener (plain HTTP, also with tls)
	a     *cagent
	p     *cproxy
}

func scStartTunnel(t *testing.T, c *cluster, pubs map[string]string, transport string, tls bool) *scTunnel {
	t.Helper()
	admin := freeAddr(t, "127.0.0.3")
	extra := scLimits + "  admin: " + admin + "\n"
	if tls {
		extra += relayTLSLine(t)
	}
	r := c.startRelay(t, extra)
	r.TLS = tls
	a := c.startAgent(t, []*crelay{r}, pubs, "  transport: "+transport+"\n  max_streams: 30000\n")
	var hcs []string
	for n := range pubs {
		hcs = append(hcs, n)
	}
	sort.Strings(hcs)
	p := c.startProxy(t, []*crelay{r}, hcs, "  transport: "+transport+"\n")
	for _, h := range hcs {
		waitFor(t, h+" to carry a stream", 30*time.Second, func() bool { return probe(p.Listen[h]) == nil })
	}
	return &scTunnel{r: r, admin: "http://" + admin, a: a, p: p}
}

func (s *scTunnel) sample(t testing.TB) (relay, agent, proxy scSample) {
	return scTake(t, s.r.Proc.Pid(), s.admin), scTake(t, s.a.Proc.Pid(), "http://"+s.a.Admin), scTake(t, s.p.Proc.Pid(), "http://"+s.p.Admin)
}

// scParallel runs f(i) for i in [0,n) on workers goroutines.
func scParallel(n, workers int, f func(i int)) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// scOpenIdle opens n streams through addr, each proven by one echo, and
// returns them open; failures are counted.
func scOpenIdle(addr string, n int) ([]net.Conn, int, string) {
	conns := make([]net.Conn, n)
	var fails atomic.Int64
	var first atomic.Value
	scParallel(n, 20, func(i int) {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err == nil {
			if err = echoOnce(c); err != nil {
				c.Close()
			}
		}
		if err != nil {
			fails.Add(1)
			first.CompareAndSwap(nil, err.Error())
			return
		}
		conns[i] = c
	})
	var out []net.Conn
	for _, c := range conns {
		if c != nil {
			out = append(out, c)
		}
	}
	s, _ := first.Load().(string)
	return out, int(fails.Load()), s
}

// ---- 1. idle streams ----

// scalingIdle: one relay, agent and proxy per setup (native, native with
// TLS on both links, WebSocket); RSS, descriptors and goroutines of each
// process with 0, 100 and 1000 idle streams open through it.
func scalingIdle(t *testing.T) {
	echo := startPlainEcho(t)
	counts := scInts(t, "SCALING_IDLE_COUNTS", "100,1000")
	for _, kind := range scList("SCALING_IDLE", "native,tls,ws") {
		t.Run(kind, func(t *testing.T) {
			c := newCluster(t, "echo")
			c.Quiet = true
			transport, tls := "tcp", false
			switch kind {
			case "native":
			case "tls":
				tls = true
			case "ws":
				transport = "websocket"
			default:
				t.Fatalf("SCALING_IDLE: unknown setup %q", kind)
			}
			s := scStartTunnel(t, c, map[string]string{"echo": echo.Addr}, transport, tls)
			for i := 0; i < 20; i++ {
				probe(s.p.Listen["echo"])
			}
			time.Sleep(scSettle)
			r0, a0, p0 := s.sample(t)
			t.Logf("scaling: idle %s n=0: relay %v | agent %v | proxy %v", kind, r0, a0, p0)
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			var r1, a1, p1 scSample
			for _, n := range counts {
				more, fails, first := scOpenIdle(s.p.Listen["echo"], n-len(conns))
				conns = append(conns, more...)
				if fails > 0 {
					t.Errorf("idle %s: %d streams failed to open: %s", kind, fails, first)
				}
				time.Sleep(scSettle)
				r1, a1, p1 = s.sample(t)
				t.Logf("scaling: idle %s n=%d: relay %v | agent %v | proxy %v", kind, len(conns), r1, a1, p1)
			}
			n := len(conns)
			t.Logf("scaling: idle %s per stream (0 to %d): relay %s | agent %s | proxy %s", kind, n, scPer(r0, r1, n), scPer(a0, a1, n), scPer(p0, p1, n))
			var bad atomic.Int64
			scParallel(len(conns), 20, func(i int) {
				if echoOnce(conns[i]) != nil {
					bad.Add(1)
				}
			})
			t.Logf("scaling: idle %s: %d of %d idle streams echoed again after %v idle", kind, n-int(bad.Load()), n, scSettle)
		})
	}
}

// ---- 2. active streams ----

// scStartBlast is a resource: the first byte 'D' makes it write zeros
// until the client goes; 'U' makes it read to EOF, then write the count
// (8 bytes, big endian); anything else is echoed.
func scStartBlast(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var cmd [1]byte
				if _, err := io.ReadFull(c, cmd[:]); err != nil {
					return
				}
				switch cmd[0] {
				case 'D':
					buf := make([]byte, 256<<10)
					for {
						if _, err := c.Write(buf); err != nil {
							return
						}
					}
				case 'U':
					n, _ := io.Copy(io.Discard, c)
					var b [8]byte
					binary.BigEndian.PutUint64(b[:], uint64(n))
					c.Write(b[:])
				default: // anything else is echoed (probe)
					c.Write(cmd[:])
					io.Copy(c, c)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// scTransfer moves total bytes split over streams through addr (up: to
// the resource; down: from it), each stream stopping at limit, and returns
// the bytes moved and the wall time.
func scTransfer(addr string, up bool, streams int, total int64, limit time.Duration) (int64, time.Duration, error) {
	per := total / int64(streams)
	var moved atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	end := start.Add(limit)
	scParallel(streams, streams, func(int) {
		err := func() error {
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(limit + 30*time.Second))
			buf := make([]byte, 256<<10)
			if up {
				if _, err := c.Write([]byte{'U'}); err != nil {
					return err
				}
				var n int64
				for n < per && time.Now().Before(end) {
					w, err := c.Write(buf)
					n += int64(w)
					if err != nil {
						return err
					}
				}
				c.(*net.TCPConn).CloseWrite()
				var b [8]byte
				if _, err := io.ReadFull(c, b[:]); err != nil {
					return fmt.Errorf("upload count: %w", err)
				}
				moved.Add(int64(binary.BigEndian.Uint64(b[:])))
				return nil
			}
			if _, err := c.Write([]byte{'D'}); err != nil {
				return err
			}
			var n int64
			for n < per && time.Now().Before(end) {
				r, err := c.Read(buf)
				n += int64(r)
				if err != nil {
					moved.Add(n)
					return err
				}
			}
			moved.Add(n)
			return nil
		}()
		if err != nil {
			firstErr.CompareAndSwap(nil, err)
		}
	})
	err, _ := firstErr.Load().(error)
	return moved.Load(), time.Since(start), err
}

// scalingThroughput: Gbit/s of 1 and 4 streams each way through native,
// native+TLS and WebSocket, and the CPU seconds each role spent per GiB.
func scalingThroughput(t *testing.T) {
	blast := scStartBlast(t)
	for _, kind := range scList("SCALING_THROUGHPUT", "native,tls,ws") {
		t.Run(kind, func(t *testing.T) {
			c := newCluster(t, "blast")
			c.Quiet = true
			transport, tls := "tcp", kind == "tls"
			if kind == "ws" {
				transport = "websocket"
			}
			s := scStartTunnel(t, c, map[string]string{"blast": blast}, transport, tls)
			addr := s.p.Listen["blast"]
			scTransfer(addr, false, 1, 64<<20, time.Second) // warm
			for _, streams := range []int{1, 4} {
				for _, up := range []bool{false, true} {
					dir := "down"
					if up {
						dir = "up"
					}
					r0, a0, p0 := scCPU(s.r.Proc.Pid()), scCPU(s.a.Proc.Pid()), scCPU(s.p.Proc.Pid())
					n, d, err := scTransfer(addr, up, streams, 2<<30, 3*time.Second)
					if err != nil {
						t.Errorf("%s %s x%d: %v", kind, dir, streams, err)
					}
					gib := float64(n) / (1 << 30)
					r1, a1, p1 := scCPU(s.r.Proc.Pid()), scCPU(s.a.Proc.Pid()), scCPU(s.p.Proc.Pid())
					t.Logf("scaling: throughput %s %s x%d: %.2f Gbit/s (%.2f GiB in %v); CPU s per GiB: relay %.2f agent %.2f proxy %.2f",
						kind, dir, streams, float64(n)*8/d.Seconds()/1e9, gib, d.Round(time.Millisecond),
						(r1-r0)/gib, (a1-a0)/gib, (p1-p0)/gib)
				}
			}
		})
	}
}

// ---- 3. agents and proxies on one relay ----

// scalingAgents: a relay's cost per attached agent (control channel and
// parked pool): agent processes of one hybrid connection, added until
// SCALING_AGENTS; first with pool 0 (control channel only), then with the
// default pool (4).
func scalingAgents(t *testing.T) {
	echo := startPlainEcho(t)
	steps := scInts(t, "SCALING_AGENTS", "1,10,50")
	for _, pool := range []int{0, 4} {
		t.Run(fmt.Sprintf("pool%d", pool), func(t *testing.T) {
			c := newCluster(t, "echo")
			c.Quiet = true
			// max_listeners: 0 lifts the cap of 25 agents per connection.
			r := c.startRelay(t, scLimits+"  max_listeners: 0\n")
			time.Sleep(scSettle)
			base := scTake(t, r.Proc.Pid(), r.url())
			t.Logf("scaling: agents pool=%d n=0: relay %v", pool, base)
			var agents []*cagent
			last, prev, prevN := base, base, 0
			for _, n := range steps {
				prev, prevN = last, len(agents)
				for len(agents) < n {
					agents = append(agents, c.startAgent(t, []*crelay{r}, map[string]string{"echo": echo.Addr}, fmt.Sprintf("  pool: %d\n", pool)))
				}
				waitFor(t, "every agent's pool parked", 60*time.Second, func() bool {
					st := r.status(t)
					k := 0
					for _, a := range st.Relay.Agents {
						if a.Role == "agent" && a.Parked >= pool {
							k++
						}
					}
					return k == n
				})
				time.Sleep(scSettle)
				last = scTake(t, r.Proc.Pid(), r.url())
				t.Logf("scaling: agents pool=%d n=%d: relay %v", pool, n, last)
			}
			var rss int64
			for _, a := range agents {
				rss += rssKiB(t, a.Proc.Pid())
			}
			n := len(agents)
			t.Logf("scaling: agents pool=%d per agent (0 to %d), at the relay: %s; each agent process: %d KiB rss on average",
				pool, n, scPer(base, last, n), rss/int64(n))
			t.Logf("scaling: agents pool=%d per agent (%d to %d), at the relay: %s", pool, prevN, n, scPer(prev, last, n-prevN))
		})
	}
}

// scalingProxies: a relay's cost per proxy (its session and warm
// connections, pool 4), proxies of one hybrid connection added until
// SCALING_PROXIES, each having carried one stream.
func scalingProxies(t *testing.T) {
	echo := startPlainEcho(t)
	steps := scInts(t, "SCALING_PROXIES", "1,10,20")
	c := newCluster(t, "echo")
	c.Quiet = true
	r := c.startRelay(t, scLimits)
	c.startAgent(t, []*crelay{r}, map[string]string{"echo": echo.Addr}, "")
	time.Sleep(scSettle)
	base := scTake(t, r.Proc.Pid(), r.url())
	t.Logf("scaling: proxies n=0 (one agent attached): relay %v", base)
	var proxies []*cproxy
	last, prev, prevN := base, base, 0
	for _, n := range steps {
		prev, prevN = last, len(proxies)
		for len(proxies) < n {
			p := c.startProxy(t, []*crelay{r}, []string{"echo"}, "")
			waitFor(t, "the proxy to carry a stream", 30*time.Second, func() bool { return probe(p.Listen["echo"]) == nil })
			proxies = append(proxies, p)
		}
		time.Sleep(scSettle)
		last = scTake(t, r.Proc.Pid(), r.url())
		t.Logf("scaling: proxies n=%d: relay %v", n, last)
	}
	var rss int64
	for _, p := range proxies {
		rss += rssKiB(t, p.Proc.Pid())
	}
	n := len(proxies)
	t.Logf("scaling: proxies per proxy (0 to %d), at the relay: %s; each proxy process: %d KiB rss on average", n, scPer(base, last, n), rss/int64(n))
	t.Logf("scaling: proxies per proxy (%d to %d), at the relay: %s", prevN, n, scPer(prev, last, n-prevN))
}

// ---- 4. the directory ----

// scRedis runs redis-cli against the fleet's Redis.
func scRedis(t testing.TB, f *fleetEnv, args ...string) string {
	t.Helper()
	out, code := runCmd(t, 10*time.Second, "redis-cli", append([]string{"-p", strconv.Itoa(f.redisPort)}, args...)...)
	if code != 0 {
		t.Fatalf("redis-cli %v: exit %d: %s", args, code, out)
	}
	return out
}

// scRedisStats is what Redis counted since the last CONFIG RESETSTAT: calls
// by command (INFO and CONFIG left out: they are the measurement's own),
// and bytes in and out.
type scRedisStats struct {
	calls   map[string]int64
	total   int64
	in, out int64
}

var reCmdstat = regexp.MustCompile(`^cmdstat_([a-z|]+):calls=(\d+)`)

func scRedisRead(t testing.TB, f *fleetEnv) scRedisStats {
	t.Helper()
	s := scRedisStats{calls: map[string]int64{}}
	for _, l := range strings.Split(scRedis(t, f, "INFO", "commandstats"), "\n") {
		m := reCmdstat.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil || m[1] == "info" || strings.HasPrefix(m[1], "config") {
			continue
		}
		n, _ := strconv.ParseInt(m[2], 10, 64)
		s.calls[m[1]] = n
		s.total += n
	}
	for _, l := range strings.Split(scRedis(t, f, "INFO", "stats"), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "total_net_input_bytes":
			s.in = n
		case "total_net_output_bytes":
			s.out = n
		}
	}
	return s
}

func (s scRedisStats) rate(d time.Duration) string {
	names := make([]string, 0, len(s.calls))
	for k := range s.calls {
		names = append(names, k)
	}
	sort.Strings(names)
	var parts []string
	for _, k := range names {
		parts = append(parts, fmt.Sprintf("%s %.1f", k, float64(s.calls[k])/d.Seconds()))
	}
	return fmt.Sprintf("%.1f commands/s (%s); %.0f B/s in, %.0f B/s out",
		float64(s.total)/d.Seconds(), strings.Join(parts, ", "), float64(s.in)/d.Seconds(), float64(s.out)/d.Seconds())
}

// scWindow resets Redis's counters, runs during (or sleeps d when it is
// nil) on the test's goroutine, and returns what Redis counted meanwhile
// and how long that was.
func scWindow(t testing.TB, f *fleetEnv, d time.Duration, during func(end time.Time)) (scRedisStats, time.Duration) {
	t.Helper()
	scRedis(t, f, "CONFIG", "RESETSTAT")
	start := time.Now()
	if during != nil {
		during(start.Add(d))
	} else {
		time.Sleep(d)
	}
	took := time.Since(start)
	return scRedisRead(t, f), took
}

// scAgentYAML is an agent of c attached to relays, publishing every hc of
// names at endpoint, at log level info.
func scAgentYAML(c *cluster, relays []*crelay, names []string, endpoint, admin string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: info}\nagent:\n  admin: %s\n  relays:\n", admin)
	for _, r := range relays {
		fmt.Fprintf(&b, "    - %s\n", r.entry())
	}
	b.WriteString("  connections:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "    - {name: %s, endpoint: %s, key_name: onprem, key: %q}\n", n, endpoint, c.Keys[n].Onprem)
	}
	return b.String()
}

// scEntryHCs is how many hybrid connections relay id's directory entry
// lists with a listener.
var reEntryHC = regexp.MustCompile(`"hc\d+":[1-9]`)

func scEntryHCs(t testing.TB, f *fleetEnv, id string) int {
	return len(reEntryHC.FindAllString(scRedis(t, f, "GET", "hybrid:fleet:relay:"+id), -1))
}

// scalingDirectory: a fleet of 3 relays and its Redis with N hybrid
// connections configured and all served by one agent on relay a: Redis
// commands and bytes per second idle, during a stream churn that crosses
// relays (a proxy on relay c), and during an agent churn (a second agent
// on relay b, stopped and started).
func scalingDirectory(t *testing.T) {
	echo := startPlainEcho(t)
	for _, n := range scInts(t, "SCALING_HCS", "10,100,1000") {
		t.Run(fmt.Sprintf("hcs%d", n), func(t *testing.T) {
			names := make([]string, n)
			for i := range names {
				names[i] = fmt.Sprintf("hc%d", i)
			}
			c := newCluster(t, names...)
			c.Quiet = true
			f := startFleetRelays(t, c, 3, scLimits)
			agentCfg := writeFile(t, t.TempDir(), "agent.yaml", scAgentYAML(c, f.relays[:1], names, echo.Addr, freeAddr(t, "127.0.0.3")))
			startProcWith(t, ProcConfig{Label: "agent-a"}, "hybrid", "agent", "--config", agentCfg)
			start := time.Now()
			waitFor(t, "relay a's entry to list every connection", 2*time.Minute, func() bool { return scEntryHCs(t, f, "relay-a") == n })
			t.Logf("scaling: directory hcs=%d: relay a's entry lists all %d connections %v after the agent started; entry %s bytes",
				n, n, time.Since(start).Round(time.Millisecond), strings.TrimSpace(scRedis(t, f, "STRLEN", "hybrid:fleet:relay:relay-a")))
			time.Sleep(scSettle)

			const win = 10 * time.Second
			idle, took := scWindow(t, f, win, nil)
			idleRate := float64(idle.total) / took.Seconds()
			t.Logf("scaling: directory hcs=%d relays=3 idle: %s", n, idle.rate(took))

			// Streams that cross relays: every one is forwarded c → a.
			p := c.startProxy(t, f.relays[2:], names[:1], "")
			waitFor(t, "a stream through relay c", 30*time.Second, func() bool { return probe(p.Listen[names[0]]) == nil })
			var streams, failed atomic.Int64
			churn, took := scWindow(t, f, win, func(end time.Time) {
				var wg sync.WaitGroup
				for w := 0; w < 2; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for time.Now().Before(end) {
							if probe(p.Listen[names[0]]) != nil {
								failed.Add(1)
							}
							streams.Add(1)
						}
					}()
				}
				wg.Wait()
			})
			t.Logf("scaling: directory hcs=%d relays=3 stream churn (%d streams forwarded c to a in %v, %d failed): %s",
				n, streams.Load(), took.Round(time.Millisecond), failed.Load(), churn.rate(took))

			// Agents coming and going: a second agent on relay b.
			cfgB := writeFile(t, t.TempDir(), "agent.yaml", scAgentYAML(c, f.relays[1:2], names, echo.Addr, freeAddr(t, "127.0.0.3")))
			events := 0
			var attach []time.Duration
			agentChurn, took := scWindow(t, f, 15*time.Second, func(end time.Time) {
				for time.Now().Before(end) {
					start := time.Now()
					b := startProcWith(t, ProcConfig{Label: "agent-b"}, "hybrid", "agent", "--config", cfgB)
					waitFor(t, "relay b's entry to list every connection", 2*time.Minute, func() bool { return scEntryHCs(t, f, "relay-b") == n })
					attach = append(attach, time.Since(start))
					events++
					time.Sleep(2 * time.Second)
					b.Stop(t)
					waitFor(t, "relay b's entry to list none", 2*time.Minute, func() bool { return scEntryHCs(t, f, "relay-b") == 0 })
					events++
					time.Sleep(2 * time.Second)
				}
			})
			extra := float64(agentChurn.total) - idleRate*took.Seconds()
			t.Logf("scaling: directory hcs=%d relays=3 agent churn (%d attach or detach events of %d connections each on relay b in %v; agent start to entry: %v): %s; %.0f commands per event above idle",
				n, events, n, took.Round(time.Millisecond), attach, agentChurn.rate(took), extra/float64(events))
		})
	}
}

// ---- 5. rolling the fleet ----

// scHAProxy starts HAProxy (TCP mode, round robin, health checks every
// 500 ms) on lb's ports in front of relays; redispatch adds option
// redispatch and retries 3.
func scHAProxy(t *testing.T, lb *crelay, relays []*crelay, redispatch bool) *Proc {
	t.Helper()
	bin := needProgram(t, "haproxy", "haproxy")
	var b strings.Builder
	b.WriteString("global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n")
	if redispatch {
		b.WriteString("  option redispatch\n  retries 3\n")
	}
	for _, fe := range []struct {
		name string
		port int
		pick func(*crelay) int
	}{
		{"control", lb.Control, func(r *crelay) int { return r.Control }},
		{"data", lb.Data, func(r *crelay) int { return r.Data }},
		{"http", lb.HTTP, func(r *crelay) int { return r.HTTP }},
	} {
		fmt.Fprintf(&b, "frontend %s\n  bind 127.0.0.1:%d\n  default_backend %s_b\nbackend %s_b\n  balance roundrobin\n", fe.name, fe.port, fe.name, fe.name)
		for i, r := range relays {
			fmt.Fprintf(&b, "  server r%d 127.0.0.1:%d check inter 500ms fall 2 rise 1\n", i, fe.pick(r))
		}
	}
	cfg := writeFile(t, t.TempDir(), "haproxy.cfg", b.String())
	p := startProcWith(t, ProcConfig{Label: "haproxy"}, bin, "-db", "-f", cfg)
	waitTCP(t, fmt.Sprintf("127.0.0.1:%d", lb.Data), e2eStartTimeout)
	return p
}

// scLoad is a steady probe load: workers each opening a stream (connect,
// one echo, close) every interval.
type scLoad struct {
	mu       sync.Mutex
	ok       int
	failures []string
	slow     []time.Duration // probes over 1 s
	stop     chan struct{}
	wg       sync.WaitGroup
}

func scStartLoad(addr string, workers int, interval time.Duration) *scLoad {
	l := &scLoad{stop: make(chan struct{})}
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tk := time.NewTicker(interval)
			defer tk.Stop()
			for {
				select {
				case <-l.stop:
					return
				case <-tk.C:
				}
				start := time.Now()
				err := probe(addr)
				d := time.Since(start)
				l.mu.Lock()
				if err != nil {
					l.failures = append(l.failures, fmt.Sprintf("%s: %v", start.Format("15:04:05.000"), err))
				} else {
					l.ok++
				}
				if d > time.Second {
					l.slow = append(l.slow, d)
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// take returns the counts so far and resets them.
func (l *scLoad) take() (ok int, failures []string, slow []time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ok, failures, slow = l.ok, l.failures, l.slow
	l.ok, l.failures, l.slow = 0, nil, nil
	return
}

func (l *scLoad) end() {
	close(l.stop)
	l.wg.Wait()
}

func scFirst(fs []string) string {
	if len(fs) == 0 {
		return ""
	}
	return fs[0]
}

// scRefused is the proxy's "stream refused" lines written after mark,
// their error texts counted.
var reRefused = regexp.MustCompile(`stream refused: .*?error=("(?:[^"\\]|\\.)*"|\S*)`)

func scRefused(p *Proc, mark int) string {
	counts := map[string]int{}
	for _, m := range reRefused.FindAllStringSubmatch(p.out.from(mark), -1) {
		e := m[1]
		if u, err := strconv.Unquote(e); err == nil {
			e = u
		}
		counts[e]++
	}
	var parts []string
	for k, v := range counts {
		parts = append(parts, fmt.Sprintf("%d× %q", v, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

// scKeepLog copies p's output to $SCALING_LOGS (default
// /tmp/scaling-logs), which outlives the test's temporary directories.
func scKeepLog(t testing.TB, p *Proc) {
	dir := os.Getenv("SCALING_LOGS")
	if dir == "" {
		dir = "/tmp/scaling-logs"
	}
	os.MkdirAll(dir, 0o755)
	path := fmt.Sprintf("%s/%s-%s.log", dir, time.Now().Format("150405"), p.Label)
	if err := os.WriteFile(path, []byte(p.Output()), 0o644); err == nil {
		t.Logf("scaling: %s's log kept in %s", p.Label, path)
	}
}

// scDrain is the rolling fleet's relay.drain_grace.
const scDrain = 10 * time.Second

// scalingRolling: a fleet of 3 behind HAProxy, two agents and a proxy that
// know only HAProxy, a steady probe load (2 workers, a stream each every
// 20 ms) and 12 long-lived streams: each relay in turn stopped (SIGTERM:
// GOAWAY, drain) and started again on its ports, as systemctl restart
// does; then HAProxy itself restarted. Probes failed, their errors, and
// whether the long-lived streams lived through their relay's drain.
func scalingRolling(t *testing.T) {
	for _, redispatch := range []bool{false, true} {
		name := "lb_plain"
		if redispatch {
			name = "lb_redispatch"
		}
		t.Run(name, func(t *testing.T) {
			echo := startPlainEcho(t)
			c := newCluster(t, "echo")
			c.Quiet = true
			f := startFleetRelays(t, c, 3, scLimits+fmt.Sprintf("  drain_grace: %v\n", scDrain))
			f.lb = &crelay{Control: freePort(t), Data: freePort(t), HTTP: freePort(t)}
			f.haproxy = scHAProxy(t, f.lb, f.relays, redispatch)
			pubs := map[string]string{"echo": echo.Addr}
			c.startAgent(t, []*crelay{f.lb}, pubs, "")
			c.startAgent(t, []*crelay{f.lb}, pubs, "")
			p := c.startProxy(t, []*crelay{f.lb}, []string{"echo"}, "")
			addr := p.Listen["echo"]
			waitFor(t, "streams through the fleet", 30*time.Second, func() bool { return probe(addr) == nil })
			load := scStartLoad(addr, 2, 20*time.Millisecond)
			time.Sleep(3 * time.Second)
			ok, fails, _ := load.take()
			t.Logf("scaling: rolling %s steady: %d probes ok, %d failed", name, ok, len(fails))

			var total, totalFail int
			for i, r := range f.relays {
				long, lfails, _ := scOpenIdle(addr, 12)
				if lfails > 0 {
					t.Errorf("long-lived streams: %d failed to open", lfails)
				}
				mark := p.Proc.Mark()
				stopAt := time.Now()
				r.Proc.Signal(syscall.SIGTERM)
				time.Sleep(3 * time.Second)
				alive := 0
				for _, lc := range long {
					if echoOnce(lc) == nil {
						alive++
					}
					lc.Close()
				}
				// A relay that has not exited drain_grace + 15 s after
				// SIGTERM is killed, as systemd's TimeoutStopSec or
				// Kubernetes' terminationGracePeriodSeconds would; first
				// Go's SIGQUIT handler writes its goroutines to the log.
				how := "exited by itself"
				select {
				case <-r.Proc.Done():
				case <-time.After(scDrain + 15*time.Second):
					how = "had not exited: killed (SIGQUIT, goroutines in the kept log)"
					r.Proc.Signal(syscall.SIGQUIT)
					<-r.Proc.Done()
					scKeepLog(t, r.Proc)
				}
				exited := time.Since(stopAt)
				if err := c.runRelay(t, r); err != nil {
					t.Fatalf("relay %d did not start again: %v", i, err)
				}
				r.Proc.WaitLog(t, "fleet member listening", e2eStartTimeout)
				back := time.Since(stopAt)
				time.Sleep(3 * time.Second)
				ok, fails, slow := load.take()
				total += ok + len(fails)
				totalFail += len(fails)
				t.Logf("scaling: rolling %s relay %c: SIGTERM, old process %s %v later, new one listening at %v; %d probes ok, %d failed (%s), %d over 1 s; %d of %d long-lived streams still echoed 3 s into the drain; proxy refusals: %s",
					name, 'a'+i, how, exited.Round(time.Millisecond), back.Round(time.Millisecond), ok, len(fails), scFirst(fails), len(slow), alive, len(long), scRefused(p.Proc, mark))
			}
			t.Logf("scaling: rolling %s all 3 relays: %d of %d probes failed", name, totalFail, total)

			// The balancer restarted: every connection through it ends.
			mark := p.Proc.Mark()
			f.haproxy.Stop(t)
			down := time.Now()
			time.Sleep(time.Second)
			f.haproxy = scHAProxy(t, f.lb, f.relays, redispatch)
			restarted := time.Since(down)
			var recovered time.Duration
			waitFor(t, "streams through the restarted balancer", 60*time.Second, func() bool {
				if probe(addr) == nil {
					recovered = time.Since(down)
					return true
				}
				return false
			})
			time.Sleep(3 * time.Second)
			ok, fails, slow := load.take()
			t.Logf("scaling: rolling %s balancer stopped for %v: streams work again %v after it stopped; %d probes ok, %d failed (%s), %d over 1 s; proxy refusals: %s",
				name, restarted.Round(time.Millisecond), recovered.Round(time.Millisecond), ok, len(fails), scFirst(fails), len(slow), scRefused(p.Proc, mark))
			load.end()
		})
	}
}

// ---- 6. failures ----

// scProbe is probe with a deadline of limit for the whole stream.
func scProbe(addr string, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, limit)
	if err != nil {
		return time.Since(start), err
	}
	defer c.Close()
	c.SetDeadline(start.Add(limit))
	msg := []byte("ping\n")
	if _, err := c.Write(msg); err != nil {
		return time.Since(start), err
	}
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		return time.Since(start), err
	}
	return time.Since(start), nil
}

// scUntil probes addr every 50 ms until it succeeds (want true) or fails
// (want false), for at most limit, and returns how long that took and the
// last error.
func scUntil(addr string, want bool, limit time.Duration) (time.Duration, error, bool) {
	start := time.Now()
	var last error
	for time.Since(start) < limit {
		last = probe(addr)
		if (last == nil) == want {
			return time.Since(start), last, true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start), last, false
}

// scalingFailures: a fleet of 3 (no balancer: each client names its
// relay), relay a's advertised peer address behind a gate; an agent on
// relay a; a proxy on relay a (local streams) and one on relay c (every
// stream forwarded to a). A partition between a and the others; Redis down
// and back.
func scalingFailures(t *testing.T) {
	echo := startPlainEcho(t)
	c := newCluster(t, "echo")
	c.Quiet = false // the relays' and proxies' debug lines say why
	f, gate := startGatedFleet(t, c, scLimits)
	c.startAgent(t, f.relays[:1], map[string]string{"echo": echo.Addr}, "")
	pa := c.startProxy(t, f.relays[:1], []string{"echo"}, "")
	pc := c.startProxy(t, f.relays[2:], []string{"echo"}, "")
	waitFor(t, "a stream through relay c", 30*time.Second, func() bool { return probe(pc.Listen["echo"]) == nil })
	for i := 0; i < 20; i++ {
		probe(pc.Listen["echo"])
	}

	// Partition, refused: relay a's peer port rejects connections.
	live := dialEcho(t, pc.Listen["echo"]) // a forwarded stream, live across the cut
	mark := pc.Proc.Mark()
	gate.refuse()
	d, err, ok := scUntil(pc.Listen["echo"], false, 10*time.Second)
	t.Logf("scaling: failures partition refused (relay a's peer port resets): first forwarded stream failed %v after the cut (%v, found %v); local stream on a: %v; live forwarded stream: %v; proxy c says: %s",
		d.Round(time.Millisecond), err, ok, probe(pa.Listen["echo"]), echoOnce(live), scRefused(pc.Proc, mark))
	live.Close()
	var times []time.Duration
	for i := 0; i < 10; i++ {
		took, _ := scProbe(pc.Listen["echo"], 60*time.Second)
		times = append(times, took)
	}
	t.Logf("scaling: failures partition refused: 10 forwarded streams while cut, each failed after p50 %v max %v", durPercentile(times, 50).Round(time.Millisecond), durPercentile(times, 100).Round(time.Millisecond))
	gate.open(t)
	d, _, ok = scUntil(pc.Listen["echo"], true, 30*time.Second)
	t.Logf("scaling: failures partition refused, healed: forwarded streams work again %v later (%v)", d.Round(time.Millisecond), ok)
	for i := 0; i < 20; i++ { // fill relay c's pool of idle peer connections again
		probe(pc.Listen["echo"])
	}

	// Partition, blackholed: relay a's peer port drops everything.
	mark = pc.Proc.Mark()
	gate.blackhole()
	times = times[:0]
	var errs []string
	for i := 0; i < 4; i++ {
		took, err := scProbe(pc.Listen["echo"], 60*time.Second)
		times = append(times, took)
		errs = append(errs, fmt.Sprint(err))
	}
	t.Logf("scaling: failures partition blackholed: 4 forwarded streams one after the other took %v (%v); local stream on a: %v; proxy c says: %s",
		times, errs, probe(pa.Listen["echo"]), scRefused(pc.Proc, mark))
	gate.open(t)
	d, _, ok = scUntil(pc.Listen["echo"], true, 60*time.Second)
	t.Logf("scaling: failures partition blackholed, healed: forwarded streams work again %v later (%v)", d.Round(time.Millisecond), ok)

	// Redis down.
	mark = pc.Proc.Mark()
	markRelay := f.relays[2].Proc.Mark()
	f.redis.Stop(t)
	down := time.Now()
	d, err, ok = scUntil(pc.Listen["echo"], false, 15*time.Second)
	t.Logf("scaling: failures redis down: forwarded streams fail from %v after the stop (found %v; %v); local stream on a: %v; proxy c says: %s",
		d.Round(time.Millisecond), ok, err, probe(pa.Listen["echo"]), scRefused(pc.Proc, mark))
	if m := regexp.MustCompile(`fleet directory unavailable[^\n]*`).FindString(f.relays[2].Proc.out.from(markRelay)); m != "" {
		t.Logf("scaling: failures redis down: relay c logged %q %v after the stop", m, time.Since(down).Round(time.Millisecond))
	}
	time.Sleep(5 * time.Second)
	f.startRedisAt(t)
	d, _, ok = scUntil(pc.Listen["echo"], true, 30*time.Second)
	t.Logf("scaling: failures redis back (after %v down): forwarded streams work again %v after it listened (%v)", time.Since(down).Round(time.Second), d.Round(time.Millisecond), ok)

}

// ---- 7. HTTP mode in a fleet ----

// scHTTP sends n requests to base+path with tok, each with body bytes
// (GET when 0), and counts the answers by status code.
func scHTTP(base, path, tok string, n, body int) map[string]int {
	codes := map[string]int{}
	// A connection per request, as independent clients would (a balancer
	// then spreads them).
	cl := &http.Client{Timeout: 90 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var slowest time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		k := scHTTPOnce(cl, base+path, tok, body)
		slowest = max(slowest, time.Since(start))
		codes[k]++
	}
	codes[fmt.Sprintf("(slowest %v)", slowest.Round(time.Millisecond))] = 0
	return codes
}

// scHTTPOnce sends one request and returns its status code, with the
// body's start when it is not 200.
func scHTTPOnce(cl *http.Client, url, tok string, body int) string {
	method, rd := http.MethodGet, io.Reader(nil)
	if body > 0 {
		method, rd = http.MethodPost, bytes.NewReader(make([]byte, body))
	}
	req, _ := http.NewRequest(method, url, rd)
	req.Header.Set("ServiceBusAuthorization", tok)
	resp, err := cl.Do(req)
	if err != nil {
		return "error"
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	k := strconv.Itoa(resp.StatusCode)
	if resp.StatusCode != http.StatusOK {
		k += " " + strings.TrimSpace(string(b))
	}
	return k
}

// scalingHTTPMode: HTTP-mode requests (an http:// endpoint, a WebSocket
// agent) in a fleet of 3 behind HAProxy: to the agent's relay, to another
// relay, and through the balancer, small (on the control channel) and
// 1 MiB (over a rendezvous the agent dials back through the balancer).
func scalingHTTPMode(t *testing.T) {
	api := onpremAPI(t)
	c := newCluster(t, "api")
	c.Quiet = true
	f := startFleetRelays(t, c, 3, "")
	f.lb = &crelay{Control: freePort(t), Data: freePort(t), HTTP: freePort(t)}
	f.haproxy = scHAProxy(t, f.lb, f.relays, false)
	c.startAgent(t, []*crelay{f.lb}, map[string]string{"api": "http://" + api.Listener.Addr().String()}, "  transport: websocket\n")
	var home *crelay
	waitFor(t, "the agent on a relay", 30*time.Second, func() bool {
		for _, r := range f.relays {
			if r.status(t).Relay.Listening["api"] > 0 {
				home = r
				return true
			}
		}
		return false
	})
	var other *crelay
	for _, r := range f.relays {
		if r != home {
			other = r
			break
		}
	}
	tok := e2eToken("api", "apps", c.Keys["api"].Apps)
	for _, tc := range []struct {
		what string
		base string
		body int
	}{
		{"GET to the agent's relay", home.url(), 0},
		{"GET to another relay", other.url(), 0},
		{"GET through the balancer", f.lb.url(), 0},
		{"POST 1 MiB to the agent's relay", home.url(), 1 << 20},
		{"POST 1 MiB through the balancer", f.lb.url(), 1 << 20},
	} {
		n := 30
		if tc.body > 0 {
			n = 6 // a lost rendezvous costs the relay's 60 s request timeout
		}
		t.Logf("scaling: httpmode %s: %d requests: %v", tc.what, n, scHTTP(tc.base, "/api/x", tok, n, tc.body))
	}
}

// ---- 8. the only agent's relay dies ----

// scalingOnlyAgent: a fleet of 3 behind HAProxy, one agent (so one relay
// has it) and a proxy through HAProxy under a steady probe load; the
// agent's relay is killed (SIGKILL): how long until the agent is attached
// elsewhere and streams work again.
func scalingOnlyAgent(t *testing.T) {
	echo := startPlainEcho(t)
	c := newCluster(t, "echo")
	c.Quiet = true
	f := startFleetRelays(t, c, 3, scLimits)
	f.lb = &crelay{Control: freePort(t), Data: freePort(t), HTTP: freePort(t)}
	f.haproxy = scHAProxy(t, f.lb, f.relays, true)
	a := c.startAgent(t, []*crelay{f.lb}, map[string]string{"echo": echo.Addr}, "")
	p := c.startProxy(t, []*crelay{f.lb}, []string{"echo"}, "")
	addr := p.Listen["echo"]
	waitFor(t, "streams through the fleet", 30*time.Second, func() bool { return probe(addr) == nil })
	var home *crelay
	for _, r := range f.relays {
		if r.status(t).Relay.Listening["echo"] > 0 {
			home = r
		}
	}
	if home == nil {
		t.Fatal("no relay has the agent")
	}
	load := scStartLoad(addr, 2, 20*time.Millisecond)
	time.Sleep(2 * time.Second)
	load.take()
	mark, amark := p.Proc.Mark(), a.Proc.Mark()
	killed := time.Now()
	home.Proc.Kill()
	a.Proc.WaitLogAfter(t, amark, reAgentListening("echo"), 30*time.Second)
	attached := time.Since(killed)
	var lastFail time.Duration
	_, _, ok := scUntil(addr, true, 30*time.Second)
	d := time.Since(killed)
	time.Sleep(3 * time.Second)
	ok2, fails, slow := load.take()
	load.end()
	for _, fl := range fails {
		if ts, err := time.Parse("15:04:05.000", fl[:12]); err == nil {
			k := killed
			at := time.Date(k.Year(), k.Month(), k.Day(), ts.Hour(), ts.Minute(), ts.Second(), ts.Nanosecond(), k.Location())
			lastFail = max(lastFail, at.Sub(killed))
		}
	}
	t.Logf("scaling: onlyagent its relay killed: agent listening again (through the balancer) %v after the kill; streams work %v after (%v); %d probes ok, %d failed, the last %v after the kill (%s), %d over 1 s; proxy refusals: %s",
		attached.Round(time.Millisecond), d.Round(time.Millisecond), ok, ok2, len(fails), lastFail.Round(time.Millisecond), scFirst(fails), len(slow), scRefused(p.Proc, mark))
}
