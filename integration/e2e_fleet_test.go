package integration

// A relay fleet behind one address (issue 10): three relays sharing a
// directory in a real redis-server, behind HAProxy in TCP mode (round
// robin), with agents and proxies that know only HAProxy's address.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/wire"
)

const fleetSecret = "fleet-secret-for-tests-0123456789"

// fleetEnv is a fleet: Redis, relays, HAProxy in front.
type fleetEnv struct {
	c         *cluster
	redisPort int
	redis     *Proc
	redisDir  string
	relays    []*crelay
	peers     []string // each relay's fleet.listen
	lb        *crelay  // HAProxy's front as agents and proxies name it
	haproxy   *Proc
}

// startRedisAt starts redis-server on port (again).
func (f *fleetEnv) startRedisAt(t *testing.T) {
	t.Helper()
	server := needProgram(t, "redis-server", "redis-server")
	f.redis = startProcWith(t, ProcConfig{Label: fmt.Sprintf("redis-%d", f.redisPort), Dir: f.redisDir}, server,
		"--port", strconv.Itoa(f.redisPort), "--bind", "127.0.0.1", "--protected-mode", "no",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", f.redisDir, "--logfile", "")
	if err := e2eWaitOutput(f.redis, "Ready to accept connections", 30*time.Second); err != nil {
		t.Fatalf("redis-server: %v\n%s", err, tailLines(f.redis.Output(), 20))
	}
}

func (f *fleetEnv) fleetYAML(i int, id string) string {
	return fmt.Sprintf("  fleet:\n    redis: \"redis://127.0.0.1:%d/0\"\n    id: %s\n    listen: %s\n    secret: %q\n",
		f.redisPort, id, f.peers[i], fleetSecret)
}

// startFleet starts Redis, n relays of a fleet and HAProxy before them.
func startFleet(t *testing.T, c *cluster, n int) *fleetEnv {
	t.Helper()
	f := startFleetRelays(t, c, n, "")
	f.startHAProxy(t)
	return f
}

// startFleetRelays starts Redis and n relays of a fleet (ids relay-a,
// relay-b, ...), each with extra lines in its section, without HAProxy:
// agents and proxies name the relays themselves.
func startFleetRelays(t *testing.T, c *cluster, n int, extra string) *fleetEnv {
	t.Helper()
	f := &fleetEnv{c: c, redisPort: freePort(t), redisDir: t.TempDir()}
	f.startRedisAt(t)
	for i := 0; i < n; i++ {
		f.peers = append(f.peers, freeAddr(t, "127.0.0.1"))
		f.relays = append(f.relays, c.startRelay(t, f.fleetYAML(i, fmt.Sprintf("relay-%c", 'a'+i))+extra))
	}
	for _, r := range f.relays { // every relay sees the others
		r.Proc.WaitLog(t, "fleet member listening", e2eStartTimeout)
	}
	return f
}

// startHAProxy puts HAProxy (TCP mode, round robin, 500 ms health checks)
// in front of the relays' control, data and http ports.
func (f *fleetEnv) startHAProxy(t *testing.T) {
	t.Helper()
	bin := needProgram(t, "haproxy", "haproxy")
	f.lb = &crelay{Control: freePort(t), Data: freePort(t), HTTP: freePort(t)}
	var b strings.Builder
	b.WriteString("global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n")
	for _, fe := range []struct {
		name string
		port int
		pick func(*crelay) int
	}{
		{"control", f.lb.Control, func(r *crelay) int { return r.Control }},
		{"data", f.lb.Data, func(r *crelay) int { return r.Data }},
		{"http", f.lb.HTTP, func(r *crelay) int { return r.HTTP }},
	} {
		fmt.Fprintf(&b, "frontend %s\n  bind 127.0.0.1:%d\n  default_backend %s_b\nbackend %s_b\n  balance roundrobin\n", fe.name, fe.port, fe.name, fe.name)
		for i, r := range f.relays {
			fmt.Fprintf(&b, "  server r%d 127.0.0.1:%d check inter 500ms fall 2 rise 1\n", i, fe.pick(r))
		}
	}
	cfg := writeFile(t, t.TempDir(), "haproxy.cfg", b.String())
	f.haproxy = startProcWith(t, ProcConfig{Label: "haproxy"}, bin, "-db", "-f", cfg)
	waitTCP(t, fmt.Sprintf("127.0.0.1:%d", f.lb.Data), e2eStartTimeout)
}

// TestFleetBehindOneAddress: three relays behind HAProxy, two agents and
// the proxies knowing only HAProxy: 1,000 native streams and 200 over
// WebSocket, all served; pgbench through it, 0 failed; a 100 MiB transfer
// intact across a forwarded stream. Then all of it again with TLS on every
// link, where each client's streams ride one multiplexed TLS connection
// per relay address, which HAProxy sends to any relay: an agent's parked
// and joined streams then land on a relay other than its control
// channel's and are piped there.
func TestFleetBehindOneAddress(t *testing.T) {
	pg := startPostgres(t)
	if out, err := pgbench(t, pg.DirectDSN(), "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	echo := startPlainEcho(t)
	sink := startSinkSource(t)
	for _, tls := range []bool{false, true} {
		t.Run(map[bool]string{false: "plaintext", true: "tls"}[tls], func(t *testing.T) {
			testFleetBehindOneAddress(t, pg, echo, sink, tls)
		})
	}
}

func testFleetBehindOneAddress(t *testing.T, pg *Postgres, echo *plainEcho, sink string, tls bool) {
	c := newCluster(t, "echo", "pg", "bulk")
	extra := ""
	if tls {
		extra = relayTLSLine(t) // one CA for the three
	}
	f := startFleetRelays(t, c, 3, extra)
	for _, r := range f.relays {
		r.TLS = tls
	}
	f.startHAProxy(t)
	f.lb.TLS = tls
	pubs := map[string]string{"echo": echo.Addr, "pg": pg.Addr(), "bulk": sink}
	c.startAgent(t, []*crelay{f.lb}, pubs, "")
	c.startAgent(t, []*crelay{f.lb}, pubs, "")
	p := c.startProxy(t, []*crelay{f.lb}, []string{"echo", "pg"}, "")
	ws := c.startProxy(t, []*crelay{f.lb}, []string{"echo"}, "  transport: websocket\n")

	nf, e1 := probeMany(p.Listen["echo"], 1000)
	wf, e2 := probeMany(ws.Listen["echo"], 200)
	t.Logf("fleet of 3 behind HAProxy (tls %v): 1000 native streams, %d failed; 200 websocket streams, %d failed", tls, nf, wf)
	if nf != 0 || wf != 0 {
		t.Fatalf("streams failed through the fleet: native %d (%s), websocket %d (%s)", nf, e1, wf, e2)
	}

	out, err := pgbench(t, pg.DSN("127.0.0.2", e2ePort(t, p.Listen["pg"])), "-c", "8", "-j", "2", "-T", "20")
	failed, ok := pgbenchFailed(out)
	tps, _ := pgbenchTPS(out)
	t.Logf("pgbench -c 8 -T 20 through the fleet (tls %v): %d failed, tps %.0f", tls, failed, tps)
	if err != nil || !ok || failed != 0 {
		t.Fatalf("pgbench through the fleet: %v\n%s", err, out)
	}

	transferForwarded(t, c, f, sink, 100<<20)
}

// transferForwarded moves size bytes each way across a stream that is
// forwarded for sure (an agent on relay a only, a proxy on relay c only)
// and checks both digests.
func transferForwarded(t *testing.T, c *cluster, f *fleetEnv, sink string, size int64) {
	t.Helper()
	c2 := &cluster{Keys: map[string]hcKeys{"bulk": c.Keys["bulk"]}}
	c2.startAgent(t, []*crelay{f.relays[0]}, map[string]string{"bulk": sink}, "")
	pc := c2.startProxy(t, []*crelay{f.relays[len(f.relays)-1]}, []string{"bulk"}, "")
	sent, got := uploadAndHash(t, pc.Listen["bulk"], size)
	if sent != got {
		t.Fatalf("%d MiB upload across a forwarded stream: sha256 differs", size>>20)
	}
	want, gotDown, n := downloadAndHash(t, pc.Listen["bulk"], size)
	if want != gotDown || n != size {
		t.Fatalf("%d MiB download across a forwarded stream: %d bytes, digest match %v", size>>20, n, want == gotDown)
	}
	t.Logf("%d MiB each way across a forwarded stream (relay %c to relay a): sha256 equal", size>>20, 'a'+len(f.relays)-1)
}

// TestFleetFailures: a relay killed under a probe loop (new streams flow
// again within 2 s, its directory entry gone within the lease), Redis
// stopped (same-relay streams go on, cross-relay ones fail saying why) and
// back (cross-relay streams within 2 s), revocation cutting a forwarded
// stream within a second, and a peer without the fleet credential refused.
func TestFleetFailures(t *testing.T) {
	echo := startPlainEcho(t)
	c := newCluster(t, "echo", "echo2")
	f := startFleet(t, c, 3)
	// Agents on relays a and b; a proxy through HAProxy.
	c.startAgent(t, []*crelay{f.relays[0]}, map[string]string{"echo": echo.Addr, "echo2": echo.Addr}, "")
	c.startAgent(t, []*crelay{f.relays[1]}, map[string]string{"echo": echo.Addr, "echo2": echo.Addr}, "")
	p := c.startProxy(t, []*crelay{f.lb}, []string{"echo"}, "")
	waitFor(t, "every relay to see both agents' relays", 10*time.Second, func() bool { return probe(p.Listen["echo"]) == nil })

	t.Run("relay killed", func(t *testing.T) {
		// A stream through relay a lives on when relay b dies.
		pa := c.startProxy(t, []*crelay{f.relays[0]}, []string{"echo"}, "")
		live := dialEcho(t, pa.Listen["echo"])
		defer live.Close()
		pr := startProber(p.Listen["echo"], 50*time.Millisecond)
		time.Sleep(time.Second)
		killed := time.Now()
		f.relays[1].Proc.Kill()
		time.Sleep(4 * time.Second)
		times, failures := pr.end()
		var lastFail time.Time
		for _, s := range failures {
			if ts, err := time.Parse("15:04:05.000", s[:12]); err == nil {
				lastFail = ts
			}
		}
		recovered := time.Duration(0)
		if len(failures) > 0 {
			k := killed
			lf := time.Date(k.Year(), k.Month(), k.Day(), lastFail.Hour(), lastFail.Minute(), lastFail.Second(), lastFail.Nanosecond(), k.Location())
			recovered = lf.Sub(killed)
		}
		t.Logf("relay b killed under a 50 ms probe loop: %d of %d probes failed, the last %v after the kill", len(failures), len(times), recovered.Round(time.Millisecond))
		if recovered > 2*time.Second {
			t.Fatalf("new streams failed until %v after the kill: %v", recovered, failures)
		}
		if err := echoOnce(live); err != nil {
			t.Fatalf("a stream on relay a was cut when relay b died: %v", err)
		}
		// The directory forgets it within the lease.
		waitFor(t, "relay b's directory entry to expire", 4*time.Second, func() bool {
			out, _ := runCmd(t, 5*time.Second, "redis-cli", "-p", strconv.Itoa(f.redisPort), "exists", "hybrid:fleet:relay:relay-b")
			return strings.TrimSpace(out) == "0"
		})
	})

	t.Run("redis down and back", func(t *testing.T) {
		// A proxy on relay c (no agent there: every stream crosses) and
		// one on relay a (its agent is there: streams stay).
		pc := c.startProxy(t, []*crelay{f.relays[2]}, []string{"echo"}, "")
		pa := c.startProxy(t, []*crelay{f.relays[0]}, []string{"echo"}, "")
		if err := probe(pc.Listen["echo"]); err != nil {
			t.Fatalf("cross-relay stream before the outage: %v", err)
		}
		f.redis.Stop(t)
		f.relays[2].Proc.WaitLog(t, "fleet directory unavailable", 15*time.Second)
		if err := probe(pa.Listen["echo"]); err != nil {
			t.Fatalf("same-relay stream without Redis: %v", err)
		}
		if err := probe(pc.Listen["echo"]); err == nil {
			t.Fatal("a cross-relay stream worked without the directory")
		}
		pc.Proc.WaitLog(t, "fleet directory unavailable", 10*time.Second)
		f.startRedisAt(t)
		back := time.Now()
		waitFor(t, "cross-relay streams after Redis is back", 10*time.Second, func() bool { return probe(pc.Listen["echo"]) == nil })
		t.Logf("Redis back: cross-relay streams work again %v later", time.Since(back).Round(time.Millisecond))
		if d := time.Since(back); d > 2500*time.Millisecond {
			t.Fatalf("cross-relay streams came back %v after Redis, want <= 2s", d)
		}
	})

	t.Run("revocation cuts a forwarded stream", func(t *testing.T) {
		pc := c.startProxy(t, []*crelay{f.relays[2]}, []string{"echo2"}, "")
		live := dialEcho(t, pc.Listen["echo2"])
		defer live.Close()
		delete(f.c.Keys, "echo2") // the connection removed on every relay
		start := time.Now()
		for i, r := range f.relays {
			if i == 1 {
				continue // killed above
			}
			saveRename(t, r.Config, f.c.relayYAML(r))
		}
		live.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := live.Read(make([]byte, 1)); err == nil {
			t.Fatal("the forwarded stream outlived the revocation")
		}
		d := time.Since(start)
		t.Logf("revocation by reload on every relay: forwarded stream cut %v after the saves", d.Round(time.Millisecond))
		if d > time.Second {
			t.Fatalf("cut after %v, want <= 1s", d)
		}
	})

	t.Run("peer without the credential", func(t *testing.T) {
		for _, secret := range []string{"", "not-the-fleet-secret-000000000"} {
			conn, err := net.DialTimeout("tcp", f.peers[0], 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			conn.Write(wire.Append([]byte(wire.PeerPreface), &wire.PeerHello{Relay: "intruder"}))
			fr, err := wire.Read(conn)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := fr.(*wire.PeerChallenge); !ok {
				t.Fatalf("got %s", fr.Type())
			}
			var mac [32]byte
			copy(mac[:], secret)
			conn.Write(wire.Append(nil, &wire.PeerAuth{MAC: mac}))
			fr, err = wire.Read(conn)
			if r, ok := fr.(*wire.Result); err == nil && (!ok || r.Err() == nil) {
				t.Fatalf("a peer with secret %q was accepted", secret)
			}
			// Nothing after the refusal: a PEEROPEN is not served.
			conn.Write(wire.Append(nil, &wire.PeerOpen{HC: "echo"}))
			if _, err := wire.Read(conn); err == nil {
				t.Fatal("the refused peer's request was answered")
			}
			conn.Close()
		}
		f.relays[0].Proc.WaitLog(t, regexp.MustCompile(`peer connection refused: .*bad fleet credential`), 10*time.Second)
	})
	// Last: it stops the fleet. A proxy through the balancer has warm
	// connections on every relay, most of them for its session at another
	// relay; a stopping relay closes those at once instead of waiting for
	// that session to end.
	t.Run("stopping relays exit with warm connections of other relays' sessions", func(t *testing.T) {
		pw := c.startProxy(t, []*crelay{f.lb}, []string{"echo"}, "  pool: 8\n")
		if err := probe(pw.Listen["echo"]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // the pool refills through the balancer
		var wg sync.WaitGroup
		took := make([]time.Duration, len(f.relays))
		for i, r := range f.relays {
			if i == 1 {
				continue // killed above
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				r.Proc.Signal(syscall.SIGTERM)
				select {
				case <-r.Proc.Done():
					took[i] = time.Since(start)
				case <-time.After(12 * time.Second):
					took[i] = -1
				}
			}()
		}
		wg.Wait()
		t.Logf("relays a and c exited %v and %v after SIGTERM (-1ns: not within 12 s)", took[0].Round(time.Millisecond), took[2].Round(time.Millisecond))
		for i, d := range took {
			if d < 0 {
				t.Errorf("relay %c still running 12 s after SIGTERM, with no stream left:\n%s", 'a'+i, tailLines(f.relays[i].Proc.Output(), 30))
			}
		}
	})
}

// TestFleetHTTPMode: HTTP-mode requests through the balancer reach the one
// agent that takes them, whichever relay they land on: a request for a
// connection with no listener where it lands is piped, with its
// connection, to a relay that has one; a rendezvous for a large body that
// the agent dials back through the balancer is piped to the relay that
// made its id. Small and 1 MiB bodies, chunked bodies, keep-alive.
func TestFleetHTTPMode(t *testing.T) {
	api := onpremAPI(t)
	c := newCluster(t, "api")
	f := startFleet(t, c, 3)
	c.startAgent(t, []*crelay{f.lb}, map[string]string{"api": "http://" + api.Listener.Addr().String()}, "  transport: websocket\n")
	tok := e2eToken("api", "apps", c.Keys["api"].Apps)
	var home *crelay
	waitFor(t, "every relay to see the agent", 15*time.Second, func() bool {
		home = nil
		for _, r := range f.relays {
			if r.status(t).Relay.Listening["api"] > 0 {
				home = r
			}
		}
		if home == nil {
			return false
		}
		// The others know it from the directory.
		code, _ := fleetHTTP(t, &http.Client{Timeout: 30 * time.Second}, f.otherThan(home).url(), tok, nil, 0)
		return code == http.StatusOK
	})

	fresh := &http.Client{Timeout: 90 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	kept := &http.Client{Timeout: 90 * time.Second}
	other := f.otherThan(home)
	for _, tc := range []struct {
		what   string
		client *http.Client
		base   string
		n      int
		body   int
		chunk  bool
	}{
		{"GET through the balancer, a connection each", fresh, f.lb.url(), 30, 0, false},
		{"GET to a relay without the agent, keep-alive", kept, other.url(), 10, 0, false},
		{"POST 1 MiB through the balancer (rendezvous)", fresh, f.lb.url(), 6, 1 << 20, false},
		{"POST 200 KiB chunked through the balancer", fresh, f.lb.url(), 4, 200 << 10, true},
		{"POST 10 KiB to a relay without the agent", kept, other.url(), 5, 10 << 10, false},
	} {
		ok := 0
		start := time.Now()
		for i := 0; i < tc.n; i++ {
			var body []byte
			if tc.body > 0 {
				body = make([]byte, tc.body)
				for j := range body {
					body[j] = byte(i + j*13)
				}
			}
			code, seen := fleetHTTP(t, tc.client, tc.base, tok, body, map[bool]int{true: -1, false: len(body)}[tc.chunk])
			if code != http.StatusOK {
				t.Fatalf("%s: request %d: %d %s", tc.what, i, code, seen)
			}
			sum := sha256.Sum256(body)
			if !strings.Contains(seen, hex.EncodeToString(sum[:])) {
				t.Fatalf("%s: request %d: the API saw %s", tc.what, i, seen)
			}
			ok++
		}
		t.Logf("%s: %d of %d answered 200 with the body intact, in %v", tc.what, ok, tc.n, time.Since(start).Round(time.Millisecond))
	}
}

// otherThan returns a relay of the fleet other than r.
func (f *fleetEnv) otherThan(r *crelay) *crelay {
	for _, o := range f.relays {
		if o != r {
			return o
		}
	}
	return nil
}

// fleetHTTP sends an HTTP-mode request to base/api/x with body (GET when
// nil; length -1: chunked) and returns the status and what the API says.
func fleetHTTP(t *testing.T, cl *http.Client, base, tok string, body []byte, length int) (int, string) {
	t.Helper()
	method, rd := http.MethodGet, io.Reader(nil)
	if body != nil {
		method, rd = http.MethodPost, bytes.NewReader(body)
		if length < 0 {
			rd = io.MultiReader(rd) // hides the length: chunked
		}
	}
	req, err := http.NewRequest(method, base+"/api/x", rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("ServiceBusAuthorization", tok)
	resp, err := cl.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

// TestFleetPeerBlackholed: a relay whose peer port drops everything (a
// partition that drops packets) costs one timeout, not one per stream:
// with agents on relays a and b and a proxy on relay c, streams go on
// through b at full speed once a is found silent, and a is used again
// once it answers.
func TestFleetPeerBlackholed(t *testing.T) {
	echo := startPlainEcho(t)
	c := newCluster(t, "echo")
	f, gate := startGatedFleet(t, c, "")
	echoB := startPlainEcho(t)
	c.startAgent(t, f.relays[:1], map[string]string{"echo": echo.Addr}, "")
	c.startAgent(t, f.relays[1:2], map[string]string{"echo": echoB.Addr}, "")
	pc := c.startProxy(t, f.relays[2:], []string{"echo"}, "")
	// Relay c knows both agents' relays once a stream through it has
	// reached each.
	waitFor(t, "streams through relay c to both relays' agents", 30*time.Second, func() bool {
		return probe(pc.Listen["echo"]) == nil && echo.accepted.Load() > 0 && echoB.accepted.Load() > 0
	})

	gate.blackhole()
	var times []time.Duration
	for i := 0; i < 20; i++ {
		start := time.Now()
		if err := probe(pc.Listen["echo"]); err != nil {
			t.Fatalf("stream %d with relay a silent: %v", i, err)
		}
		times = append(times, time.Since(start))
	}
	slow := 0
	for _, d := range times {
		if d > time.Second {
			slow++
		}
	}
	t.Logf("relay a's peer port silent: 20 of 20 streams from relay c served; %d took over 1 s; times %v", slow, times)
	if slow > 1 {
		t.Fatalf("%d streams waited for the silent relay, want at most 1: %v", slow, times)
	}
	f.relays[2].Proc.WaitLog(t, "fleet peer unreachable", 10*time.Second)
	healed := time.Now()
	gate.open(t)
	f.relays[2].Proc.WaitLog(t, "fleet peer answers again", 10*time.Second)
	t.Logf("relay a answered relay c again %v after the partition healed", time.Since(healed).Round(time.Millisecond))
}
