package integration

// Live reload under load (pgbench across 20 reloads) and over many reloads
// (no goroutine or file descriptor leak after 200).

import (
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestReloadPgbench: while pgbench runs 30 s on mapping A — four clients on
// steady connections and two that reconnect for every transaction — 20
// reloads add, rename, rebind, re-key and remove mapping B. A's run ends
// with 0 failed transactions, and A is never rebound.
func TestReloadPgbench(t *testing.T) {
	pg := startPostgres(t)
	resource := startEchoServer(t)
	e := newRLEnv(t, "postgres", "postgres2", "echo")
	e.startAgent(t, rlAgentCfg{Pubs: append(pubs(pg.Addr(), "postgres", "postgres2"), rlPub{Name: "echo", Endpoint: resource})})
	a := rlMap{Name: "postgres", Listen: freeAddr(t, "127.0.0.2")}
	cfg := rlProxyCfg{Level: "info", Admin: freeAddr(t, "127.0.0.3"), Maps: []rlMap{a}}
	p := e.writeProxy(t, cfg)
	if out, err := pgbench(t, pg.DirectDSN(), "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}

	const runFor = 30 * time.Second
	type result struct {
		out string
		err error
	}
	dsnA := pg.DSN("127.0.0.2", e2ePort(t, a.Listen))
	bench := func(args ...string) <-chan result {
		ch := make(chan result, 1)
		go func() {
			out, err := pgbench(t, dsnA, append(args, "-T", fmt.Sprint(int(runFor.Seconds())))...)
			ch <- result{out, err}
		}()
		return ch
	}
	benchStart := time.Now()
	steady := bench("-c", "4", "-j", "2")
	reconnect := bench("-C", "-c", "2", "-j", "1")

	b1, b2 := freeAddr(t, "127.0.0.2"), freeAddr(t, "127.0.0.2")
	psqlWorks := func(addr string) func() {
		return func() {
			if out, err := psql(t, pg.DSN("127.0.0.2", e2ePort(t, addr)), "select 1"); err != nil || out != "1" {
				t.Errorf("psql through mapping B (%s): %q, %v", addr, out, err)
			}
		}
	}
	steps := []struct {
		what   string
		b      *rlMap
		effect func() bool // measured: polled from the save on
		then   func()      // run once after
	}{
		{"add B (echo)", &rlMap{Name: "echo", Listen: b1}, func() bool { return rlEchoErr(b1) == nil }, nil},
		{"rename B to postgres2", &rlMap{Name: "postgres2", Listen: b1}, func() bool { return pgProbe(b1) }, psqlWorks(b1)},
		{"rebind B", &rlMap{Name: "postgres2", Listen: b2}, func() bool { return refuses(b1) && pgProbe(b2) }, psqlWorks(b2)},
		{"re-key B", &rlMap{Name: "postgres2", Listen: b2, Key: e2eKey(t)}, nil, nil},
		{"remove B", nil, func() bool { return refuses(b2) }, nil},
	}
	const reloads = 20
	interval := (runFor - 4*time.Second) / reloads
	lat := latencies{}
	for i := range reloads {
		next := benchStart.Add(2*time.Second + time.Duration(i)*interval)
		time.Sleep(time.Until(next))
		s := steps[i%len(steps)]
		cfg.Maps = []rlMap{a}
		if s.b != nil {
			cfg.Maps = append(cfg.Maps, *s.b)
		}
		start := time.Now()
		saveRename(t, p.Config, e.proxyYAML(cfg))
		waitMetric(t, p.Admin, mReloadOK, float64(i+1))
		if s.effect != nil {
			lat["under pgbench: "+s.what] = append(lat["under pgbench: "+s.what],
				measure(t, fmt.Sprintf("under pgbench, reload %d: %s", i+1, s.what), start, s.effect))
		}
		if s.then != nil {
			s.then()
		}
	}
	done := time.Since(benchStart)
	select {
	case <-steady:
		t.Fatalf("pgbench ended before the %d reloads were done (%v)", reloads, done)
	case <-reconnect:
		t.Fatalf("pgbench -C ended before the %d reloads were done (%v)", reloads, done)
	default:
	}
	t.Logf("%d reloads done %v into the pgbench run", reloads, done.Round(time.Millisecond))

	for name, ch := range map[string]<-chan result{"pgbench -c 4": steady, "pgbench -C -c 2": reconnect} {
		r := <-ch
		failed, ok := pgbenchFailed(r.out)
		if r.err != nil || !ok || failed != 0 {
			t.Errorf("%s on mapping A across %d reloads: %v, %d failed transactions (report found: %v)\n%s", name, reloads, r.err, failed, ok, r.out)
			continue
		}
		tps, _ := pgbenchTPS(r.out)
		t.Logf("%s on mapping A across %d reloads: 0 failed, tps %.0f", name, reloads, tps)
	}
	if n := binds(p.Proc, a.Listen); n != 1 {
		t.Errorf("mapping A was bound %d times, want once", n)
	}
	if n := unbinds(p.Proc, a.Listen); n != 0 {
		t.Errorf("mapping A was closed %d times", n)
	}
	lat.log(t)
}

// procSample is what a process holds at one moment.
type procSample struct {
	goroutines, fds float64 // go_goroutines, process_open_fds
	procFDs         int     // entries of /proc/<pid>/fd
}

func sampleProc(t *testing.T, p *Proc, base string) procSample {
	t.Helper()
	m, err := metrics(base)
	if err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	return procSample{goroutines: m["go_goroutines"], fds: m["process_open_fds"], procFDs: len(fds)}
}

// TestReloadNoLeak: 200 reloads of each role that change something real —
// the relay adds and removes a connection, the agent publishes and
// withdraws one, the proxy opens and closes a mapping that then carries a
// stream — leave no goroutines or file descriptors behind. Three reloads in
// four are triggered by SIGHUP (no debounce, so the test stays quick), one
// in four by the file watch alone.
func TestReloadNoLeak(t *testing.T) {
	resource := startEchoServer(t)
	e := &rlEnv{Keys: map[string]hcKeys{}}
	for _, n := range []string{"echo", "echo2", "spare"} {
		e.Keys[n] = hcKeys{Apps: e2eKey(t), Onprem: e2eKey(t)}
	}
	relayHCs := func(on bool) []rlHC {
		hcs := []rlHC{stdHC("echo", e.Keys["echo"]), stdHC("echo2", e.Keys["echo2"])}
		if on {
			hcs = append(hcs, stdHC("spare", e.Keys["spare"]))
		}
		return hcs
	}
	agentCfg := func(on bool) rlAgentCfg {
		c := rlAgentCfg{Pubs: []rlPub{{Name: "echo", Endpoint: resource}}}
		if on {
			c.Pubs = append(c.Pubs, rlPub{Name: "echo2", Endpoint: resource})
		}
		return c
	}
	a := rlMap{Name: "echo", Listen: freeAddr(t, "127.0.0.2")}
	b := rlMap{Name: "echo2", Listen: freeAddr(t, "127.0.0.2")}
	proxyCfg := rlProxyCfg{Level: "info", Admin: freeAddr(t, "127.0.0.3")}
	proxyFor := func(on bool) rlProxyCfg {
		c := proxyCfg
		c.Maps = []rlMap{a}
		if on {
			c.Maps = append(c.Maps, b)
		}
		return c
	}
	e.startRelay(t, relayHCs(false))
	e.startAgent(t, agentCfg(false))
	p := e.writeProxy(t, proxyFor(false))

	type role struct {
		name, path, url string
		proc            *Proc
		yaml            func(on bool) string
	}
	roles := []role{
		{"relay", e.RelayConfig, e.RelayURL(), e.Relay, func(on bool) string { return e.relayYAML(relayHCs(on)) }},
		{"agent", e.AgentConfig, e.AgentAdmin, e.Agent, func(on bool) string { return e.agentYAML(agentCfg(on)) }},
		{"proxy", p.Config, p.Admin, p.Proc, func(on bool) string { return e.proxyYAML(proxyFor(on)) }},
	}
	reloads := 0
	var hupLat, watchLat []time.Duration
	reload := func() {
		t.Helper()
		reloads++
		on := reloads%2 == 1
		hup := reloads%4 != 0
		start := time.Now()
		for _, r := range roles {
			saveRename(t, r.path, r.yaml(on))
		}
		if hup {
			for _, r := range roles {
				must(t, r.proc.Signal(syscall.SIGHUP))
			}
		}
		for _, r := range roles {
			waitMetric(t, r.url, mReloadOK, float64(reloads))
		}
		if hup {
			hupLat = append(hupLat, time.Since(start))
		} else {
			watchLat = append(watchLat, time.Since(start))
		}
		if on {
			// B serves once the agent has attached echo2 (asynchronously).
			waitFor(t, "an echo through mapping B", reloadTimeout, func() bool { return rlEchoErr(b.Listen) == nil })
		} else if !refuses(b.Listen) {
			t.Fatalf("reload %d: mapping B still accepts", reloads)
		}
		rlEcho(t, a.Listen)
	}
	sample := func() map[string]procSample {
		t.Helper()
		out := map[string]procSample{}
		for _, r := range roles {
			out[r.name] = sampleProc(t, r.proc, r.url)
		}
		return out
	}

	// Warm up (first streams, first reloads, lazily made buffers), settle,
	// then count.
	for range 10 {
		reload()
	}
	time.Sleep(time.Second)
	before := sample()

	const n = 200
	start := time.Now()
	for range n {
		reload()
	}
	t.Logf("%d reloads of each role (relay, agent, proxy) in %v", n, time.Since(start).Round(time.Millisecond))
	latencies{"SIGHUP, all three roles applied": hupLat, "file watch, all three roles applied": watchLat}.log(t)

	// Let what the last reloads and streams started wind down, then judge:
	// a leak grows with the number of reloads (a goroutine or fd per
	// reload is 100+ here); tolerate a few for timing.
	const tolGoroutines, tolFDs = 10, 5
	var after map[string]procSample
	within := func() bool {
		after = sample()
		for name, b := range before {
			a := after[name]
			if a.goroutines-b.goroutines > tolGoroutines || a.fds-b.fds > tolFDs || a.procFDs-b.procFDs > tolFDs {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(15 * time.Second)
	for !within() && time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
	}
	for _, r := range roles {
		b, a := before[r.name], after[r.name]
		t.Logf("leak check %s after %d reloads: goroutines %v -> %v, open fds %v -> %v (/proc: %d -> %d)",
			r.name, n, b.goroutines, a.goroutines, b.fds, a.fds, b.procFDs, a.procFDs)
		if a.goroutines-b.goroutines > tolGoroutines {
			t.Errorf("%s: goroutines grew from %v to %v over %d reloads", r.name, b.goroutines, a.goroutines, n)
		}
		if a.fds-b.fds > tolFDs || a.procFDs-b.procFDs > tolFDs {
			t.Errorf("%s: open fds grew from %v to %v (/proc: %d to %d) over %d reloads", r.name, b.fds, a.fds, b.procFDs, a.procFDs, n)
		}
	}
	if f := metric(t, p.Admin, mReloadFail); f != 0 {
		t.Errorf("proxy: %v failed reloads", f)
	}
}
