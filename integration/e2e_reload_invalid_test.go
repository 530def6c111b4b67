package integration

// Live reload: bad files change nothing and say where they are wrong; SIGHUP;
// environment overrides and secrets across reloads; log settings.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// checkLine runs `hybrid check` on path and returns its output line starting
// with prefix (the same parse path as a reload's), failing the test if the
// check passes or prints no such line.
func checkLine(t *testing.T, path, prefix string) string {
	t.Helper()
	out, code := runCmd(t, 30*time.Second, "hybrid", "check", "--config", path)
	if code != 1 {
		t.Fatalf("hybrid check %s: exit %d, want 1; output:\n%s", path, code, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	t.Fatalf("hybrid check %s: no line starting %q; output:\n%s", path, prefix, out)
	return ""
}

// reErrorLine matches a reload's error log line with exactly msg.
func reErrorLine(msg string) *regexp.Regexp {
	return regexp.MustCompile(`\[ERROR\] +config: ` + regexp.QuoteMeta(msg) + `\n`)
}

// TestReloadInvalidConfig: a file with a syntax error, an unknown field, an
// invalid endpoint, or nothing in it changes nothing: every listener goes on
// serving, the error is logged as file:line: field: message (the line
// `hybrid check` prints for the same file), and the reload is counted as
// failed in /metrics and `hybrid status`. Fixing the file applies it.
func TestReloadInvalidConfig(t *testing.T) {
	resource := startEchoServer(t)
	e := newRLEnv(t, "echo", "echo2", "echo3")
	e.startAgent(t, rlAgentCfg{Pubs: pubs(resource, "echo", "echo2", "echo3")})
	a := rlMap{Name: "echo", Listen: freeAddr(t, "127.0.0.2")}
	b := rlMap{Name: "echo2", Listen: freeAddr(t, "127.0.0.2")}
	good := rlProxyCfg{Admin: freeAddr(t, "127.0.0.3"), Maps: []rlMap{a, b}}
	goodYAML := e.proxyYAML(good)
	p := e.writeProxy(t, good)
	path := p.Config
	live := openEcho(t, a.Listen)

	badEndpoint := good
	badEndpoint.Maps = []rlMap{a, b}
	badEndpoint.Maps[1].Endpoint = "127.1:5432"
	cases := []struct {
		name    string
		content string
		// at is a text on the offending line ("" for a file with none),
		// prefix what follows "file:line: " in the message.
		at, prefix string
		// col, for a syntax error, is the column after the line.
		col int
	}{
		{name: "syntax error", content: strings.Replace(goodYAML, "key_name: apps\n", "key_name: apps: x\n", 1),
			at: "key_name: apps: x", prefix: "invalid YAML: mapping values are not allowed", col: 21},
		{name: "unknown field", content: strings.Replace(goodYAML, "      key_name: apps\n", "      key_nmae: apps\n", 1),
			at: "key_nmae:", prefix: `proxy.connections[0].key_nmae: unknown field "key_nmae" (did you mean "key_name"?)`},
		{name: "invalid endpoint", content: e.proxyYAML(badEndpoint),
			at: "endpoint: 127.1:5432", prefix: `proxy.connections[1].endpoint: invalid endpoint "127.1:5432"`},
		{name: "empty file", prefix: "empty file, keeping last good config"},
	}
	failed := metric(t, p.Admin, mReloadFail)
	applied := metric(t, p.Admin, mReloadOK)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mark := p.Mark()
			saveRename(t, path, c.content)
			failed++
			waitMetric(t, p.Admin, mReloadFail, failed)

			want := path + ": " + c.prefix
			if c.at != "" {
				want = fmt.Sprintf("%s:%d: %s", path, lineOf(t, c.content, c.at), c.prefix)
				if c.col > 0 {
					want = fmt.Sprintf("%s:%d:%d: %s", path, lineOf(t, c.content, c.at), c.col, c.prefix)
				}
				// hybrid check says the same, word for word.
				line := checkLine(t, path, want)
				p.WaitLogAfter(t, mark, reErrorLine(line), reloadTimeout)
			} else {
				p.WaitLogAfter(t, mark, reErrorLine(want), reloadTimeout)
			}
			p.WaitLogAfter(t, mark, regexp.MustCompile(`keeping the last good|keeping last good`), reloadTimeout)

			// Nothing changed: both listeners serve, the live stream lives.
			rlEcho(t, a.Listen)
			rlEcho(t, b.Listen)
			live.check(t, "after "+c.name)
			if v := metric(t, p.Admin, mReloadOK); v != applied {
				t.Errorf("reloads applied went from %v to %v on a bad file", applied, v)
			}

			// hybrid status tells the same story.
			out, code := runCmd(t, 30*time.Second, "hybrid", "status", "--url", p.Admin)
			wantStatus := regexp.MustCompile(`(?m)^  config ` + regexp.QuoteMeta(fmt.Sprintf("%s: %v reloads applied, %v failed; last error: ", path, applied, failed)) +
				`.*` + regexp.QuoteMeta(want))
			if code != 0 || !wantStatus.MatchString(out) {
				t.Errorf("hybrid status --url %s: exit %d; want a line matching\n  %s\noutput:\n%s", p.Admin, code, wantStatus, out)
			}
		})
	}

	t.Run("fixed file applies", func(t *testing.T) {
		fixed := good
		c := rlMap{Name: "echo3", Listen: freeAddr(t, "127.0.0.2")}
		fixed.Maps = []rlMap{a, b, c}
		start := time.Now()
		saveRename(t, path, e.proxyYAML(fixed))
		measure(t, "fixed file with a new mapping: echo through it", start, func() bool { return rlEchoErr(c.Listen) == nil })
		waitMetric(t, p.Admin, mReloadOK, applied+1)
		if v := metric(t, p.Admin, mReloadFail); v != failed {
			t.Errorf("failed reloads: %v, want still %v", v, failed)
		}
		rlEcho(t, a.Listen)
		rlEcho(t, b.Listen)
	})
	live.finish(t)
	if n := binds(p.Proc, a.Listen) + binds(p.Proc, b.Listen); n != 2 {
		t.Errorf("the two original mappings were bound %d times in all, want 2 (once each)", n)
	}

	// The relay and the agent, too, keep their last good config.
	relayYAML, err := os.ReadFile(e.RelayConfig)
	must(t, err)
	agentYAML, err := os.ReadFile(e.AgentConfig)
	must(t, err)
	for _, c := range []struct {
		role, path, metricsURL string
		proc                   *Proc
		good, bad, at, prefix  string
	}{
		{"relay: unknown field", e.RelayConfig, e.RelayURL(), e.Relay, string(relayYAML),
			strings.Replace(string(relayYAML), "  namespace:", "  namspace:", 1),
			"namspace:", `relay.namspace: unknown field "namspace" (did you mean "namespace"?)`},
		{"agent: invalid endpoint", e.AgentConfig, e.AgentAdmin, e.Agent, string(agentYAML),
			strings.Replace(string(agentYAML), "endpoint: "+resource, "endpoint: 127.1:5432", 1),
			"endpoint: 127.1:5432", `agent.connections[0].endpoint: invalid endpoint "127.1:5432"`},
		{"relay: changed listen address (needs a restart)", e.RelayConfig, e.RelayURL(), e.Relay, string(relayYAML),
			strings.Replace(string(relayYAML), fmt.Sprintf("http: 127.0.0.1:%d", e.HTTP), fmt.Sprintf("http: 127.0.0.1:%d", freePort(t)), 1),
			"", "restart the relay to apply"},
	} {
		t.Run(c.role, func(t *testing.T) {
			before := metric(t, c.metricsURL, mReloadFail)
			mark := c.proc.Mark()
			saveRename(t, c.path, c.bad)
			waitMetric(t, c.metricsURL, mReloadFail, before+1)
			if c.at != "" {
				want := fmt.Sprintf("%s:%d: %s", c.path, lineOf(t, c.bad, c.at), c.prefix)
				c.proc.WaitLogAfter(t, mark, reErrorLine(checkLine(t, c.path, want)), reloadTimeout)
			} else {
				c.proc.WaitLogAfter(t, mark, regexp.MustCompile(`\[ERROR\] +config: `+regexp.QuoteMeta(c.path)+`: config not applied: .*`+c.prefix), reloadTimeout)
			}
			rlEcho(t, a.Listen)
			// Fixed (with a comment, so that the bytes differ from the
			// running config's): parsed, and the same as the running one.
			mark = c.proc.Mark()
			saveRename(t, c.path, c.good+"# fixed after: "+c.role+"\n")
			c.proc.WaitLogAfter(t, mark, "config unchanged", reloadTimeout)
			if v := metric(t, c.metricsURL, mReloadFail); v != before+1 {
				t.Errorf("failed reloads: %v, want %v", v, before+1)
			}
			rlEcho(t, a.Listen)
		})
	}
}

// TestReloadSIGHUP: SIGHUP reloads at once, and re-reads what the file watch
// cannot see — here a key_file in another directory. Secrets from ${VAR} and
// the HYBRID_LOG_LEVEL override hold across reloads.
func TestReloadSIGHUP(t *testing.T) {
	resource := startEchoServer(t)
	e := newRLEnv(t, "echo", "echo2", "echo3")
	e.startAgent(t, rlAgentCfg{Pubs: pubs(resource, "echo", "echo2", "echo3")})
	keyFile := filepath.Join(t.TempDir(), "b.key")
	must(t, os.WriteFile(keyFile, []byte(e2eKey(t)+"\n"), 0o600)) // not a key the relay knows
	a := rlMap{Name: "echo", Listen: freeAddr(t, "127.0.0.2"), Key: "${RL_ECHO_KEY}"}
	b := rlMap{Name: "echo2", Listen: freeAddr(t, "127.0.0.2"), KeyFile: keyFile}
	cfg := rlProxyCfg{Level: "info", Admin: freeAddr(t, "127.0.0.3"), Maps: []rlMap{a, b}}
	p := e.writeProxy(t, cfg, "RL_ECHO_KEY="+e.Keys["echo"].Apps, "HYBRID_LOG_LEVEL=debug")

	debugLines := func(mark int) int { return strings.Count(p.Output()[mark:], "[DEBUG] proxy: stream open") }
	mark := p.Mark()
	rlEcho(t, a.Listen) // the key from ${RL_ECHO_KEY}
	waitFor(t, "a debug line (HYBRID_LOG_LEVEL=debug beats level: info)", reloadTimeout, func() bool { return debugLines(mark) > 0 })
	appFails(t, b.Listen) // the key file's key is unknown to the relay

	// The right key in the key file: the file watch does not see it.
	must(t, os.WriteFile(keyFile, []byte(e.Keys["echo2"].Apps+"\n"), 0o600))
	time.Sleep(5 * rulesDebounce)
	if v := metric(t, p.Admin, mReloadOK); v != 0 {
		t.Fatalf("%v reloads applied without SIGHUP; the key file is outside the watched directory", v)
	}
	appFails(t, b.Listen)

	mark = p.Mark()
	start := time.Now()
	must(t, p.Signal(syscall.SIGHUP))
	p.WaitLogAfter(t, mark, "SIGHUP: reloading configuration", reloadTimeout)
	p.WaitLogAfter(t, mark, "config reloaded", reloadTimeout)
	d := time.Since(start)
	t.Logf("reload latency: SIGHUP to \"config reloaded\": %v", d.Round(time.Millisecond))
	if d > reloadDeadline {
		t.Errorf("SIGHUP took %v to apply, want <= %v", d, reloadDeadline)
	}
	rlEcho(t, b.Listen) // the new key from the key file
	waitMetric(t, p.Admin, mReloadOK, 1)

	// A SIGHUP with nothing new applies nothing.
	mark = p.Mark()
	must(t, p.Signal(syscall.SIGHUP))
	p.WaitLogAfter(t, mark, "SIGHUP: reloading configuration", reloadTimeout)
	time.Sleep(5 * rulesDebounce)
	if v := metric(t, p.Admin, mReloadOK); v != 1 {
		t.Errorf("a SIGHUP with nothing changed counted as a reload: %v applied, want 1", v)
	}

	// A file change later: ${RL_ECHO_KEY} is still resolved, and the
	// environment's log level still wins over the file's.
	c := rlMap{Name: "echo3", Listen: freeAddr(t, "127.0.0.2")}
	cfg.Maps = append(cfg.Maps, c)
	start = time.Now()
	saveRename(t, p.Config, e.proxyYAML(cfg))
	measure(t, "a file change after SIGHUP", start, func() bool { return rlEchoErr(c.Listen) == nil })
	mark = p.Mark()
	rlEcho(t, a.Listen)
	rlEcho(t, b.Listen)
	waitFor(t, "debug lines after a reload (HYBRID_LOG_LEVEL=debug)", reloadTimeout, func() bool { return debugLines(mark) >= 2 })
}

// rulesDebounce is the watcher's debounce (rules.DefaultDebounce).
const rulesDebounce = 100 * time.Millisecond

// TestReloadLogSettings: log.level and log.format apply at once.
func TestReloadLogSettings(t *testing.T) {
	resource := startEchoServer(t)
	e := newRLEnv(t, "echo")
	e.startAgent(t, rlAgentCfg{Pubs: []rlPub{{Name: "echo", Endpoint: resource}}})
	a := rlMap{Name: "echo", Listen: freeAddr(t, "127.0.0.2")}
	cfg := rlProxyCfg{Level: "info", Maps: []rlMap{a}}
	p := e.writeProxy(t, cfg)

	mark := p.Mark()
	rlEcho(t, a.Listen)
	time.Sleep(200 * time.Millisecond)
	if strings.Contains(p.Output()[mark:], "[DEBUG]") {
		t.Fatalf("debug lines at level info:\n%s", p.Output()[mark:])
	}

	cfg.Level = "debug"
	mark = p.Mark()
	start := time.Now()
	saveRename(t, p.Config, e.proxyYAML(cfg))
	measure(t, "log.level info -> debug", start, func() bool {
		rlEcho(t, a.Listen)
		return strings.Contains(p.Output()[mark:], "[DEBUG] proxy: stream open")
	})

	cfg.Format = "json"
	mark = p.Mark()
	start = time.Now()
	saveRename(t, p.Config, e.proxyYAML(cfg))
	measure(t, "log.format text -> json", start, func() bool {
		rlEcho(t, a.Listen)
		for _, l := range strings.Split(p.Output()[mark:], "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["@message"] == "stream open" && m["@level"] == "debug" {
				return true
			}
		}
		return false
	})

	// Quieter: at warn a stream logs nothing at all (nor does the reload,
	// whose own line is at info).
	cfg.Level, cfg.Format = "warn", "text"
	saveRename(t, p.Config, e.proxyYAML(cfg))
	waitFor(t, "log.level warn: a stream logs nothing", reloadTimeout, func() bool {
		m := p.Mark()
		rlEcho(t, a.Listen)
		time.Sleep(50 * time.Millisecond)
		return p.Mark() == m
	})
}
