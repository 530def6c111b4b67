package admin

import (
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/hybridconn/hybrid/internal/buildinfo"
)

// TestGuardedPaths: on a public listener, /healthz and /readyz answer
// anyone (/readyz says why only to who may read status); metrics, status
// and the page need the token (Bearer, or a browser's Basic login with the
// token as password) or loopback.
func TestGuardedPaths(t *testing.T) {
	a := New()
	a.AddStatus("relay", func() any { return map[string]string{"namespace": "ns"} })
	a.AddReady("relay", func() (bool, string) { return false, "no agent listening for pg" })
	a.SetPage(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "the page "+r.URL.Path) }))
	mux := http.NewServeMux()
	a.MountGuarded(mux, func() string { return "s3cret" })
	basic := func(user, pw string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
	}
	tests := []struct {
		name, path, remote, auth string
		forwarded                bool
		code                     int
		body                     string // contained in the answer
		notBody                  string
	}{
		{"healthz public", "/healthz", "203.0.113.1:1", "", false, 200, "ok", ""},
		{"readyz public, no reasons", "/readyz", "203.0.113.1:1", "", false, 503, "not ready", "pg"},
		{"readyz loopback, reasons", "/readyz", "127.0.0.1:1", "", false, 503, "relay: no agent listening for pg", ""},
		{"readyz token, reasons", "/readyz", "203.0.113.1:1", "Bearer s3cret", false, 503, "no agent listening for pg", ""},
		{"readyz excluding the failing check", "/readyz?exclude=relay", "127.0.0.1:1", "", false, 200, "ready\n", "pg"},
		{"readyz excluding another check", "/readyz?exclude=agent", "127.0.0.1:1", "", false, 503, "not ready", ""},
		{"page public", "/", "203.0.113.1:1", "", false, 401, "browser login", "the page"},
		{"page loopback", "/", "127.0.0.1:1", "", false, 200, "the page /", ""},
		{"page through a proxy", "/", "127.0.0.1:1", "", true, 401, "", "the page"},
		{"page bearer", "/", "203.0.113.1:1", "Bearer s3cret", false, 200, "the page /", ""},
		{"page basic", "/", "203.0.113.1:1", basic("admin", "s3cret"), false, 200, "the page /", ""},
		{"page basic wrong", "/", "203.0.113.1:1", basic("admin", "s3cre"), false, 401, "", "the page"},
		{"assets", "/ui/style.css", "203.0.113.1:1", basic("", "s3cret"), false, 200, "the page /ui/style.css", ""},
		{"status public", "/status", "203.0.113.1:1", "", false, 401, "", "namespace"},
		{"status token", "/status", "203.0.113.1:1", "Bearer s3cret", false, 200, `"namespace": "ns"`, ""},
		{"metrics public", "/metrics", "[2001:db8::1]:1", "", false, 401, "", "hybrid_build_info"},
		{"metrics loopback", "/metrics", "[::1]:1", "", false, 200, "hybrid_build_info{commit=", ""},
		{"other path", "/elsewhere", "127.0.0.1:1", "", false, 404, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tt.path, nil)
			r.RemoteAddr = tt.remote
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			if tt.forwarded {
				r.Header.Set("X-Forwarded-For", "203.0.113.1")
			}
			w := httptest.NewRecorder()
			mux.ServeHTTP(w, r)
			body := w.Body.String()
			if w.Code != tt.code || !strings.Contains(body, tt.body) || tt.notBody != "" && strings.Contains(body, tt.notBody) {
				t.Errorf("%s from %s: %d %q, want %d with %q and without %q", tt.path, tt.remote, w.Code, body, tt.code, tt.body, tt.notBody)
			}
			if w.Code == 401 && tt.path == "/" {
				if h := strings.Join(w.Header().Values("WWW-Authenticate"), ", "); !strings.Contains(h, "Basic") {
					t.Errorf("WWW-Authenticate %q: a browser would not ask for a login", h)
				}
			}
		})
	}
}

// TestReadyAndStatus: /readyz is 200 when every check passes and 503 when
// one fails; the status document carries the version and events.
func TestReadyAndStatus(t *testing.T) {
	tests := []struct {
		name   string
		checks map[string]bool
		code   int
		first  string
	}{
		{"no roles", nil, 200, "ready"},
		{"all ready", map[string]bool{"agent": true, "proxy": true}, 200, "ready"},
		{"one not", map[string]bool{"agent": true, "proxy": false}, 503, "not ready"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := New()
			for name, ok := range tt.checks {
				a.AddReady(name, func() (bool, string) { return ok, name + " says " + map[bool]string{true: "yes", false: "no"}[ok] })
			}
			w := httptest.NewRecorder()
			a.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/readyz", nil))
			lines := strings.Split(strings.TrimSpace(w.Body.String()), "\n")
			if w.Code != tt.code || lines[0] != tt.first || len(lines) != 1+len(tt.checks) {
				t.Errorf("%d %q", w.Code, w.Body.String())
			}
		})
	}
	a := New()
	doc := a.Status()
	if doc["version"] != buildinfo.Version {
		t.Errorf("version %v", doc["version"])
	}
	if v, ok := a.Value("hybrid_build_info", "goversion", runtime.Version()); !ok || v != 1 {
		t.Errorf("hybrid_build_info = %v, %v", v, ok)
	}
}
