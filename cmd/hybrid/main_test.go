package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/sas"
)

func runArgs(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runInput(t, "", args...)
}

// runInput is runArgs with stdin.
func runInput(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code = run(ctx, args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`proxy:
  relay: 127.0.0.1
  connections:
    - name: pg
      listen: 127.0.0.2:5432
      key_name: apps
      key: "0123456789abcdef0123"
      endpiont: 127.0.0.1:5432
`), 0o600)
	warn := filepath.Join(dir, "warn.yaml")
	os.WriteFile(warn, []byte(`agent:
  relays: [127.0.0.1]
  allow: [127.0.0.1:1]
  connections:
    - {name: pg, endpoint: 127.0.0.1:5432, key_name: onprem, key: "0123456789abcdef0123"}
`), 0o600)
	// Problems and warnings go to stderr, the ok line to stdout.
	tests := []struct {
		name           string
		args           []string
		code           int
		stdout, stderr string // each must contain it; "" means must be empty
	}{
		{"embedded default", []string{"check"}, 0, "<embedded>: ok (relay with 2 connections; agent with 2 connections; proxy with 2 connections)", ""},
		{"repo hybrid.yaml", []string{"check", "--config", "../../hybrid.yaml"}, 0, "ok", ""},
		{"one connection", []string{"check", "--config", warn}, 0, "ok (agent with 1 connection)",
			"warning: " + warn + `:5: agent.connections[0].endpoint: "127.0.0.1:5432" is not in agent.allow`},
		{"unknown field", []string{"check", "--config", bad}, 1, "", bad + ":8: proxy.connections[0].endpiont: "},
		{"missing file", []string{"check", "--config", filepath.Join(dir, "nope.yaml")}, 1, "", "nope.yaml: cannot read config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runArgs(t, tt.args...)
			ok := func(got, want string) bool {
				if want == "" {
					return got == ""
				}
				return strings.Contains(got, want)
			}
			if code != tt.code || !ok(out, tt.stdout) || !ok(errs, tt.stderr) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, stdout %q, stderr %q", code, out, errs, tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"frobnicate"},
		{"relay", "extra-arg"},
		{"keys", "token", "--uri", "sb://ns/hc"},
		{"relay", "--no-such-flag"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			if code, out, errs := runArgs(t, args...); code != exitConfig {
				t.Fatalf("exit %d (%s%s), want %d", code, out, errs, exitConfig)
			}
		})
	}
}

func TestMissingSection(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "p.yaml")
	os.WriteFile(f, []byte("proxy:\n  relay: 127.0.0.1\n  connections:\n    - {name: pg, listen: 127.0.0.2:1, key_name: a, key: \"0123456789abcdef0123\"}\n"), 0o600)
	code, _, errs := runArgs(t, "relay", "--config", f)
	if code != exitConfig || !strings.Contains(errs, "no relay section") {
		t.Fatalf("exit %d, %q", code, errs)
	}
}

func TestKeys(t *testing.T) {
	code, out, _ := runArgs(t, "keys", "new")
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(out))
	if code != 0 || err != nil || len(key) != 32 {
		t.Fatalf("keys new: exit %d, %q", code, out)
	}
	k := strings.TrimSpace(out)
	code, out, _ = runArgs(t, "keys", "token", "--uri", "sb://relay.example.com/postgres", "--key-name", "apps", "--key", k, "--ttl", "1h")
	if code != 0 {
		t.Fatalf("keys token: exit %d", code)
	}
	v := sas.Verifier{Namespace: "relay.example.com"}
	m, err := v.Verify(strings.TrimSpace(out), "postgres", sas.Send, []sas.Rule{{Name: "apps", Rights: sas.Send, Primary: k}})
	if err != nil {
		t.Fatalf("minted token does not verify: %v\n%s", err, out)
	}
	if d := time.Until(m.Expiry); d < 59*time.Minute || d > 61*time.Minute {
		t.Fatalf("expiry in %s, want 1h", d)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runArgs(t, "version")
	if code != 0 || !strings.HasPrefix(out, "hybrid ") || !strings.Contains(out, "go1.") {
		t.Fatalf("exit %d, %q", code, out)
	}
}

// TestKeysRotateRevoke: the commands edit the relay's file in place, print
// the new value once, and leave a valid config; mistakes change nothing.
func TestKeysRotateRevoke(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "relay.yaml")
	src := `# relay of the test
relay:
  connections:
    - name: pg
      keys:
        - { name: apps, rights: [send], primary: "AAAAAAAAAAAAAAAAAAAAAAAA", secondary: "BBBBBBBBBBBBBBBBBBBBBBBB" }
        - { name: onprem, rights: [listen], primary: "CCCCCCCCCCCCCCCCCCCCCCCC" }
`
	os.WriteFile(file, []byte(src), 0o640)
	code, out, errs := runArgs(t, "keys", "rotate", "--config", file, "--connection", "pg", "--rule", "apps", "--slot", "primary")
	if code != 0 {
		t.Fatalf("rotate: exit %d: %s", code, errs)
	}
	value := strings.TrimSpace(out)
	if b, err := base64.StdEncoding.DecodeString(value); err != nil || len(b) != 32 {
		t.Fatalf("printed %q, want a fresh 256-bit key", out)
	}
	b, _ := os.ReadFile(file)
	if !strings.Contains(string(b), `primary: "`+value+`"`) || strings.Contains(string(b), "AAAA") ||
		!strings.Contains(string(b), "# relay of the test") || !strings.Contains(errs, "next:") {
		t.Fatalf("file after rotate:\n%s\nstderr: %s", b, errs)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v not kept", fi.Mode().Perm())
	}
	if code, _, errs := runArgs(t, "keys", "revoke", "--config", file, "--connection", "pg", "--rule", "apps", "--slot", "secondary"); code != 0 {
		t.Fatalf("revoke: exit %d: %s", code, errs)
	}
	b, _ = os.ReadFile(file)
	if strings.Contains(string(b), "BBBB") || !strings.Contains(string(b), "revoke: true") {
		t.Fatalf("file after revoke:\n%s", b)
	}
	before := string(b)
	for _, args := range [][]string{
		{"keys", "rotate", "--config", file, "--connection", "pg", "--rule", "nope", "--slot", "primary"},
		{"keys", "rotate", "--config", file, "--connection", "pg", "--rule", "apps"},
		{"keys", "revoke", "--config", file, "--connection", "pg", "--rule", "apps", "--slot", "third"},
	} {
		if code, _, _ := runArgs(t, args...); code != 1 {
			t.Fatalf("%v: exit %d, want 1", args, code)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != before {
		t.Fatal("a refused edit changed the file")
	}
}
