package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/rules"
)

// TestConfigFlag: --config is offered only by the commands that read a
// config, and its help states the default once.
func TestConfigFlag(t *testing.T) {
	tests := []struct {
		args []string
		has  bool
	}{
		{[]string{"relay"}, true}, {[]string{"agent"}, true}, {[]string{"proxy"}, true}, {[]string{"up"}, true},
		{[]string{"check"}, true}, {[]string{"diagnose"}, true}, {[]string{"status"}, true},
		{[]string{"keys"}, false}, {[]string{"keys", "new"}, false}, {[]string{"keys", "token"}, false},
		{[]string{"version"}, false}, {[]string{"completion"}, false}, {[]string{"completion", "bash"}, false},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errs := runArgs(t, append(tt.args, "--help")...)
			if code != 0 {
				t.Fatalf("--help: exit %d: %s", code, errs)
			}
			if got := strings.Contains(out, "--config"); got != tt.has {
				t.Fatalf("--config in help: %v, want %v:\n%s", got, tt.has, out)
			}
			if strings.Contains(out, `(default "hybrid.yaml")`) {
				t.Fatalf("the --config default is printed twice:\n%s", out)
			}
		})
	}
}

// TestRoleHelp: each role's help gives an example and names the config
// sections it reads.
func TestRoleHelp(t *testing.T) {
	for role, sections := range map[string]string{
		"relay": "Config sections read: relay", "agent": "Config sections read: agent",
		"proxy": "Config sections read: proxy", "up": "Config sections read: all of them",
	} {
		t.Run(role, func(t *testing.T) {
			_, out, _ := runArgs(t, role, "--help")
			if !strings.Contains(out, sections) || !strings.Contains(out, "Examples:\n  hybrid "+role) {
				t.Fatalf("help lacks %q or an example:\n%s", sections, out)
			}
		})
	}
}

func TestPlural(t *testing.T) {
	for n, want := range map[int]string{0: "0 agents", 1: "1 agent", 2: "2 agents"} {
		if got := plural(n, "agent"); got != want {
			t.Errorf("plural(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestRoleError: a role's error that names the role already is not
// prefixed again ("proxy: proxy: ...").
func TestRoleError(t *testing.T) {
	tests := []struct{ name, err, want string }{
		{"proxy", "proxy: listen for \"pg\": bind: address already in use", "proxy: listen for \"pg\": bind: address already in use"},
		{"relay", "listen tcp: bind: address already in use", "relay: listen tcp: bind: address already in use"},
		{"agent", "agentish: x", "agent: agentish: x"},
	}
	for _, tt := range tests {
		base := errors.New(tt.err)
		got := roleError(tt.name, base)
		if got.Error() != tt.want || !errors.Is(got, base) {
			t.Errorf("roleError(%q, %q) = %q, want %q wrapping the error", tt.name, tt.err, got, tt.want)
		}
	}
}

// TestDemoGuard: the embedded demo config may only listen on loopback.
func TestDemoGuard(t *testing.T) {
	const key = `"0123456789abcdef0123"`
	tests := []struct {
		name, yaml, want string
	}{
		{"loopback", "proxy:\n  relay: 127.0.0.1\n  connections:\n    - {name: pg, listen: 127.0.0.2:5432, key_name: a, key: " + key + "}\n", ""},
		{"proxy listen on all interfaces", "proxy:\n  relay: 127.0.0.1\n  connections:\n    - {name: pg, listen: 0.0.0.0:5432, key_name: a, key: " + key + "}\n",
			`<embedded>:4: proxy.connections[0].listen: "0.0.0.0:5432" is not a loopback address`},
		{"relay on a LAN address", "relay:\n  listen: {control: 10.1.2.3:5671}\n  insecure: true\n  namespace: ns\n  keys: [{name: a, rights: [send], primary: " + key + "}]\n",
			`<embedded>:2: relay.listen.control: "10.1.2.3:5671" is not a loopback address`},
		{"agent admin", "agent:\n  relays: [127.0.0.1]\n  admin: :9100\n  connections: []\n", `agent.admin: ":9100" is not a loopback address`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := rules.Parse(rules.EmbeddedFile, []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			err = demoGuard(cfg)
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("demoGuard: %v, want %q", err, tt.want)
			}
		})
	}
}

// TestOneOffExclusive: --config and the one-off flags exclude each other;
// a one-off error names the flag.
func TestOneOffExclusive(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"proxy", "--config", "x.yaml", "--forward", "127.0.0.2:1=pg"}, "--config and --forward exclude each other"},
		{[]string{"agent", "-c", "x.yaml", "--relay", "r", "--publish", "pg=127.0.0.1:1"}, "--config and --relay, --publish exclude each other"},
		{[]string{"proxy", "--forward", "127.0.0.2:1=pg"}, "--relay is required"},
		{[]string{"proxy", "--relay", "r", "--forward", "127.0.0.2:99999=pg", "--key-name", "apps", "--key", "0123456789abcdef"},
			`--forward 127.0.0.2:99999=pg: proxy.connections[0].listen: invalid listen address "127.0.0.2:99999"`},
		{[]string{"agent", "--relay", "r", "--publish", "pg=127.0.0.1:1", "--key-name", "k", "--key", "0123456789abcdef", "--tls", "--insecure"},
			"--tls and --insecure exclude each other"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, _, errs := runArgs(t, tt.args...)
			if code != exitConfig || !strings.Contains(errs, tt.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errs, exitConfig, tt.want)
			}
		})
	}
}

func TestKeysToken(t *testing.T) {
	const key = "dL/xVZo0+dV20tSZX23zG4gFUTnwjBKhh6MjnwHTgmI="
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "apps.key")
	os.WriteFile(keyFile, []byte(key+"\n"), 0o600)
	base := []string{"keys", "token", "--uri", "sb://relay.example.com/postgres", "--key-name", "apps"}
	tests := []struct {
		name  string
		args  []string
		stdin string
		ttl   time.Duration // of the token printed; 0: want a usage error
		err   string
	}{
		{"key file", append(base, "--key-file", keyFile), "", time.Hour, ""},
		{"key on stdin", append(base, "--key", "-"), key + "\r\n", time.Hour, ""},
		{"key value", append(base, "--key", key, "--ttl", "1d"), "", 24 * time.Hour, ""},
		{"days and hours", append(base, "--key-file", keyFile, "--ttl", "1d12h"), "", 36 * time.Hour, ""},
		{"go duration", append(base, "--key-file", keyFile, "--ttl", "90m"), "", 90 * time.Minute, ""},
		{"wss uri", []string{"keys", "token", "--uri", "wss://relay.example.com/$hc/postgres", "--key-name", "apps", "--key-file", keyFile}, "", time.Hour, ""},
		{"no key", base, "", 0, "give one of --key-file and --key"},
		{"both keys", append(base, "--key", key, "--key-file", keyFile), "", 0, "give one of --key-file and --key"},
		{"empty stdin", append(base, "--key", "-"), "\n", 0, "no key on stdin"},
		{"missing key file", append(base, "--key-file", filepath.Join(dir, "nope")), "", 0, "cannot read key file"},
		{"uri without scheme", []string{"keys", "token", "--uri", "relay.example.com/postgres", "--key-name", "a", "--key", key}, "", 0, "want sb://<namespace>/<connection>"},
		{"uri ftp", []string{"keys", "token", "--uri", "ftp://relay.example.com/postgres", "--key-name", "a", "--key", key}, "", 0, `scheme "ftp"`},
		{"uri without host", []string{"keys", "token", "--uri", "sb:///postgres", "--key-name", "a", "--key", key}, "", 0, "no host"},
		{"uri with query", []string{"keys", "token", "--uri", "sb://ns/pg?x=1", "--key-name", "a", "--key", key}, "", 0, "no user, query or fragment"},
		{"ttl bad", append(base, "--key", key, "--ttl", "1w"), "", 0, `"1w": want a duration such as 1d, 12h or 90m`},
		{"ttl zero", append(base, "--key", key, "--ttl", "0d"), "", 0, "must be positive"},
		{"ttl negative", append(base, "--key", key, "--ttl", "-1h"), "", 0, "must be positive"},
		{"ttl huge", append(base, "--key", key, "--ttl", "99999d"), "", 0, "more than 36500 days"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runInput(t, tt.stdin, tt.args...)
			if tt.ttl == 0 {
				if code != exitConfig || !strings.Contains(errs, tt.err) {
					t.Fatalf("exit %d, stderr %q; want %d and %q", code, errs, exitConfig, tt.err)
				}
				return
			}
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			v := sas.Verifier{Namespace: "relay.example.com"}
			m, err := v.Verify(strings.TrimSpace(out), "postgres", sas.Send, []sas.Rule{{Name: "apps", Rights: sas.Send, Primary: key}})
			if err != nil {
				t.Fatalf("token does not verify: %v\n%s", err, out)
			}
			if d := time.Until(m.Expiry); d < tt.ttl-time.Minute || d > tt.ttl+time.Minute {
				t.Fatalf("expires in %s, want %s", d, tt.ttl)
			}
		})
	}
	_, help, _ := runArgs(t, "keys", "token", "--help")
	for _, s := range []string{"ServiceBusAuthorization", "hyco-ws", "agent and proxy mint their tokens", "--key-file", "1d"} {
		if !strings.Contains(help, s) {
			t.Errorf("keys token --help does not say %q", s)
		}
	}
}

// closedAddr returns a loopback host:port nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestStatus(t *testing.T) {
	doc := `{"uptime_seconds": 5, "relay": {"namespace": "ns", "agents": [{"agent": "a1", "remote": "127.0.0.1:1", "listening": ["pg"]}],
	  "streams_active": 1, "counters": {"streams_opened": 3},
	  "connections": [{"name": "mssql", "agents": []}, {"name": "pg", "listeners": 1, "agents": ["a1"], "streams_active": 1}]},
	  "config": {"file": "h.yaml", "reloads_succeeded": 1, "reloads_failed": 0}}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, doc)
	}))
	defer srv.Close()
	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	down := closedAddr(t)
	host := strings.TrimPrefix(srv.URL, "http://")

	tests := []struct {
		name           string
		args           []string
		code           int
		stdout, stderr []string // each must appear
	}{
		{"host:port without scheme", []string{"status", "--url", host}, 0,
			[]string{srv.URL + " (up 5s)", "relay ns: 1 agent, 1 stream active", "config h.yaml: 1 reload applied, 0 failed",
				"    connection mssql: NO agent listening; 0 streams active\n", "    connection pg: agents a1; 1 stream active\n"}, nil},
		{"down", []string{"status", "--url", down}, exitRuntime, nil,
			[]string{"hybrid: status: http://" + down + ": connection refused\n", "hint: is a role running there?"}},
		{"not a status endpoint", []string{"status", "--url", notFound.URL}, exitRuntime, nil,
			[]string{"GET /status answered 404 Not Found: not a hybrid admin endpoint"}},
		{"json ok", []string{"status", "--url", srv.URL, "--json"}, 0, []string{`{"uptime_seconds":5,"relay":{"namespace":"ns",`}, nil},
		{"json down", []string{"status", "--url", down, "--json"}, exitRuntime,
			[]string{`{"error":"connection refused","url":"http://` + down + `"}`}, nil},
		{"bad url", []string{"status", "--url", "ftp://x"}, exitConfig, nil, []string{`--url "ftp://x": scheme "ftp": want http or https`}},
		{"bad url, json", []string{"status", "--url", "ftp://x", "--json"}, exitConfig, []string{`{"error":"--url \"ftp://x\": scheme`}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runArgs(t, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stdout %q, stderr %q", code, tt.code, out, errs)
			}
			for _, s := range tt.stdout {
				if !strings.Contains(out, s) {
					t.Errorf("stdout %q lacks %q", out, s)
				}
			}
			for _, s := range tt.stderr {
				if !strings.Contains(errs, s) {
					t.Errorf("stderr %q lacks %q", errs, s)
				}
			}
			if strings.Count(errs, "connection refused") > 1 || strings.Contains(errs, `Get "`) {
				t.Errorf("stderr repeats the error or shows Go's wrapping: %q", errs)
			}
			if strings.Contains(strings.Join(tt.args, " "), "--json") {
				for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
					var v map[string]any
					if err := json.Unmarshal([]byte(l), &v); err != nil {
						t.Errorf("--json printed a line that is not JSON: %q", l)
					}
				}
			}
		})
	}
}

// TestDiagnoseUnreachable: with the relay down, the port rows fail, the key
// rows say "skipped: relay unreachable", and every line fits 100 columns.
func TestDiagnoseUnreachable(t *testing.T) {
	host, port, _ := net.SplitHostPort(closedAddr(t))
	f := filepath.Join(t.TempDir(), "proxy.yaml")
	os.WriteFile(f, []byte(fmt.Sprintf(`proxy:
  relay: {host: %s, control: %s, data: %s, http: %s, namespace: a-rather-long-namespace-name.relay.example.com}
  connections:
    - {name: a-long-hybrid-connection-name/with/segments, listen: 127.0.0.2:5432, key_name: applications-key, key: "0123456789abcdef0123"}
    - {name: pg, listen: 127.0.0.2:5433, key_name: apps, key: "0123456789abcdef0123"}
`, host, port, port, port)), 0o600)
	code, out, errs := runArgs(t, "diagnose", "--config", f)
	if code != exitConfig || !strings.Contains(errs, "3 of 5 checks failed, 2 skipped") {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	for _, l := range strings.Split(out, "\n") {
		if n := utf8.RuneCountInString(l); n > tableWidth {
			t.Errorf("%d columns: %q", n, l)
		}
	}
	if n := strings.Count(out, "skipped: relay unreachable"); n != 2 {
		t.Errorf("%d key rows skipped, want 2:\n%s", n, out)
	}
	if n := strings.Count(out, "FAIL: connection refused"); n != 3 {
		t.Errorf("%d port rows refused, want 3:\n%s", n, out)
	}
}

// TestPrintRowsWidth: long targets and errors are shortened to 100 columns,
// and a shortened error is printed in full below the table.
func TestPrintRowsWidth(t *testing.T) {
	long := errors.New("tls: failed to verify certificate: x509: certificate is valid for relay-a.internal.example.com, relay-b.internal.example.com, not relay.example.com")
	rows := []probe{
		{role: "agent", check: "relay control port", target: "relay.example.com:5671", err: long},
		{role: "agent", check: "listen key", target: strings.Repeat("x", 80) + " at relay.example.com (key onprem)", skipped: "relay unreachable"},
		{role: "agent", check: "published endpoint", target: "pg -> 127.0.0.1:5432", took: 3 * time.Millisecond},
	}
	var b strings.Builder
	failed, skipped := printRows(&b, rows)
	out := b.String()
	if failed != 1 || skipped != 1 {
		t.Errorf("failed %d, skipped %d; want 1, 1", failed, skipped)
	}
	for _, l := range strings.Split(out, "\n") {
		if n := utf8.RuneCountInString(l); n > tableWidth {
			t.Errorf("%d columns: %q", n, l)
		}
	}
	if !strings.Contains(out, "… [1]") || !strings.Contains(strings.Join(strings.Fields(out), " "), "[1] "+long.Error()) {
		t.Errorf("the long error is not noted in full:\n%s", out)
	}
	if !strings.Contains(out, "ok  ") || !strings.Contains(out, "skipped: relay unreachable") {
		t.Errorf("rows missing:\n%s", out)
	}
}
