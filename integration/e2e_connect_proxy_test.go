package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// startTinyproxy runs tinyproxy (Debian's) on a free loopback port, logging
// every CONNECT, and returns its address and process.
func startTinyproxy(t *testing.T) (string, *Proc) {
	t.Helper()
	bin, err := exec.LookPath("tinyproxy")
	if err != nil {
		pgMissing(t, "tinyproxy not installed (apt-get install tinyproxy)")
	}
	port := freePort(t)
	conf := writeFile(t, t.TempDir(), "tinyproxy.conf", fmt.Sprintf(`Port %d
Listen 127.0.0.1
Timeout 600
LogLevel Connect
MaxClients 100
Allow 127.0.0.1
`, port))
	p := startProc(t, bin, "-d", "-c", conf)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitTCP(t, addr, 30*time.Second)
	return addr, p
}

// TestE2EThroughHTTPConnectProxy: agent and proxy reach the relay only
// through a corporate HTTP CONNECT proxy (proxy_url:), for the control
// channel and every data connection; bytes still cross intact.
func TestE2EThroughHTTPConnectProxy(t *testing.T) {
	tp, tpProc := startTinyproxy(t)
	resource := startSinkSource(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "echo", Endpoint: resource}}})
	// Replace the direct agent and proxy with ones that go through tinyproxy.
	tun.Agent.Stop(t)
	tun.Proxy.Stop(t)
	via := "  proxy_url: http://" + tp + "\n"
	agentCfg := writeFile(t, t.TempDir(), "agent.yaml", strings.Replace(tun.agentYAML(), "agent:\n", "agent:\n"+via, 1))
	listen := freeAddr(t, "127.0.0.2")
	proxyCfg := writeFile(t, t.TempDir(), "proxy.yaml", strings.Replace(
		tun.proxyYAML([]proxyMap{{Name: "echo"}}, []string{listen}), "proxy:\n", "proxy:\n"+via, 1))
	agent := startHybrid(t, "agent", "--config", agentCfg)
	agent.WaitLog(t, regexp.MustCompile(`agent: listening: relay=\S+ hc=echo`), e2eStartTimeout)
	proxy := startHybrid(t, "proxy", "--config", proxyCfg)
	proxy.WaitLog(t, "forwarding: listen="+listen, e2eStartTimeout)

	// A download, and a request/response exchange. (Not an upload ended
	// by half-close: tinyproxy, like many HTTP proxies, tears a tunnel down
	// both ways when one side ends its half, so streams that rely on
	// half-close cannot cross it. Ordinary protocols don't.)
	want, got, n := downloadAndHash(t, listen, 16<<20)
	if want != got || n != 16<<20 {
		t.Fatalf("download through the CONNECT proxy: %d bytes, digest match %v", n, want == got)
	}
	pingPong(t, listen, 64, 32<<10)
	// tinyproxy saw the control channel and the data connections.
	for _, port := range []int{tun.Control, tun.Data} {
		want := fmt.Sprintf("CONNECT 127.0.0.1:%d HTTP/1.1", port)
		waitFor(t, "tinyproxy to log "+want, 10*time.Second, func() bool { return strings.Contains(tpProc.Output(), want) })
	}
	if n := strings.Count(tpProc.Output(), fmt.Sprintf("CONNECT 127.0.0.1:%d ", tun.Data)); n < 2 {
		t.Fatalf("tinyproxy saw %d data connections, want the proxy's OPEN and the agent's JOIN", n)
	}

	// A proxy that refuses: a clear error in the proxy's log.
	bad := writeFile(t, t.TempDir(), "bad.yaml", strings.Replace(
		tun.proxyYAML([]proxyMap{{Name: "echo"}}, []string{freeAddr(t, "127.0.0.2")}), "proxy:\n", "proxy:\n  proxy_url: http://"+freeAddr(t, "127.0.0.1")+"\n", 1))
	out, code := runCmd(t, 30*time.Second, "hybrid", "diagnose", "--config", bad)
	if code != 1 || !strings.Contains(out, "connection refused") {
		t.Fatalf("diagnose through a dead proxy: exit %d\n%s", code, out)
	}
}

// pingPong sends rounds of size-byte messages to an echo resource ('E'),
// reading each answer before the next, and checks every byte.
func pingPong(t *testing.T, addr string, rounds, size int) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write([]byte{'E'}); err != nil {
		t.Fatal(err)
	}
	msg, back := make([]byte, size), make([]byte, size)
	for i := 0; i < rounds; i++ {
		for j := range msg {
			msg[j] = byte(i + j)
		}
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if _, err := io.ReadFull(c, back); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if !bytes.Equal(msg, back) {
			t.Fatalf("round %d: echo differs", i)
		}
	}
}
