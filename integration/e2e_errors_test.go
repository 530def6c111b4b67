package integration

import (
	"context"
	"errors"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/status"
)

// reStoppedListening matches the relay's log line saying that no agent
// listens for hc echo any more.
var reStoppedListening = regexp.MustCompile(`stopped listening[^\n]*hc=echo`)

// promptly bounds how long a refused stream may take to reach the app: the
// relay answers a refusal at once, so this is far below the 30 s open timeout.
const promptly = 10 * time.Second

// refusedLine matches a log line saying "stream refused" and naming every
// one of subs, in order, on the same line.
func refusedLine(subs ...string) *regexp.Regexp {
	pat := `stream refused`
	for _, s := range subs {
		pat += `[^\n]*` + regexp.QuoteMeta(s)
	}
	return regexp.MustCompile(pat)
}

// appFails connects to a proxy listen address like an app would and
// requires the connection to end (EOF or reset), without a byte, promptly.
func appFails(t *testing.T, addr string) {
	t.Helper()
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if isReset(err) && time.Since(start) < promptly {
		// The proxy accepted, was refused and reset the connection before
		// connect(2) even returned here: as prompt a failure as it gets.
		t.Logf("app connection through %s failed during connect after %v: %v", addr, time.Since(start).Round(time.Millisecond), err)
		return
	}
	if err != nil {
		t.Fatalf("dial proxy %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	// Like a client that speaks first (psql's startup message).
	_, _ = c.Write([]byte("hello?"))
	var b [1]byte
	n, err := c.Read(b[:])
	took := time.Since(start)
	switch {
	case n > 0:
		t.Fatalf("app connection through %s: got byte %q, want the connection to fail", addr, b[:n])
	case err == nil:
		t.Fatalf("app connection through %s: empty read without error", addr)
	case errors.Is(err, io.EOF), isReset(err):
		// The failure an app sees.
	default:
		t.Fatalf("app connection through %s: %v after %v, want EOF or reset promptly", addr, err, took)
	}
	if took > promptly {
		t.Fatalf("app connection through %s failed only after %v (want < %v)", addr, took, promptly)
	}
	t.Logf("app connection through %s failed after %v: %v", addr, took.Round(time.Millisecond), err)
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

func TestE2EErrors(t *testing.T) {
	resource := startSinkSource(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "echo", Endpoint: resource}}})
	good := tun.Listen["echo"]
	keys := tun.Keys["echo"]
	e2eEcho(t, good, 1<<10) // the tunnel works before anything goes wrong

	cases := []struct {
		name string
		// proxy is the misconfigured mapping, run in a proxy of its own; nil
		// means the fixture's correct proxy.
		proxy *proxyMap
		// stopAgent stops the agent first (and restarts it afterwards).
		stopAgent bool
		// want: substrings, in order, of the proxy's and the relay's
		// "stream refused" lines.
		want []string
		// What the Go client presents, and the code it must get back.
		hc, keyName, key string
		code             status.Code
	}{
		{
			name:  "wrong send key",
			proxy: &proxyMap{Name: "echo", KeyName: "apps", Key: e2eKey(t)},
			want:  []string{"unauthorized", "bad signature"},
			hc:    "echo", keyName: "apps", key: e2eKey(t),
			code: status.Unauthorized,
		},
		{
			name:  "listen-only key used to send",
			proxy: &proxyMap{Name: "echo", KeyName: "onprem", Key: keys.Onprem},
			want:  []string{"forbidden"},
			hc:    "echo", keyName: "onprem", key: keys.Onprem,
			code: status.Forbidden,
		},
		{
			name:  "unknown connection name",
			proxy: &proxyMap{Name: "nosuch", KeyName: "apps", Key: keys.Apps},
			want:  []string{"unknown hybrid connection"},
			hc:    "nosuch", keyName: "apps", key: keys.Apps,
			code: status.NotFound,
		},
		{
			name:      "stopped agent",
			stopAgent: true,
			want:      []string{"no agent listening"},
			hc:        "echo", keyName: "apps", key: keys.Apps,
			code: status.NoListener,
		},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			if tc.stopAgent {
				mark := tun.Relay.Mark()
				if code := tun.Agent.Stop(t); code != 0 {
					t.Errorf("agent exit code %d after SIGTERM, want 0", code)
				}
				// The relay has noticed once it says so; only then is "no
				// agent" the only right answer.
				tun.Relay.WaitLogAfter(t, mark, reStoppedListening, 30*time.Second)
			}
			proxy, addr := tun.Proxy, good
			if tc.proxy != nil {
				var listens []string
				proxy, listens, _ = tun.startProxy(t, "proxy-bad", []proxyMap{*tc.proxy})
				addr = listens[0]
			}
			relayMark, proxyMark := tun.Relay.Mark(), proxy.Mark()

			appFails(t, addr)
			proxy.WaitLogAfter(t, proxyMark, refusedLine(tc.want...), 10*time.Second)
			tun.Relay.WaitLogAfter(t, relayMark, refusedLine(append([]string{"hc=" + tc.hc}, tc.want...)...), 10*time.Second)

			// The same refusal, code and all, as the Go client sees it.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			conn, err := tun.client().Open(ctx, tc.hc, e2eToken(tc.hc, tc.keyName, tc.key), "")
			if err == nil {
				conn.Close()
				t.Fatalf("Open(%s) with key %s succeeded, want %v", tc.hc, tc.keyName, tc.code)
			}
			if got := status.CodeOf(err); got != tc.code {
				t.Errorf("Open(%s): code %v (%v), want %v", tc.hc, got, err, tc.code)
			}
			if took := time.Since(start); took > promptly {
				t.Errorf("Open(%s) refused only after %v", tc.hc, took)
			}

			if tun.Relay.Exited() {
				t.Fatalf("relay exited: %s", tun.Relay.exitDesc())
			}
			if !tc.stopAgent {
				// The relay goes on serving the correctly configured mapping.
				e2eEcho(t, good, 64<<10)
			}
		})
		if tc.stopAgent && tun.Agent.Exited() {
			// An agent comes back, and the same relay serves it at once.
			tun.Agent = tun.startAgent(t)
			e2eEcho(t, good, 64<<10)
		}
	}
	// Finally, with the agent back: correct keys still open streams directly.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := tun.client().Open(ctx, "echo", e2eToken("echo", "apps", keys.Apps), "")
	if err != nil {
		t.Fatalf("Open(echo) with the right key after the errors: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(conn, "Eok")
	conn.(interface{ CloseWrite() error }).CloseWrite()
	if b, err := io.ReadAll(conn); err != nil || string(b) != "ok" {
		t.Fatalf("echo over a Go client stream after the errors: %q, %v", b, err)
	}
}
