package integration

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// restartOver replaces the tunnel's agent and proxy with ones configured by
// edit (applied to both YAML files), and returns the proxy's listen address
// for hc.
func restartOver(t *testing.T, tun *tunnel, hc string, edit func(string) string) (agent, proxy *Proc, listen string) {
	t.Helper()
	tun.Agent.Stop(t)
	tun.Proxy.Stop(t)
	agentCfg := writeFile(t, t.TempDir(), "agent.yaml", edit(tun.agentYAML()))
	listen = freeAddr(t, "127.0.0.2")
	proxyCfg := writeFile(t, t.TempDir(), "proxy.yaml", edit(tun.proxyYAML([]proxyMap{{Name: hc}}, []string{listen})))
	agent = startHybrid(t, "agent", "--config", agentCfg)
	agent.WaitLog(t, regexp.MustCompile(`agent: listening: relay=\S+ hc=`+regexp.QuoteMeta(hc)), e2eStartTimeout)
	proxy = startHybrid(t, "proxy", "--config", proxyCfg)
	proxy.WaitLog(t, "forwarding: listen="+listen, e2eStartTimeout)
	return agent, proxy, listen
}

func withTransport(tr string) func(string) string {
	return func(y string) string {
		y = strings.Replace(y, "agent:\n", "agent:\n  transport: "+tr+"\n", 1)
		return strings.Replace(y, "proxy:\n", "proxy:\n  transport: "+tr+"\n", 1)
	}
}

// TestE2EWebSocketTransport: agent and proxy with transport: websocket reach
// the relay only on its http port, with Azure's protocol.
func TestE2EWebSocketTransport(t *testing.T) {
	resource := startSinkSource(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "echo", Endpoint: resource}}})
	_, _, listen := restartOver(t, tun, "echo", withTransport("websocket"))
	tun.Relay.WaitLog(t, regexp.MustCompile(`agent connected:.*door=websocket|door=websocket.*agent connected`), e2eStartTimeout)

	want, got, n := downloadAndHash(t, listen, 16<<20)
	if want != got || n != 16<<20 {
		t.Fatalf("download over websocket: %d bytes, digest match %v", n, want == got)
	}
	pingPong(t, listen, 64, 32<<10)
}

// TestE2EWebSocketAutoFallback: transport auto with the native ports
// unreachable falls back to WebSocket and says so.
func TestE2EWebSocketAutoFallback(t *testing.T) {
	resource := startSinkSource(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "echo", Endpoint: resource}}})
	deadControl, deadData := freePort(t), freePort(t)
	edit := func(y string) string {
		y = strings.ReplaceAll(y, fmt.Sprintf("control: %d, data: %d,", tun.Control, tun.Data),
			fmt.Sprintf("control: %d, data: %d,", deadControl, deadData))
		return withTransport("auto")(y)
	}
	agent, proxy, listen := restartOver(t, tun, "echo", edit)
	agent.WaitLog(t, "using the websocket fallback", e2eStartTimeout)
	pingPong(t, listen, 32, 16<<10) // the proxy probes on its first stream
	proxy.WaitLog(t, "using the websocket fallback", e2eStartTimeout)
	want, got, n := downloadAndHash(t, listen, 4<<20)
	if want != got || n != 4<<20 {
		t.Fatalf("download over the fallback: %d bytes, digest match %v", n, want == got)
	}
}

// TestE2EWebSocketPsql: psql through agent and proxy on transport: websocket.
func TestE2EWebSocketPsql(t *testing.T) {
	pg := startPostgres(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "postgres", Endpoint: pg.Addr()}}})
	_, _, listen := restartOver(t, tun, "postgres", withTransport("websocket"))
	dsn := pg.DSN("127.0.0.2", e2ePort(t, listen))
	out, err := psql(t, dsn, "select 42")
	if err != nil || out != "42" {
		t.Fatalf("psql select 42 over websocket: %q, %v", out, err)
	}
	out, err = psql(t, dsn, "select length(string_agg(repeat('x', 1000), '')) from generate_series(1, 2000)")
	if err != nil || out != "2000000" {
		t.Fatalf("2 MB result over websocket: %q, %v", out, err)
	}
	_ = time.Second
}
