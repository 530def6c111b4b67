package integration

// Routing around partial failures (issue 9): hung agents, unreachable
// resources, hung relays, restarts with no outage, reconnection, and the
// WebSocket fallback coming back to native.

import (
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// prober opens a stream through addr every interval until stopped, each on
// a goroutine of its own (a probe stuck on a frozen process does not hold
// back the next ones), recording each setup-and-echo time and every
// failure.
type prober struct {
	mu      sync.Mutex
	results []*probeResult
	stop    chan struct{}
	done    chan struct{}
	wg      sync.WaitGroup
}

// probeResult is one probe: when it started, and once done, how long it
// took and how it failed.
type probeResult struct {
	start time.Time
	d     time.Duration
	err   error
	done  bool
}

// maxProbesInFlight bounds the probes running at once: at 50 ms, 10 s.
const maxProbesInFlight = 200

func startProber(addr string, interval time.Duration) *prober {
	p := &prober{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		inFlight := make(chan struct{}, maxProbesInFlight)
		for {
			select {
			case <-p.stop:
				p.wg.Wait()
				return
			case <-t.C:
			}
			select {
			case inFlight <- struct{}{}:
			default:
				continue // as many stuck as the bound: they are what is measured
			}
			r := &probeResult{start: time.Now()}
			p.mu.Lock()
			p.results = append(p.results, r)
			p.mu.Unlock()
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				defer func() { <-inFlight }()
				err := probe(addr)
				p.mu.Lock()
				r.d, r.err, r.done = time.Since(r.start), err, true
				p.mu.Unlock()
			}()
		}
	}()
	return p
}

// mark returns the time from which since counts probes.
func (p *prober) mark() time.Time { return time.Now() }

// since returns the times of the probes started at mark or later; one
// still running counts as long as it has run so far.
func (p *prober) since(mark time.Time) []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []time.Duration
	for _, r := range p.results {
		switch {
		case r.start.Before(mark):
		case r.done:
			out = append(out, r.d)
		default:
			out = append(out, time.Since(r.start))
		}
	}
	return out
}

// end stops the prober, waits for the probes in flight, and returns every
// probe's time and every failure (with its start time, 15:04:05.000).
func (p *prober) end() (times []time.Duration, failures []string) {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.results {
		times = append(times, r.d)
		if r.err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", r.start.Format("15:04:05.000"), r.err))
		}
	}
	return times, failures
}

// TestRoutingFrozenAgent: one of two agents frozen (SIGSTOP) during
// pgbench -C -c 8: no transaction fails and no client aborts; new streams
// during the freeze take at most 3 s at p99 (the first ones wait the join
// timeout once, then the frozen agent is out of rotation); after SIGCONT
// the agent takes streams again.
func TestRoutingFrozenAgent(t *testing.T) {
	pg := startPostgres(t)
	if out, err := pgbench(t, pg.DirectDSN(), "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	echoA, echoB := startPlainEcho(t), startPlainEcho(t)
	c := newCluster(t, "pg", "echo")
	r := c.startRelay(t, "")
	a := c.startAgent(t, []*crelay{r}, map[string]string{"pg": pg.Addr(), "echo": echoA.Addr}, "")
	c.startAgent(t, []*crelay{r}, map[string]string{"pg": pg.Addr(), "echo": echoB.Addr}, "")
	p := c.startProxy(t, []*crelay{r}, []string{"pg", "echo"}, "")

	bench := make(chan string, 1)
	go func() {
		out, err := pgbench(t, pg.DSN("127.0.0.2", e2ePort(t, p.Listen["pg"])), "-C", "-c", "8", "-j", "2", "-T", "20")
		if err != nil {
			out += "\nerror: " + err.Error()
		}
		bench <- out
	}()
	pr := startProber(p.Listen["echo"], 50*time.Millisecond)
	time.Sleep(3 * time.Second)
	a.Proc.Signal(syscall.SIGSTOP)
	frozen := pr.mark()
	time.Sleep(8 * time.Second)
	during := pr.since(frozen)
	a.Proc.Signal(syscall.SIGCONT)
	// The thawed agent answers its pings and takes streams again.
	before := echoA.accepted.Load()
	waitFor(t, "the thawed agent to take streams again", 30*time.Second, func() bool { return echoA.accepted.Load() > before })
	times, failures := pr.end()
	out := <-bench
	failed, ok := pgbenchFailed(out)
	p99 := durPercentile(during, 99)
	t.Logf("one of two agents frozen 8 s under pgbench -C -c 8: %d failed transactions (aborted: %v); %d probes during the freeze, p50 %v p99 %v max %v; %d probe failures in %d",
		failed, strings.Contains(out, "aborted"), len(during), durPercentile(during, 50).Round(time.Millisecond), p99.Round(time.Millisecond),
		durPercentile(during, 100).Round(time.Millisecond), len(failures), len(times))
	if !ok || failed != 0 || strings.Contains(out, "aborted") || strings.Contains(out, "error:") {
		t.Fatalf("pgbench with a frozen agent:\n%s", out)
	}
	if len(failures) > 0 {
		t.Fatalf("%d probes failed: %v", len(failures), failures)
	}
	if len(during) < 100 { // 160 at 50 ms over 8 s
		t.Fatalf("only %d probes started during the freeze", len(during))
	}
	if p99 > 3*time.Second {
		t.Fatalf("new-stream p99 during the freeze %v, want <= 3s", p99)
	}
}

// TestRoutingUnhealthyEndpoint: of two agents, one cannot reach its
// endpoint: 200 new streams all succeed (the refused ones move to the other
// agent), the agent is reported unhealthy in the relay's status and its own,
// and takes streams again once its endpoint is back.
func TestRoutingUnhealthyEndpoint(t *testing.T) {
	good := startPlainEcho(t)
	down := freeAddr(t, "127.0.0.1") // nothing listens there yet
	c := newCluster(t, "echo")
	r := c.startRelay(t, "")
	bad := c.startAgent(t, []*crelay{r}, map[string]string{"echo": down}, "")
	c.startAgent(t, []*crelay{r}, map[string]string{"echo": good.Addr}, "")
	p := c.startProxy(t, []*crelay{r}, []string{"echo"}, "")
	failures := 0
	for i := 0; i < 200; i++ {
		if err := probe(p.Listen["echo"]); err != nil {
			failures++
			t.Errorf("stream %d: %v", i, err)
		}
	}
	st := r.status(t)
	unhealthy := 0
	for _, a := range st.Relay.Agents {
		if a.Role == "agent" && a.Unhealthy["echo"] != "" {
			unhealthy++
		}
	}
	var ast struct {
		Agent struct {
			Unhealthy map[string]string `json:"unhealthy"`
		} `json:"agent"`
	}
	getJSON(t, "http://"+bad.Admin+"/status", &ast)
	t.Logf("200 streams with one agent's endpoint refusing: %d failed; relay reports %d unhealthy agent(s); the agent says %q",
		failures, unhealthy, ast.Agent.Unhealthy["echo"])
	if unhealthy != 1 || ast.Agent.Unhealthy["echo"] == "" {
		t.Fatalf("the unhealthy agent is not reported: relay %+v, agent %+v", st.Relay.Agents, ast.Agent)
	}
	// The endpoint comes back: the agent's check sees it, and it serves.
	ln, err := net.Listen("tcp", down)
	if err != nil {
		t.Fatal(err)
	}
	var back atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			back.Add(1)
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	defer ln.Close()
	bad.Proc.WaitLog(t, "endpoint reachable again", 30*time.Second)
	waitFor(t, "the recovered agent to take streams", 30*time.Second, func() bool {
		probe(p.Listen["echo"])
		return back.Load() > 1 // more than the health check's own connection
	})
}

// TestRoutingFrozenRelay: with two relays, streams spread evenly over both
// (1,000 streams: 40–60 % each); with one frozen, after the first stream
// (which waits the open timeout once), new streams take no longer than
// before (p99 <= 100 ms).
func TestRoutingFrozenRelay(t *testing.T) {
	echo := startPlainEcho(t)
	// Over TLS, the proxy's streams to the frozen relay ride one
	// multiplexed connection, which stays open while the relay is frozen.
	for _, tls := range []bool{false, true} {
		t.Run(map[bool]string{false: "plaintext", true: "tls"}[tls], func(t *testing.T) {
			testFrozenRelay(t, echo, tls)
		})
	}
}

func testFrozenRelay(t *testing.T, echo *plainEcho, tls bool) {
	c := newCluster(t, "echo")
	var r1, r2 *crelay
	if tls {
		line := relayTLSLine(t) // one CA for both relays
		a1, a2 := freeAddr(t, "127.0.0.3"), freeAddr(t, "127.0.0.3")
		r1, r2 = c.startRelay(t, line+"  admin: "+a1+"\n"), c.startRelay(t, line+"  admin: "+a2+"\n")
		r1.TLS, r2.TLS, r1.Admin, r2.Admin = true, true, a1, a2
	} else {
		r1, r2 = c.startRelay(t, ""), c.startRelay(t, "")
	}
	c.startAgent(t, []*crelay{r1, r2}, map[string]string{"echo": echo.Addr}, "")
	p := c.startProxy(t, []*crelay{r1, r2}, []string{"echo"}, "")
	// Both relays have the agent.
	const n = 1000
	fails, firstErr := probeMany(p.Listen["echo"], n)
	o1, o2 := r1.status(t).Relay.Counters["streams_opened"], r2.status(t).Relay.Counters["streams_opened"]
	share := float64(o1) / float64(o1+o2)
	t.Logf("spread of %d streams over two healthy relays: %d and %d (%.1f %%), %d failed", n, o1, o2, 100*share, fails)
	if fails != 0 || share < 0.40 || share > 0.60 {
		t.Fatalf("streams not spread: %d and %d, %d failed (%s)", o1, o2, fails, firstErr)
	}
	var healthy []time.Duration
	for i := 0; i < 50; i++ {
		start := time.Now()
		if err := probe(p.Listen["echo"]); err != nil {
			t.Fatal(err)
		}
		healthy = append(healthy, time.Since(start))
	}

	r1.Proc.Signal(syscall.SIGSTOP)
	defer r1.Proc.Signal(syscall.SIGCONT)
	var first time.Duration
	var frozen []time.Duration
	for i := 0; i < 101; i++ {
		start := time.Now()
		if err := probe(p.Listen["echo"]); err != nil {
			t.Fatalf("stream %d with a frozen relay: %v", i, err)
		}
		if i == 0 {
			first = time.Since(start)
		} else {
			frozen = append(frozen, time.Since(start))
		}
	}
	t.Logf("one of two relays frozen: first stream %v; then p50 %v p99 %v (both up: p50 %v p99 %v)", first.Round(time.Millisecond),
		durPercentile(frozen, 50).Round(time.Microsecond), durPercentile(frozen, 99).Round(time.Microsecond),
		durPercentile(healthy, 50).Round(time.Microsecond), durPercentile(healthy, 99).Round(time.Microsecond))
	if p99 := durPercentile(frozen, 99); p99 > 100*time.Millisecond {
		t.Fatalf("with a frozen relay, new streams p99 %v, want <= 100ms", p99)
	}
}

// setMigrateReq turns net.ipv4.tcp_migrate_req on for the test (root only):
// connections queued on a closing listener move to the process that took
// over the port rather than being reset.
func setMigrateReq(t *testing.T) {
	const path = "/proc/sys/net/ipv4/tcp_migrate_req"
	old, err := os.ReadFile(path)
	if err != nil {
		t.Logf("no %s: %v", path, err)
		return
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		t.Logf("cannot set %s: %v", path, err)
		return
	}
	t.Cleanup(func() { os.WriteFile(path, old, 0o644) })
}

// TestRoutingRestartNoOutage: SIGTERM the only relay and start a new one on
// the same ports at once, under a 50 ms probe loop and a live psql session:
// no probe is refused, the session finishes on the draining relay, and the
// agent is on the new relay within 2 s.
func TestRoutingRestartNoOutage(t *testing.T) {
	setMigrateReq(t)
	pg := startPostgres(t)
	echo := startPlainEcho(t)
	// Over TLS every data connection is a stream of one multiplexed
	// connection per client, which stays with the old process: the relay
	// retires it and the clients move their new streams to a new one.
	for _, tls := range []bool{false, true} {
		t.Run(map[bool]string{false: "plaintext", true: "tls"}[tls], func(t *testing.T) {
			testRestartNoOutage(t, pg, echo, tls)
		})
	}
}

func testRestartNoOutage(t *testing.T, pg *Postgres, echo *plainEcho, tls bool) {
	c := newCluster(t, "pg", "echo")
	extra := "  drain_grace: 20s\n"
	if tls {
		extra += relayTLSLine(t)
	}
	r := c.startRelay(t, extra)
	r.TLS = tls
	c.startAgent(t, []*crelay{r}, map[string]string{"pg": pg.Addr(), "echo": echo.Addr}, "")
	p := c.startProxy(t, []*crelay{r}, []string{"pg", "echo"}, "")
	session := make(chan error, 1)
	go func() {
		out, err := psql(t, pg.DSN("127.0.0.2", e2ePort(t, p.Listen["pg"])), "select pg_sleep(4), 42")
		if err == nil && !strings.Contains(out, "42") {
			err = fmt.Errorf("psql said %q", out)
		}
		session <- err
	}()
	waitFor(t, "the psql session to start", 30*time.Second, func() bool {
		out, _ := psql(t, pg.DirectDSN(), "select count(*) from pg_stat_activity where query like 'select pg_sleep%'")
		return strings.TrimSpace(out) == "1"
	})
	pr := startProber(p.Listen["echo"], 50*time.Millisecond)
	time.Sleep(time.Second)
	old := r.Proc
	restart := time.Now()
	old.Signal(syscall.SIGTERM)
	if err := c.runRelay(t, r); err != nil {
		t.Fatalf("the new relay did not start: %v\n%s", err, tailLines(r.Proc.Output(), 30))
	}
	r.Proc.WaitLog(t, regexp.MustCompile(`agent listening: hc=echo`), 10*time.Second)
	attached := time.Since(restart)
	time.Sleep(2 * time.Second)
	times, failures := pr.end()
	if err := <-session; err != nil {
		t.Fatalf("the psql session across the restart: %v", err)
	}
	t.Logf("relay restarted in place: agent on the new relay %v after SIGTERM; %d probes at 50 ms, %d failed, p99 %v; psql session survived",
		attached.Round(time.Millisecond), len(times), len(failures), durPercentile(times, 99).Round(time.Millisecond))
	if len(failures) > 0 {
		t.Fatalf("%d probes failed across the restart: %v", len(failures), failures)
	}
	if attached > 2*time.Second {
		t.Fatalf("the agent reached the new relay %v after the restart, want <= 2s", attached)
	}
	old.Wait(t, 30*time.Second)
}

// TestRoutingReattachAfterOutage: the relay down for 20 s, then back: the
// agent is attached again within 2 s of the relay listening.
func TestRoutingReattachAfterOutage(t *testing.T) {
	echo := startPlainEcho(t)
	c := newCluster(t, "echo")
	r := c.startRelay(t, "")
	c.startAgent(t, []*crelay{r}, map[string]string{"echo": echo.Addr}, "")
	r.Proc.Kill()
	r.Proc.Wait(t, 10*time.Second)
	time.Sleep(20 * time.Second)
	start := time.Now()
	if err := c.runRelay(t, r); err != nil {
		t.Fatal(err)
	}
	listening := time.Since(start)
	r.Proc.WaitLog(t, regexp.MustCompile(`agent listening: hc=echo`), 10*time.Second)
	back := time.Since(start) - listening
	t.Logf("relay back after a 20 s outage: agent attached %v after the relay listened", back.Round(time.Millisecond))
	if back > 2*time.Second {
		t.Fatalf("agent re-attached %v after the relay came back, want <= 2s", back)
	}
}

// forwarder listens on addr and forwards every connection to target; until
// started, nothing listens on addr (a blocked port refuses).
type forwarder struct {
	addr, target string
	ln           net.Listener
}

func (f *forwarder) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				u, err := net.Dial("tcp", f.target)
				if err != nil {
					c.Close()
					return
				}
				go func() { io.Copy(u, c); u.Close() }()
				io.Copy(c, u)
				c.Close()
			}()
		}
	}()
}

// TestRoutingAutoComesBack: transport auto with the relay's native ports
// blocked at start falls back to WebSocket; once they open, the agent's
// control channel and new streams go native again within the re-probe
// interval, and a stream opened over WebSocket carries on.
func TestRoutingAutoComesBack(t *testing.T) {
	echo := startPlainEcho(t)
	c := newCluster(t, "echo")
	r := c.startRelay(t, "")
	ctl := &forwarder{addr: freeAddr(t, "127.0.0.1"), target: fmt.Sprintf("127.0.0.1:%d", r.Control)}
	data := &forwarder{addr: freeAddr(t, "127.0.0.1"), target: fmt.Sprintf("127.0.0.1:%d", r.Data)}
	blocked := *r
	blocked.Control, blocked.Data = e2ePort(t, ctl.addr), e2ePort(t, data.addr)
	a := c.startAgent(t, []*crelay{&blocked}, map[string]string{"echo": echo.Addr}, "  transport: auto\n")
	a.Proc.WaitLog(t, "using the websocket fallback", e2eStartTimeout)
	p := c.startProxy(t, []*crelay{&blocked}, []string{"echo"}, "  transport: auto\n")
	live := dialEcho(t, p.Listen["echo"]) // over WebSocket
	defer live.Close()
	time.Sleep(10 * time.Second)
	ctl.start(t)
	data.start(t)
	opened := time.Now()
	a.Proc.WaitLog(t, regexp.MustCompile(`listening: relay=\S+ hc=echo endpoint=\S+ transport=tcp`), 45*time.Second)
	t.Logf("native ports open again: agent's control channel native %v later", time.Since(opened).Round(time.Millisecond))
	if err := echoOnce(live); err != nil {
		t.Fatalf("the stream opened over websocket did not carry on: %v", err)
	}
	waitFor(t, "new streams to go native", 45*time.Second, func() bool {
		probe(p.Listen["echo"])
		return strings.Contains(p.Proc.Output(), "using the native protocol")
	})
	if err := probe(p.Listen["echo"]); err != nil {
		t.Fatal(err)
	}
}

// TestRoutingUpStartsNative: `hybrid up`, where the agent and proxy start
// beside a relay that may not listen yet, comes up on the native protocol
// every time (20 starts).
func TestRoutingUpStartsNative(t *testing.T) {
	echo := startPlainEcho(t)
	c := newCluster(t, "echo")
	for i := 0; i < 20; i++ {
		r := &crelay{Control: freePort(t), Data: freePort(t), HTTP: freePort(t)}
		listen := freeAddr(t, "127.0.0.2")
		var b strings.Builder
		b.WriteString(c.relayYAML(r))
		fmt.Fprintf(&b, "agent:\n  relays: [%s]\n  transport: auto\n  connections:\n    - {name: echo, endpoint: %q, key_name: onprem, key: %q}\n",
			r.entry(), echo.Addr, c.Keys["echo"].Onprem)
		fmt.Fprintf(&b, "proxy:\n  relay: %s\n  transport: auto\n  connections:\n    - {name: echo, listen: %q, key_name: apps, key: %q}\n",
			r.entry(), listen, c.Keys["echo"].Apps)
		cfg := writeFile(t, t.TempDir(), "up.yaml", b.String())
		up := startProcWith(t, ProcConfig{Label: fmt.Sprintf("up-%d", i)}, "hybrid", "up", "--config", cfg)
		up.WaitLog(t, regexp.MustCompile(`agent: listening: relay=\S+ hc=echo endpoint=\S+ transport=tcp`), e2eStartTimeout)
		up.WaitLog(t, "forwarding: listen="+listen+" ", e2eStartTimeout)
		if err := probe(listen); err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		if strings.Contains(up.Output(), "websocket fallback") {
			t.Fatalf("start %d fell back to websocket:\n%s", i, tailLines(up.Output(), 30))
		}
		up.Stop(t)
	}
}
