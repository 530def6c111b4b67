package integration

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// pgTunnel starts PostgreSQL and publishes it as hc "postgres"; it returns the
// tunnel and the DSN that reaches the server through the proxy.
func pgTunnel(t *testing.T) (*Postgres, *tunnel, string) {
	t.Helper()
	pg := startPostgres(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "postgres", Endpoint: pg.Addr()}}})
	return pg, tun, pg.DSN("127.0.0.2", e2ePort(t, tun.Listen["postgres"]))
}

func TestE2EPostgresPsql(t *testing.T) {
	_, tun, dsn := pgTunnel(t)

	// The three files the fixture wrote are valid as far as `hybrid check` goes.
	for _, f := range []string{tun.RelayConfig, tun.AgentConfig, tun.ProxyConfig} {
		out, code := runCmd(t, 30*time.Second, "hybrid", "check", "--config", f)
		if code != 0 || !strings.Contains(out, ": ok") {
			t.Errorf("hybrid check --config %s: exit %d, output:\n%s", f, code, out)
		}
	}

	out, err := psql(t, dsn, "select 42")
	if err != nil || out != "42" {
		t.Fatalf("psql select 42 through the tunnel: %q, %v", out, err)
	}
	// A table written and read back in one session, and a result big enough
	// to span many TCP segments.
	out, err = psql(t, dsn, `create table e2e (id int primary key, v text);
		insert into e2e select i, md5(i::text) from generate_series(1, 5000) i;
		select count(*) || ' ' || md5(string_agg(v, ',' order by id)) from e2e`)
	want, werr := psql(t, dsn, "select '5000 ' || md5(string_agg(md5(i::text), ',' order by i)) from generate_series(1, 5000) i")
	// psql prints each statement's result (CREATE TABLE, INSERT 0 5000, ...): the last line is the select's.
	out = out[strings.LastIndex(out, "\n")+1:]
	if err != nil || werr != nil || out != want || !strings.HasPrefix(out, "5000 ") {
		t.Fatalf("create/insert/select through the tunnel: got %q (%v), want %q (%v)", out, err, want, werr)
	}
	out, err = psql(t, dsn, "select length(string_agg(repeat('x', 1000), '')) from generate_series(1, 2000)")
	if err != nil || out != "2000000" {
		t.Fatalf("2 MB result through the tunnel: %q, %v", out, err)
	}

	// Every psql session was one stream: the agent audited its open and, once
	// psql hung up, its close — in that order, for the same stream.
	lines := e2eWaitAudit(t, tun.Audit, "a close line for hc postgres", 30*time.Second, func(l auditLine) bool {
		return l.Event == "close" && l.HC == "postgres"
	})
	opened := map[string]int{}
	closes := 0
	for i, l := range lines {
		if l.HC != "postgres" {
			continue
		}
		switch l.Event {
		case "open":
			opened[l.Stream] = i
			if l.Endpoint != tun.HCs[0].Endpoint {
				t.Errorf("audit open line: endpoint %q, want %q", l.Endpoint, tun.HCs[0].Endpoint)
			}
		case "close":
			closes++
			if j, ok := opened[l.Stream]; !ok || j > i {
				t.Errorf("audit: close of stream %s without an earlier open line: %+v", l.Stream, lines)
			}
			if l.BytesIn == 0 || l.BytesOut == 0 {
				t.Errorf("audit close line counts no bytes: %+v", l)
			}
		}
	}
	if len(opened) == 0 || closes == 0 {
		t.Errorf("audit log: %d open and %d close lines for postgres, want both: %+v", len(opened), closes, lines)
	}
}

var reProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)/(\d+)`)

func TestE2EPgbench(t *testing.T) {
	_, _, dsn := pgTunnel(t)

	start := time.Now()
	out, err := pgbench(t, dsn, "-i", "-s", "1", "-q")
	if err != nil {
		t.Fatalf("pgbench -i through the tunnel: %v\n%s", err, out)
	}
	t.Logf("pgbench -i through the tunnel: %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	out, err = pgbench(t, dsn, "-c", "8", "-j", "2", "-t", "200")
	if err != nil {
		t.Fatalf("pgbench -c 8 -j 2 -t 200 through the tunnel: %v\n%s", err, out)
	}
	failed, ok := pgbenchFailed(out)
	if !ok || failed != 0 {
		t.Fatalf("pgbench: %d failed transactions (report found: %v)\n%s", failed, ok, out)
	}
	m := reProcessed.FindStringSubmatch(out)
	if m == nil || m[1] != "1600" || m[2] != "1600" {
		t.Fatalf("pgbench: want 1600/1600 transactions processed, got %q\n%s", m, out)
	}
	tps, _ := pgbenchTPS(out)
	t.Logf("pgbench 8 clients x 200 through the tunnel: %v, tps %.0f", time.Since(start).Round(time.Millisecond), tps)
}
