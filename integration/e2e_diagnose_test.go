package integration

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestE2EDiagnose runs `hybrid diagnose` against a running relay: with the
// tunnel's own configs every probe passes (exit 0); with a wrong send key,
// a listen key where a send key belongs, and a published endpoint nothing
// listens on, the rows say which probe failed and why (exit 1). A diagnosis
// opens no stream: the agent's audit log stays empty.
func TestE2EDiagnose(t *testing.T) {
	resource := startSinkSource(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "echo", Endpoint: resource}}})

	for _, cfg := range []string{tun.AgentConfig, tun.ProxyConfig} {
		out, code := runCmd(t, 60*time.Second, "hybrid", "diagnose", "--config", cfg)
		if code != 0 {
			t.Fatalf("diagnose %s: exit %d\n%s", cfg, code, out)
		}
		for _, row := range []string{"relay control port", "relay data port", "relay http port"} {
			if !regexp.MustCompile(`(?m)^\S+ +` + row + ` .* ok `).MatchString(out) {
				t.Errorf("diagnose %s: no ok row for %q:\n%s", cfg, row, out)
			}
		}
	}

	read := func(f string) string {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	keys := tun.Keys["echo"]
	tests := []struct {
		name, file, content string
		want                *regexp.Regexp
	}{
		{"wrong send key", tun.ProxyConfig, strings.ReplaceAll(read(tun.ProxyConfig), keys.Apps, e2eKey(t)),
			regexp.MustCompile(`(?m)^proxy +send key +echo at 127\.0\.0\.1 \(key apps\) +FAIL: unauthorized`)},
		{"listen key used to send", tun.ProxyConfig,
			strings.ReplaceAll(strings.ReplaceAll(read(tun.ProxyConfig), keys.Apps, keys.Onprem), "key_name: apps", "key_name: onprem"),
			regexp.MustCompile(`(?m)^proxy +send key +echo .* FAIL: forbidden`)},
		{"endpoint down", tun.AgentConfig, strings.ReplaceAll(read(tun.AgentConfig), resource, freeAddr(t, "127.0.0.1")),
			regexp.MustCompile(`(?m)^agent +published endpoint +echo -> .* FAIL: .*connection refused`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := writeFile(t, t.TempDir(), "bad.yaml", tt.content)
			out, code := runCmd(t, 60*time.Second, "hybrid", "diagnose", "--config", f)
			if code != 1 || !tt.want.MatchString(out) {
				t.Fatalf("exit %d, want 1 and a row matching %s:\n%s", code, tt.want, out)
			}
		})
	}
	if b, _ := os.ReadFile(tun.Audit); strings.Contains(string(b), `"event":"open"`) {
		t.Fatalf("diagnose opened a stream:\n%s", b)
	}
}
