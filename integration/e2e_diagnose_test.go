package integration

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
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

	keys := tun.Keys["echo"]
	tests := []struct {
		name, file, content string
		want                *regexp.Regexp
	}{
		{"wrong send key", tun.ProxyConfig, strings.ReplaceAll(readText(t, tun.ProxyConfig), keys.Apps, e2eKey(t)),
			regexp.MustCompile(`(?m)^proxy +send key +echo at 127\.0\.0\.1 \(key apps\) +FAIL: unauthorized`)},
		{"listen key used to send", tun.ProxyConfig,
			strings.ReplaceAll(strings.ReplaceAll(readText(t, tun.ProxyConfig), keys.Apps, keys.Onprem), "key_name: apps", "key_name: onprem"),
			regexp.MustCompile(`(?m)^proxy +send key +echo .* FAIL: forbidden`)},
		{"endpoint down", tun.AgentConfig, strings.ReplaceAll(readText(t, tun.AgentConfig), resource, freeAddr(t, "127.0.0.1")),
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

// TestE2EDiagnoseWithoutCheck: against a relay that has no check action
// (Azure Relay; here hybrid's relay behind a front that refuses the action
// as a foreign server would), with transport websocket, `hybrid diagnose`
// skips the native ports, checks a listen key by a listen attempt that
// leaves at once, and says a send key cannot be checked there (SKIP, not a
// failure).
func TestE2EDiagnoseWithoutCheck(t *testing.T) {
	resource := startSinkSource(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "echo", Endpoint: resource}}})
	relayHTTP, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", tun.HTTP))
	rp := httputil.NewSingleHostReverseProxy(relayHTTP)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("sb-hc-action") == "check" {
			http.Error(w, "unknown action", http.StatusBadRequest) // no Hybrid-Status: not hybrid's
			return
		}
		rp.ServeHTTP(w, r)
	}))
	defer front.Close()
	_, frontPort, _ := net.SplitHostPort(front.Listener.Addr().String())
	viaFront := func(y string) string {
		y = strings.Replace(y, fmt.Sprintf("http: %d,", tun.HTTP), "http: "+frontPort+",", 1)
		return withTransport("websocket")(y)
	}
	keys := tun.Keys["echo"]
	for _, tc := range []struct {
		name, cfg string
		code      int
		rows      []string
		absent    []string
	}{
		{"agent", viaFront(readText(t, tun.AgentConfig)), 0,
			[]string{`(?m)^agent +relay http port +127\.0\.0\.1:` + frontPort + ` +ok `, `(?m)^agent +listen key +echo .* ok `},
			[]string{"relay control port", "relay data port"}},
		{"proxy", viaFront(readText(t, tun.ProxyConfig)), 0,
			[]string{`(?m)^proxy +send key +echo .* skipped: needs a stream to check`}, nil},
		{"wrong listen key", strings.ReplaceAll(viaFront(readText(t, tun.AgentConfig)), keys.Onprem, e2eKey(t)), 1,
			[]string{`(?m)^agent +listen key +echo .* FAIL: unauthorized`}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := writeFile(t, t.TempDir(), "cfg.yaml", tc.cfg)
			out, code := runCmd(t, 60*time.Second, "hybrid", "diagnose", "--config", f)
			if code != tc.code {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.code, out)
			}
			for _, row := range tc.rows {
				if !regexp.MustCompile(row).MatchString(out) {
					t.Errorf("no row matching %s:\n%s", row, out)
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(out, a) {
					t.Errorf("row %q present:\n%s", a, out)
				}
			}
		})
	}
	if b, _ := os.ReadFile(tun.Audit); strings.Contains(string(b), `"event":"open"`) {
		t.Fatalf("diagnose opened a stream:\n%s", b)
	}
}

// readText returns the content of file f.
func readText(t *testing.T, f string) string {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
