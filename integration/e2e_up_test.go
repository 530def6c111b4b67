package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestE2EUpEmbeddedDemo runs what `make run` runs: `hybrid up` in a
// directory with no hybrid.yaml, so the embedded demo config (the repo's
// hybrid.yaml) brings up relay, agent and proxy in one process; a request to
// the proxy's 127.0.0.2:8081 reaches the demo resource on 127.0.0.1:8081.
// The demo's ports are fixed (5671, 9352, 8080, 8081, 127.0.0.2:5432): the
// test needs them free.
func TestE2EUpEmbeddedDemo(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:5671", "127.0.0.1:9352", "127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.2:8081", "127.0.0.2:5432"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("the demo's fixed port %s is busy here: %v", addr, err)
		}
		ln.Close()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:8081")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "on-prem says hello to %s", r.URL.Path)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	up := startProcWith(t, ProcConfig{Dir: t.TempDir()}, "hybrid", "up")
	up.WaitLog(t, "agent: listening: relay=127.0.0.1:5671 hc=demo", 30*time.Second)
	up.WaitLog(t, "forwarding: listen=127.0.0.2:8081 hc=demo", 30*time.Second)

	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://127.0.0.2:8081/through-the-tunnel")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "on-prem says hello to /through-the-tunnel") {
		t.Fatalf("got %q", body)
	}
	c.CloseIdleConnections() // else the kept-alive stream holds the grace period
	if code := up.Stop(t); code != 0 {
		t.Fatalf("hybrid up exited %d after SIGTERM", code)
	}
}
