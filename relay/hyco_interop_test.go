package relay

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/testenv"
)

// installHycoWS installs Microsoft's hyco-ws npm package into a temp dir
// and returns the dir holding node_modules, or skips (fails under CI). hyco-ws 1.0.5 lists
// node's core modules ("http": "latest", ...) as dependencies, which the
// registry does not have: unpack it by hand and install its real ones.
func installHycoWS(t *testing.T) (node, dir string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		testenv.SkipOrFail(t, "node not installed (Debian: nodejs)")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		testenv.SkipOrFail(t, "npm not installed (Debian: npm)")
	}
	dir = t.TempDir()
	run := func(name string, args ...string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			testenv.SkipOrFail(t, "%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	run(npm, "install", "--no-save", "--no-audit", "--no-fund", "ws@1.1.5", "moment@2")
	run(npm, "pack", "hyco-ws@1.0.5")
	mod := filepath.Join(dir, "node_modules", "hyco-ws")
	os.MkdirAll(mod, 0o755)
	run("tar", "xzf", "hyco-ws-1.0.5.tgz", "-C", mod, "--strip-components=1")
	script, err := os.ReadFile("testdata/hyco.js")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "hyco.js"), script, 0o644)
	return node, dir
}

// TestHycoWSInterop: Microsoft's own Node client as listener (with our
// WebSocket and native senders) and as sender (with our WebSocket agent).
func TestHycoWSInterop(t *testing.T) {
	if testing.Short() {
		t.Skip("installs an npm package")
	}
	node, dir := installHycoWS(t)
	r := startRelay(t)
	base := fmt.Sprintf("ws://127.0.0.1:%d/$hc/", r.ep.HTTP)

	// hyco-ws listens on "pg".
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lis := exec.CommandContext(ctx, node, "hyco.js", "listen", base+"pg?sb-hc-action=listen", token("pg", "onprem", listenKey))
	lis.Dir = dir
	out, err := lis.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	lis.Stderr = os.Stderr
	if err := lis.Start(); err != nil {
		t.Fatal(err)
	}
	defer lis.Wait()
	defer cancel()
	ready := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			t.Logf("hyco-ws listener: %s", sc.Text())
			ready <- sc.Text()
		}
	}()
	select {
	case l := <-ready:
		if l != "LISTENING" {
			t.Fatalf("hyco-ws listener: %s", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("hyco-ws listener did not connect")
	}
	for name, sender := range map[string]relayclient.Client{"websocket": wsClient(r), "native": nativeClient(r)} {
		conn, err := openWith(sender, "pg", "apps", sendKey, "")
		if err != nil {
			t.Fatalf("%s sender to hyco-ws listener: %v", name, err)
		}
		roundTrip(t, conn)
		conn.Close()
	}

	// hyco-ws sends on "other" to our WebSocket agent; the token travels
	// in the query this time.
	startAgentWith(t, wsClient(r), "other", fullEcho)
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	snd := exec.CommandContext(sctx, node, "hyco.js", "send",
		base+"other?sb-hc-action=connect&sb-hc-token="+url.QueryEscape(token("other", "apps", sendKey)), "")
	snd.Dir = dir
	b, err := snd.CombinedOutput()
	if err != nil || !strings.Contains(string(b), "ECHO OK") {
		t.Fatalf("hyco-ws sender: %v\n%s", err, b)
	}
}
