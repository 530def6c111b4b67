package integration

// Live reload of the agent (unpublish, allow, key change) and the relay
// (revocation of rules and values).

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// psqlSession is a psql running one long statement in the background.
type psqlSession struct {
	done chan struct{}
	mu   sync.Mutex
	out  bytes.Buffer
	err  error
	end  time.Time
}

// Output returns what psql printed (complete once done is closed).
func (s *psqlSession) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

func (s *psqlSession) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.Write(p)
}

// startPsqlSession runs `select pg_sleep(30)` through dsn as application
// app and waits until the server shows it active (asking it directly).
func startPsqlSession(t *testing.T, pg *Postgres, dsn, app string) *psqlSession {
	t.Helper()
	cmd := exec.Command(pgBin(t, "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", dsn+" application_name="+app, "-c", "select pg_sleep(30)")
	cmd.Env = pgEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	s := &psqlSession{done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s, s
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		s.err, s.end = err, time.Now()
		s.mu.Unlock()
		close(s.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-s.done
	})
	q := fmt.Sprintf("select count(*) from pg_stat_activity where application_name = '%s' and state = 'active'", app)
	waitFor(t, "psql session "+app+" active at the server", reloadTimeout, func() bool {
		select {
		case <-s.done:
			t.Fatalf("psql session %s ended early: %v\n%s", app, s.err, s.Output())
		default:
		}
		out, err := psql(t, pg.DirectDSN(), q)
		return err == nil && out == "1"
	})
	return s
}

// pgProbe reports whether addr leads to a PostgreSQL server: it sends an
// SSLRequest, which a server answers with one byte, 'S' or 'N' (ours: 'N'),
// before any authentication. Cheap enough to poll, unlike a psql run.
func pgProbe(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], 80877103) // SSLRequest
	if _, err := c.Write(req[:]); err != nil {
		return false
	}
	var b [1]byte
	_, err = io.ReadFull(c, b[:])
	return err == nil && (b[0] == 'N' || b[0] == 'S')
}

// reLostConnection matches what psql says when its connection is cut.
var reLostConnection = regexp.MustCompile(`server closed the connection unexpectedly|connection to server was lost|no connection to the server`)

// waitCut waits for s to end after start, requires it to have failed as a
// cut connection does, within reloadDeadline, and returns how long it took.
func (s *psqlSession) waitCut(t *testing.T, what string, start time.Time) time.Duration {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(reloadTimeout):
		t.Fatalf("%s: the live psql session still runs %v after the save", what, reloadTimeout)
	}
	d := s.end.Sub(start)
	t.Logf("reload latency: %s: live psql session cut after %v", what, d.Round(time.Millisecond))
	if d > reloadDeadline {
		t.Errorf("%s: the live psql session was cut %v after the save, want <= %v", what, d.Round(time.Millisecond), reloadDeadline)
	}
	if s.err == nil || !reLostConnection.MatchString(s.Output()) {
		t.Errorf("%s: psql ended with %v, output %q; want a lost connection", what, s.err, s.Output())
	}
	return d
}

// TestReloadAgent: unpublishing an endpoint, or narrowing allow so that it
// must go, cuts a live psql session at once, and the log and audit log say
// why; connections added and removed attach and detach without touching
// the others; a changed key re-authenticates.
func TestReloadAgent(t *testing.T) {
	pg := startPostgres(t)
	resource := startEchoServer(t)
	e := newRLEnv(t, "postgres", "echo")
	pubPG := rlPub{Name: "postgres", Endpoint: pg.Addr()}
	pubEcho := rlPub{Name: "echo", Endpoint: resource}
	both := []string{pg.Addr(), resource}
	e.startAgent(t, rlAgentCfg{Allow: both, Pubs: []rlPub{pubPG, pubEcho}})
	pgMap := rlMap{Name: "postgres", Listen: freeAddr(t, "127.0.0.2")}
	echoMap := rlMap{Name: "echo", Listen: freeAddr(t, "127.0.0.2")}
	e.writeProxy(t, rlProxyCfg{Maps: []rlMap{pgMap, echoMap}})
	dsn := pg.DSN("127.0.0.2", e2ePort(t, pgMap.Listen))
	if out, err := psql(t, dsn, "select 42"); err != nil || out != "42" {
		t.Fatalf("psql through the tunnel: %q, %v", out, err)
	}
	// A live stream on the other connection, which no edit below touches.
	other := openEcho(t, echoMap.Listen)
	echoAttached := countRe(e.Agent, reAgentListening("echo"))

	// revoked waits for the agent's log line and audit event saying why the
	// stream of app was cut.
	revoked := func(t *testing.T, mark int, why string) {
		t.Helper()
		e.Agent.WaitLogAfter(t, mark, regexp.MustCompile(`\[WARN\] +agent: stream cut: no longer permitted: hc=postgres .*reason=.*`+regexp.QuoteMeta(why)), reloadTimeout)
		e2eWaitAudit(t, e.Audit, "a revoke line for postgres", reloadTimeout, func(l auditLine) bool {
			return l.Event == "revoke" && l.HC == "postgres" && strings.Contains(l.Reason, why) && l.Endpoint == pg.Addr()
		})
	}

	t.Run("unpublish cuts the live session", func(t *testing.T) {
		s := startPsqlSession(t, pg, dsn, "rl_unpublish")
		mark, relayMark := e.Agent.Mark(), e.Relay.Mark()
		start := time.Now()
		saveRename(t, e.AgentConfig, e.agentYAML(rlAgentCfg{Allow: both, Pubs: []rlPub{pubEcho}}))
		s.waitCut(t, "unpublish", start)
		revoked(t, mark, `this agent does not serve`)
		e.Relay.WaitLogAfter(t, relayMark, regexp.MustCompile(`agent stopped listening: hc=postgres`), reloadTimeout)
		if _, err := psql(t, dsn, "select 1"); err == nil {
			t.Errorf("psql through the tunnel works after postgres was unpublished")
		}
		other.check(t, "after postgres was unpublished")
	})

	t.Run("publish again attaches", func(t *testing.T) {
		start := time.Now()
		saveRename(t, e.AgentConfig, e.agentYAML(rlAgentCfg{Allow: both, Pubs: []rlPub{pubPG, pubEcho}}))
		measure(t, "published again: the server answers through the tunnel", start, func() bool { return pgProbe(pgMap.Listen) })
		if out, err := psql(t, dsn, "select 1"); err != nil || out != "1" {
			t.Fatalf("psql after postgres was published again: %q, %v", out, err)
		}
		other.check(t, "after postgres was published again")
	})

	t.Run("narrowing allow cuts the live session", func(t *testing.T) {
		s := startPsqlSession(t, pg, dsn, "rl_allow")

		// allow narrowed, postgres still published: allow is the
		// administrator's cap, so the file is valid (with a warning), the
		// agent stops serving postgres and cuts its live session.
		mark := e.Agent.Mark()
		start := time.Now()
		narrowed := e.agentYAML(rlAgentCfg{Allow: []string{resource}, Pubs: []rlPub{pubPG, pubEcho}})
		saveRename(t, e.AgentConfig, narrowed)
		s.waitCut(t, "narrowed allow", start)
		revoked(t, mark, `outside agent.allow`)
		warn := fmt.Sprintf("%s:%d: agent.connections[0].endpoint: %q is not in agent.allow", e.AgentConfig, lineOf(t, narrowed, "endpoint: "+pg.Addr()), pg.Addr())
		e.Agent.WaitLogAfter(t, mark, warn, reloadTimeout)
		if _, err := psql(t, dsn, "select 1"); err == nil {
			t.Errorf("psql through the tunnel works after allow was narrowed")
		}
		other.check(t, "after allow was narrowed")

		// Unpublishing it too changes nothing more for echo.
		saveRename(t, e.AgentConfig, e.agentYAML(rlAgentCfg{Allow: []string{resource}, Pubs: []rlPub{pubEcho}}))
		other.check(t, "after postgres was unpublished as well")
	})

	if n := countRe(e.Agent, reAgentListening("echo")); n != echoAttached {
		t.Errorf("echo attached %d times, want %d: edits of postgres touched it", n, echoAttached)
	}
	other.finish(t)

	t.Run("changed key re-authenticates", func(t *testing.T) {
		// The relay takes a second value for echo's listen rule.
		k := e.Keys["echo"]
		next := e2eKey(t)
		pgHC := stdHC("postgres", e.Keys["postgres"])
		echoHC := stdHC("echo", k)
		echoHC.Rules[1].Secondary = next
		mark := e.Relay.Mark()
		saveRename(t, e.RelayConfig, e.relayYAML([]rlHC{pgHC, echoHC}))
		e.Relay.WaitLogAfter(t, mark, "config reloaded", reloadTimeout)

		// The agent switches to it: it attaches again with the new key.
		mark = e.Relay.Mark()
		start := time.Now()
		saveRename(t, e.AgentConfig, e.agentYAML(rlAgentCfg{Allow: []string{resource}, Pubs: []rlPub{{Name: "echo", Endpoint: resource, Key: next}}}))
		e.Relay.WaitLogAfter(t, mark, regexp.MustCompile(`agent listening: hc=echo .*key=onprem`), reloadTimeout)
		d := time.Since(start)
		t.Logf("reload latency: agent key change to re-attach seen at the relay: %v", d.Round(time.Millisecond))
		if d > reloadDeadline {
			t.Errorf("agent re-attached %v after the save, want <= %v", d, reloadDeadline)
		}
		rlEcho(t, echoMap.Listen)

		// Proof that it now uses the new value: the old one goes, and the
		// agent's attachment stays.
		echoHC.Rules[1].Primary, echoHC.Rules[1].Secondary = next, ""
		mark = e.Relay.Mark()
		saveRename(t, e.RelayConfig, e.relayYAML([]rlHC{pgHC, echoHC}))
		e.Relay.WaitLogAfter(t, mark, "config reloaded", reloadTimeout)
		rlEcho(t, echoMap.Listen)
		if strings.Contains(e.Relay.Output()[mark:], "agent attachment ended") {
			t.Errorf("the relay ended an attachment when the agent's old key value went:\n%s", e.Relay.Output()[mark:])
		}
	})
}

// TestReloadRelayRevocation: revoking a send rule's value (removed with
// revoke: true), a whole rule, a connection, or the value an agent listens
// with ends within a second every stream (and attachment) that
// authenticated with it; the others live on. Replacing the agent's value
// without revoke is a rotation: nothing is cut. A rule added applies to
// the next stream.
func TestReloadRelayRevocation(t *testing.T) {
	resource := startEchoServer(t)
	e := &rlEnv{Keys: map[string]hcKeys{
		"echo":  {Apps: e2eKey(t), Onprem: e2eKey(t)},
		"echo2": {Apps: e2eKey(t), Onprem: e2eKey(t)},
	}}
	appsNext, apps2, apps3, onpremNext := e2eKey(t), e2eKey(t), e2eKey(t), e2eKey(t)
	type state struct {
		appsSecondary, apps2, apps3, echo2 bool
		onprem                             string
		revoke                             bool // rules say revoke: true
	}
	hcs := func(s state) []rlHC {
		k := e.Keys["echo"]
		echo := rlHC{Name: "echo", Rules: []rlRule{{Name: "apps", Rights: "send", Primary: k.Apps, Revoke: s.revoke}}}
		if s.appsSecondary {
			echo.Rules[0].Secondary = appsNext
		}
		if s.apps2 {
			echo.Rules = append(echo.Rules, rlRule{Name: "apps2", Rights: "send", Primary: apps2})
		}
		if s.apps3 {
			echo.Rules = append(echo.Rules, rlRule{Name: "apps3", Rights: "send", Primary: apps3})
		}
		echo.Rules = append(echo.Rules, rlRule{Name: "onprem", Rights: "listen", Primary: s.onprem, Revoke: s.revoke})
		out := []rlHC{echo}
		if s.echo2 {
			out = append(out, stdHC("echo2", e.Keys["echo2"]))
		}
		return out
	}
	st := state{appsSecondary: true, apps2: true, echo2: true, onprem: e.Keys["echo"].Onprem}
	e.startRelay(t, hcs(st))
	e.startAgent(t, rlAgentCfg{Pubs: []rlPub{{Name: "echo", Endpoint: resource}, {Name: "echo2", Endpoint: resource}}})
	maps := map[string]rlMap{
		"apps/primary":   {Name: "echo", Listen: freeAddr(t, "127.0.0.2")},
		"apps/secondary": {Name: "echo", Listen: freeAddr(t, "127.0.0.2"), Key: appsNext},
		"apps2":          {Name: "echo", Listen: freeAddr(t, "127.0.0.2"), KeyName: "apps2", Key: apps2},
		"apps3":          {Name: "echo", Listen: freeAddr(t, "127.0.0.2"), KeyName: "apps3", Key: apps3},
		"echo2":          {Name: "echo2", Listen: freeAddr(t, "127.0.0.2")},
	}
	// One proxy per mapping: a proxy's connection names are unique.
	for _, n := range []string{"apps/primary", "apps/secondary", "apps2", "apps3", "echo2"} {
		e.writeProxy(t, rlProxyCfg{Maps: []rlMap{maps[n]}})
	}
	live := map[string]*liveEcho{}
	for _, n := range []string{"apps/primary", "apps/secondary", "apps2", "echo2"} {
		live[n] = openEcho(t, maps[n].Listen)
	}
	reload := func(t *testing.T) int {
		t.Helper()
		mark := e.Relay.Mark()
		saveRename(t, e.RelayConfig, e.relayYAML(hcs(st)))
		return mark
	}

	t.Run("rule added", func(t *testing.T) {
		st.apps3 = true
		start := time.Now()
		mark := reload(t)
		e.Relay.WaitLogAfter(t, mark, "config reloaded", reloadTimeout)
		t.Logf("reload latency: relay rule added, \"config reloaded\" after %v", time.Since(start).Round(time.Millisecond))
		rlEcho(t, maps["apps3"].Listen)
	})

	// revoke applies st, then requires the streams in gone to end within a
	// second and the others to live on.
	revoke := func(t *testing.T, what string, gone []string, why *regexp.Regexp) {
		t.Helper()
		ended := map[string]<-chan time.Time{}
		for _, n := range gone {
			ended[n] = live[n].ended()
		}
		start := time.Now()
		mark := reload(t)
		for _, n := range gone {
			select {
			case at := <-ended[n]:
				d := at.Sub(start)
				t.Logf("reload latency: relay %s: stream %s ended after %v", what, n, d.Round(time.Millisecond))
				if d > reloadDeadline {
					t.Errorf("relay %s: stream %s ended %v after the save, want <= %v", what, n, d.Round(time.Millisecond), reloadDeadline)
				}
			case <-time.After(reloadTimeout):
				t.Fatalf("relay %s: stream %s still live %v after the save", what, n, reloadTimeout)
			}
			delete(live, n)
		}
		e.Relay.WaitLogAfter(t, mark, why, reloadTimeout)
		for n, s := range live {
			s.check(t, "after "+what+" ("+n+")")
		}
	}

	t.Run("send rule value revoked", func(t *testing.T) {
		st.appsSecondary, st.revoke = false, true
		revoke(t, "apps.secondary removed", []string{"apps/secondary"},
			regexp.MustCompile(`\[WARN\] +relay: stream ended: hc=echo .*reason="key revoked or connection removed" sender_key=apps listener_key=onprem`))
		appFails(t, maps["apps/secondary"].Listen)
		rlEcho(t, maps["apps/primary"].Listen)
	})

	t.Run("send rule removed", func(t *testing.T) {
		st.apps2 = false
		revoke(t, "rule apps2 removed", []string{"apps2"}, regexp.MustCompile(`stream ended: hc=echo .*sender_key=apps2`))
		rlEcho(t, maps["apps/primary"].Listen)
	})

	t.Run("connection removed", func(t *testing.T) {
		st.echo2 = false
		revoke(t, "connection echo2 removed", []string{"echo2"}, regexp.MustCompile(`agent attachment ended: hc=echo2 `))
		e.Agent.WaitLog(t, regexp.MustCompile(`relay ended our listening: relay=\S+ hc=echo2 `), reloadTimeout)
		rlEcho(t, maps["apps/primary"].Listen)
	})

	t.Run("listen value rotated", func(t *testing.T) {
		// Replaced without revoke: a rotation. The agent (still on the old
		// value) keeps its attachment and streams for the rotation grace.
		st.onprem, st.revoke = onpremNext, false
		mark := reload(t)
		e.Relay.WaitLogAfter(t, mark, "config reloaded", reloadTimeout)
		live["apps/primary"].check(t, "after the listen value was rotated")
		rlEcho(t, maps["apps/primary"].Listen)
		if out := e.Relay.Output()[mark:]; strings.Contains(out, "attachment ended") || strings.Contains(out, "stream ended") {
			t.Fatalf("a rotation cut something:\n%s", out)
		}
	})

	t.Run("listen value revoked", func(t *testing.T) {
		// The agent's own key revoked: its attachment and every stream it
		// joined end.
		st.onprem, st.revoke = e2eKey(t), true
		revoke(t, "onprem value revoked", []string{"apps/primary"}, regexp.MustCompile(`agent attachment ended: hc=echo `))
		e.Agent.WaitLog(t, regexp.MustCompile(`relay ended our listening: relay=\S+ hc=echo `), reloadTimeout)
		appFails(t, maps["apps/primary"].Listen)
	})
}
