package integration

import (
	"regexp"
	"testing"
)

// TestE2EOneOff: a one-off agent (--relay, --publish) and one-off proxies
// (--relay, --forward), no config file for either, carry bytes end to end
// through a relay run from YAML; one proxy over the native transport, one
// over the WebSocket fallback (--transport). Keys come from files (--key-file), as the
// README shows.
func TestE2EOneOff(t *testing.T) {
	resource := startSinkSource(t)
	tun := &tunnel{Dir: t.TempDir(), HCs: []hcDef{{Name: "oneoff"}}, Keys: map[string]hcKeys{"oneoff": {Apps: e2eKey(t), Onprem: e2eKey(t)}}}
	tun.startRelay(t)
	writeFile(t, tun.Dir, "onprem.key", tun.Keys["oneoff"].Onprem+"\n")
	writeFile(t, tun.Dir, "apps.key", tun.Keys["oneoff"].Apps+"\n")

	agent := startProcWith(t, ProcConfig{Label: "oneoff-agent", Dir: tun.Dir}, "hybrid", "agent",
		"--relay", tun.relayLine(), "--publish", "oneoff="+resource, "--key-name", "onprem", "--key-file", "onprem.key")
	agent.WaitLog(t, regexp.MustCompile(`agent: listening: relay=\S+ hc=oneoff endpoint=`+regexp.QuoteMeta(resource)), e2eStartTimeout)

	for _, transport := range []string{"tcp", "websocket"} {
		t.Run(transport, func(t *testing.T) {
			listen := freeAddr(t, "127.0.0.2")
			p := startProcWith(t, ProcConfig{Label: "oneoff-proxy-" + transport, Dir: tun.Dir}, "hybrid", "proxy",
				"--relay", tun.relayLine(), "--forward", listen+"=oneoff", "--key-name", "apps", "--key-file", "apps.key",
				"--transport", transport)
			p.WaitLog(t, "forwarding: listen="+listen+" hc=oneoff", e2eStartTimeout)
			// Both directions, without relying on half-close (a WebSocket
			// stream has none).
			want, got, n := downloadAndHash(t, listen, 8<<20)
			if n != 8<<20 || want != got {
				t.Fatalf("download through the one-off %s proxy: %d bytes, digest match %v", transport, n, want == got)
			}
			pingPong(t, listen, 32, 32<<10)
			if code := p.Stop(t); code != 0 {
				t.Fatalf("one-off proxy exited %d after SIGTERM", code)
			}
		})
	}
	if code := agent.Stop(t); code != 0 {
		t.Fatalf("one-off agent exited %d after SIGTERM", code)
	}
}
