package integration

import (
	"context"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/status"
)

// countingListener counts the connections made to it (and closes them).
func countingListener(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return l.Addr().String(), &n
}

func TestE2EAgentRefusesUnpublishedTarget(t *testing.T) {
	resource := startSinkSource(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "echo", Endpoint: resource}}})
	other, hits := countingListener(t)
	key := tun.Keys["echo"].Apps
	client := tun.client()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Control: the published endpoint, named explicitly, is served.
	conn, err := client.Open(ctx, "echo", e2eToken("echo", "apps", key), resource)
	if err != nil {
		t.Fatalf("Open(echo, target=%s) (the published endpoint): %v", resource, err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write([]byte("Eping")); err != nil {
		t.Fatal(err)
	}
	conn.(interface{ CloseWrite() error }).CloseWrite()
	echo, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || string(echo) != "ping" {
		t.Fatalf("echo through a stream to the published target: %q, %v", echo, err)
	}

	// Anything else is refused by the agent, which never dials it.
	for _, target := range []string{other, "localhost:" + strings.Split(other, ":")[1], "127.0.0.1:22"} {
		start := time.Now()
		conn, err := client.Open(ctx, "echo", e2eToken("echo", "apps", key), target)
		if err == nil {
			conn.Close()
			t.Fatalf("Open(echo, target=%s) succeeded; the agent must refuse an unpublished target", target)
		}
		if got := status.CodeOf(err); got != status.Refused {
			t.Errorf("Open(echo, target=%s): code %v (%v), want %v", target, got, err, status.Refused)
		}
		t.Logf("target %s refused after %v: %v", target, time.Since(start).Round(time.Millisecond), err)
		lines := e2eWaitAudit(t, tun.Audit, "a deny line for target "+target, 30*time.Second, func(l auditLine) bool {
			return l.Event == "deny" && l.HC == "echo" && l.Target == target
		})
		for _, l := range lines {
			if l.Event == "deny" && l.Target == target && (l.Endpoint != "" || l.Reason == "") {
				t.Errorf("audit deny line: %+v, want a reason and no endpoint dialled", l)
			}
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the unpublished target %s saw %d connections, want 0", other, n)
	}
	// Only the control stream was ever opened.
	if n := countAudit(e2eReadAudit(t, tun.Audit), "open", "echo"); n != 1 {
		t.Errorf("audit log has %d open lines, want 1 (the published target only)", n)
	}
}
