package integration

// Key rotation that drops no one, revocation that still cuts at once
// (issue 8 item 4), with PostgreSQL, pgbench and the real binary.

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestRotationPgbench: pgbench -T 30 -c 8 on steady connections across a
// full rollover of the apps key — clients to the secondary, the primary
// rotated with `hybrid keys rotate`, clients back to the new primary — with
// relay.rotation_grace at 3 s: the streams opened with the old primary live
// on (their proxy re-proved the key on its session), so 0 transactions fail
// and no client aborts. Then `hybrid keys revoke` of the value the clients
// use cuts a live psql session within a second, while a stream on an
// untouched rule lives on.
func TestRotationPgbench(t *testing.T) {
	pg := startPostgres(t)
	if out, err := pgbench(t, pg.DirectDSN(), "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	echo := startPlainEcho(t)
	c := newCluster(t, "pg", "echo")
	secondary, apps2 := e2eKey(t), e2eKey(t)
	r := c.startRelay(t, "  rotation_grace: 3s\n")
	// The apps rule of pg gets a secondary value; echo gets a second rule.
	withRules := func(yaml string) string {
		yaml = strings.Replace(yaml, fmt.Sprintf("primary: %q}", c.Keys["pg"].Apps),
			fmt.Sprintf("primary: %q, secondary: %q}", c.Keys["pg"].Apps, secondary), 1)
		return strings.Replace(yaml, fmt.Sprintf("        - {name: onprem, rights: [listen], primary: %q}\n", c.Keys["echo"].Onprem),
			fmt.Sprintf("        - {name: onprem, rights: [listen], primary: %q}\n        - {name: apps2, rights: [send], primary: %q}\n", c.Keys["echo"].Onprem, apps2), 1)
	}
	mark := r.Proc.Mark()
	saveRename(t, r.Config, withRules(c.relayYAML(r)))
	r.Proc.WaitLogAfter(t, mark, "config reloaded", reloadTimeout)
	c.startAgent(t, []*crelay{r}, map[string]string{"pg": pg.Addr(), "echo": echo.Addr}, "")
	p := c.startProxy(t, []*crelay{r}, []string{"pg"}, "")
	// The untouched rule: echo through its own rule apps2, a live stream.
	echoListen := freeAddr(t, "127.0.0.2")
	other := writeFile(t, t.TempDir(), "other.yaml", strings.Replace(
		c.proxyYAML([]*crelay{r}, map[string]string{"echo": echoListen}, map[string]string{"echo": apps2}, "", freeAddr(t, "127.0.0.3")),
		"key_name: apps", "key_name: apps2", 1))
	op := startProcWith(t, ProcConfig{Label: "proxy-apps2"}, "hybrid", "proxy", "--config", other)
	op.WaitLog(t, "forwarding: listen="+echoListen+" ", e2eStartTimeout)
	untouched := dialEcho(t, echoListen)
	defer untouched.Close()

	// The proxy's key switches by editing its file (a live reload).
	proxyKey := func(key string) {
		t.Helper()
		mark := p.Proc.Mark()
		saveRename(t, p.Config, c.proxyYAML([]*crelay{r}, p.Listen, map[string]string{"pg": key}, "", p.Admin))
		p.Proc.WaitLogAfter(t, mark, "config reloaded", reloadTimeout)
	}
	dsn := pg.DSN("127.0.0.2", e2ePort(t, p.Listen["pg"]))
	type result struct {
		out string
		err error
	}
	bench := make(chan result, 1)
	go func() {
		out, err := pgbench(t, dsn, "-c", "8", "-j", "2", "-T", "30")
		bench <- result{out, err}
	}()
	time.Sleep(5 * time.Second)
	proxyKey(secondary) // 1. clients to the secondary
	time.Sleep(3 * time.Second)
	out, code := runCmd(t, 30*time.Second, "hybrid", "keys", "rotate", "--config", r.Config, "--connection", "pg", "--rule", "apps", "--slot", "primary")
	if code != 0 {
		t.Fatalf("keys rotate: exit %d\n%s", code, out)
	}
	newPrimary := regexp.MustCompile(`(?m)^[A-Za-z0-9+/]{43}=$`).FindString(out) // 2. primary rotated
	if newPrimary == "" {
		t.Fatalf("keys rotate printed no key:\n%s", out)
	}
	r.Proc.WaitLog(t, "config reloaded", reloadTimeout)
	time.Sleep(5 * time.Second) // past the 3 s grace: unproven streams would be cut now
	proxyKey(newPrimary)        // 3. clients back
	res := <-bench
	failed, ok := pgbenchFailed(res.out)
	aborted := strings.Contains(res.out, "aborted")
	tps, _ := pgbenchTPS(res.out)
	t.Logf("pgbench -T 30 -c 8 across a full rotation: %d failed transactions, aborted clients: %v, tps %.0f", failed, aborted, tps)
	if res.err != nil || !ok || failed != 0 || aborted {
		t.Fatalf("pgbench across the rotation: %v, %d failed (report: %v)\n%s", res.err, failed, ok, res.out)
	}
	if out := r.Proc.Output(); strings.Contains(out, "stream ended") {
		t.Fatalf("the relay cut streams during the rotation:\n%s", tailLines(out, 40))
	}

	// Revoke the value the proxy uses now: a live session ends within a
	// second; the stream on apps2 lives on.
	session := make(chan time.Time, 1)
	go func() {
		psql(t, dsn, "select pg_sleep(60)")
		session <- time.Now()
	}()
	waitFor(t, "the psql session to start", 30*time.Second, func() bool {
		out, _ := psql(t, pg.DirectDSN(), "select count(*) from pg_stat_activity where query like 'select pg_sleep%'")
		return strings.TrimSpace(out) == "1"
	})
	start := time.Now()
	out, code = runCmd(t, 30*time.Second, "hybrid", "keys", "revoke", "--config", r.Config, "--connection", "pg", "--rule", "apps", "--slot", "primary")
	if code != 0 {
		t.Fatalf("keys revoke: exit %d\n%s", code, out)
	}
	select {
	case end := <-session:
		cut := end.Sub(start)
		t.Logf("revoke to cut of a live psql session: %v", cut.Round(time.Millisecond))
		if cut > 1500*time.Millisecond { // the save and the reload's debounce included
			t.Fatalf("revocation cut the session after %v", cut)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the psql session outlived the revocation of its key")
	}
	if err := echoOnce(untouched); err != nil {
		t.Fatalf("a stream on an untouched rule was cut: %v", err)
	}
}
