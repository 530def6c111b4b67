package agent

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/wsconn"
	"github.com/hybridconn/hybrid/rules"
)

// countingListenerOn is countingListener on another loopback address.
func countingListenerOn(t *testing.T, host string) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().String(), &n
}

// TestHostileWebSocketRelay plays a WebSocket relay whose accept notices
// send the agent to other hosts, ports and paths. The agent must drop each
// one without any TCP connection (every listener here counts its accepts),
// audit it, and keep its control channel: a last, honest notice is still
// followed, to the relay itself and without the listen token.
func TestHostileWebSocketRelay(t *testing.T) {
	resource, resourceHits := countingListener(t)            // the published endpoint
	other, otherHits := countingListener(t)                  // another port on the relay's host
	other2, other2Hits := countingListenerOn(t, "127.0.0.2") // on another host

	var rendezvous atomic.Int64 // honest rendezvous requests that reached the relay
	var tokenSeen atomic.Bool
	accepted := make(chan struct{}, 1)
	notices := make(chan string, 32)
	mux := http.NewServeMux()
	var relayAddr string
	mux.HandleFunc("/$hc/", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("sb-hc-action") {
		case "listen":
			wsconn.Upgrade(w, r, wsconn.UpgradeOptions{}, func(ws *wsconn.Conn) {
				for addr := range notices {
					msg := fmt.Sprintf(`{"accept":{"address":%q,"id":"00112233445566778899aabbccddeeff","connectHeaders":{},"remoteEndpoint":{"address":"203.0.113.9","port":4000}}}`, addr)
					if err := ws.WriteMessage(wsconn.OpText, []byte(msg)); err != nil {
						return
					}
				}
			})
		case "accept":
			rendezvous.Add(1)
			if r.Header.Get("ServiceBusAuthorization") != "" || r.URL.Query().Get("sb-hc-token") != "" {
				tokenSeen.Store(true)
			}
			http.Error(w, "gone", http.StatusGone)
			select {
			case accepted <- struct{}{}:
			default:
			}
		default:
			http.Error(w, "no", http.StatusBadRequest)
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	relayAddr = srv.Listener.Addr().String()
	_, rport, _ := net.SplitHostPort(relayAddr)
	port, _ := strconv.Atoi(rport)

	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	cfg := &rules.Agent{
		Relays:    []rules.RelayEndpoint{{Host: "127.0.0.1", Control: 1, Data: 1, HTTP: port, Namespace: "ns"}},
		Transport: rules.TransportWebSocket,
		Audit:     audit,
		Connections: []rules.AgentConnection{
			{Name: "pg", Endpoint: resource, KeyName: "k", Key: "0123456789abcdef0123"},
		},
	}
	a, stop := runAgent(t, cfg)

	q := "?sb-hc-action=accept&sb-hc-id=00112233445566778899aabbccddeeff"
	hostile := []string{
		"ws://" + resource + "/$hc/pg" + q,                  // the resource itself
		"ws://" + other + "/$hc/pg" + q,                     // another port on the relay's host
		"ws://" + other2 + "/$hc/pg" + q,                    // another host
		"wss://" + relayAddr + "/$hc/pg" + q,                // TLS where the entry is plain
		"ws://" + relayAddr + "/$hc/other" + q,              // another hybrid connection
		"ws://" + relayAddr + "/admin" + q,                  // another path
		"ws://" + relayAddr + "/$hc/pg?sb-hc-action=listen", // another action, no id
		"ws://" + relayAddr + "@" + other + "/$hc/pg" + q,   // user info trick
		"ws://localhost:" + rport + "/$hc/pg" + q,           // a name for the relay's address
		"http://" + relayAddr + "/$hc/pg" + q,               // not a WebSocket scheme
	}
	for _, h := range hostile {
		notices <- h
	}
	notices <- "ws://" + relayAddr + "/$hc/pg" + q // honest: the agent follows it
	select {
	case <-accepted:
	case <-time.After(20 * time.Second):
		t.Fatal("the agent never followed the honest notice")
	}
	close(notices)

	// The honest notice made the agent dial its resource once (before it
	// joined); nothing else may have been dialled.
	for deadline := time.Now().Add(10 * time.Second); resourceHits.Load() < 1 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if r, o, o2 := resourceHits.Load(), otherHits.Load(), other2Hits.Load(); r != 1 || o != 0 || o2 != 0 {
		t.Fatalf("connections: resource %d (want 1, for the honest notice), other port %d, other host %d (want 0)", r, o, o2)
	}
	if rendezvous.Load() != 1 {
		t.Fatalf("relay saw %d rendezvous requests, want only the honest one", rendezvous.Load())
	}
	if tokenSeen.Load() {
		t.Fatal("the agent sent its listen token on the rendezvous")
	}
	if got := a.rogue.Load(); got != int64(len(hostile)) {
		t.Fatalf("rogue notices counted %d, want %d", got, len(hostile))
	}
	stop()
	b, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	var denies int
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var ev AuditEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Event == "deny" && strings.Contains(ev.Reason, "rendezvous") {
			denies++
		}
	}
	if denies != len(hostile) {
		t.Fatalf("audit has %d rendezvous denials, want %d:\n%s", denies, len(hostile), b)
	}
}
