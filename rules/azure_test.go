package rules

import (
	"os"
	"strings"
	"testing"
)

func TestAzureRelayFields(t *testing.T) {
	relay := func(extra string) string {
		return "relay:\n  keys: [{name: k, rights: [manage], primary: " + K + "}]\n" + extra
	}
	tests := []struct {
		name      string
		src       string
		publicURL string
		max       int
		body      int64
		err       string
	}{
		{"defaults", relay(""), "", DefaultMaxListeners, DefaultMaxHTTPBody, ""},
		{"all set", relay("  public_url: https://Relay.Example.com\n  max_listeners: 3\n  max_http_body: 1MiB\n"),
			"https://relay.example.com", 3, 1 << 20, ""},
		{"port kept", relay("  public_url: https://relay.example.com:8443/\n"), "https://relay.example.com:8443", 25, DefaultMaxHTTPBody, ""},
		{"no cap", relay("  max_listeners: 0\n  max_http_body: 5000\n"), "", 0, 5000, ""},
		{"decimal units", relay("  max_http_body: 2MB\n"), "", 25, 2e6, ""},
		{"bad scheme", relay("  public_url: wss://relay.example.com\n"), "", 0, 0, "hybrid.yaml:3: relay.public_url: invalid public URL"},
		{"path", relay("  public_url: https://relay.example.com/x\n"), "", 0, 0, "relay.public_url: invalid public URL"},
		{"negative", relay("  max_listeners: -1\n"), "", 0, 0, "relay.max_listeners: must not be negative"},
		{"bad size", relay("  max_http_body: 10 parsecs\n"), "", 0, 0, "relay.max_http_body: invalid size"},
		{"zero size", relay("  max_http_body: 0\n"), "", 0, 0, "relay.max_http_body: must be at least 1 byte"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := parseOrErr(t, tt.src, tt.err)
			if c == nil {
				return
			}
			if r := c.Relay; r.PublicURL != tt.publicURL || r.MaxListeners != tt.max || r.MaxHTTPBody != tt.body {
				t.Fatalf("got %q %d %d", r.PublicURL, r.MaxListeners, r.MaxHTTPBody)
			}
		})
	}
}

// parseOrErr parses src; with wantErr it expects an error containing it
// and returns nil.
func parseOrErr(t *testing.T, src, wantErr string) *Config {
	t.Helper()
	c, err := Parse("hybrid.yaml", []byte(src))
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("got %v, want %q", err, wantErr)
		}
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHTTPEndpoints(t *testing.T) {
	agent := func(transport, ep string) string {
		s := "agent:\n  relays: [relay.example.com]\n"
		if transport != "" {
			s += "  transport: " + transport + "\n"
		}
		return s + "  connections:\n    - {name: api, endpoint: \"" + ep + "\", key_name: k, key: " + K + "}\n"
	}
	tests := []struct {
		name, src            string
		http, endpoint, tran string
		err                  string
	}{
		{"tcp endpoint", agent("", "127.0.0.1:8080"), "", "127.0.0.1:8080", "auto", ""},
		{"http", agent("", "http://127.0.0.1:8080"), "http://127.0.0.1:8080", "127.0.0.1:8080", "websocket", ""},
		{"default port, base path", agent("websocket", "HTTP://Api.Corp.Local/v1/"), "http://api.corp.local:80/v1", "api.corp.local:80", "websocket", ""},
		{"https", agent("", "https://api.corp.local:8443/base"), "https://api.corp.local:8443/base", "api.corp.local:8443", "websocket", ""},
		{"needs websocket", agent("tcp", "http://127.0.0.1:8080"), "", "", "", "hybrid.yaml:3: agent.transport: agent.connections[0] publishes the HTTP endpoint http://127.0.0.1:8080 (HTTP mode), which needs transport: websocket, not tcp"},
		{"not with auto", agent("auto", "http://127.0.0.1:8080"), "", "", "", "which needs transport: websocket, not auto"},
		{"ftp", agent("", "ftp://127.0.0.1:21"), "", "", "", "want http:// or https://"},
		{"query", agent("", "http://127.0.0.1:8080/?x=1"), "", "", "", "a query or fragment is not allowed"},
		{"user", agent("", "http://u:p@127.0.0.1:8080/"), "", "", "", "user info is not allowed"},
		{"dot segments", agent("", "http://127.0.0.1:8080/a/../b"), "", "", "", "the path must be clean"},
		{"bad port", agent("", "http://127.0.0.1:99999"), "", "", "", "invalid HTTP endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := parseOrErr(t, tt.src, tt.err)
			if c == nil {
				return
			}
			a := c.Agent
			if got := a.Connections[0]; got.HTTP != tt.http || got.Endpoint != tt.endpoint || a.Transport != tt.tran {
				t.Fatalf("got http %q endpoint %q transport %q", got.HTTP, got.Endpoint, a.Transport)
			}
		})
	}
}

// azureDocConfig returns the YAML block docs/configuration.md shows for an
// Azure Relay namespace (after its marker).
func azureDocConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- azure-relay-config -->\n```yaml\n")
	if !ok {
		t.Fatal("docs/configuration.md has no azure-relay-config block")
	}
	block, _, _ := strings.Cut(rest, "```")
	return block
}

// TestAzureNamespaceConfig: the documented configuration for an Azure Relay
// namespace parses into what Azure needs: port 443, TLS, the namespace as
// token host, Azure's gateways as rendezvous hosts, WebSocket transport.
func TestAzureNamespaceConfig(t *testing.T) {
	t.Setenv("AZURE_RELAY_LISTEN_KEY", "listen-key-from-the-portal-0000000000000=")
	t.Setenv("AZURE_RELAY_SEND_KEY", "send-key-from-the-portal-00000000000000000=")
	c, err := Parse("azure.yaml", []byte(azureDocConfig(t)))
	if err != nil {
		t.Fatal(err)
	}
	want := RelayEndpoint{Host: "mynamespace.servicebus.windows.net", Control: DefaultControlPort, Data: DefaultDataPort, HTTP: 443,
		TLS: true, Namespace: "mynamespace.servicebus.windows.net", RendezvousHosts: []string{".servicebus.windows.net"}}
	for _, got := range []struct {
		role      string
		ep        []RelayEndpoint
		transport string
	}{{"agent", c.Agent.Relays, c.Agent.Transport}, {"proxy", c.Proxy.Relays, c.Proxy.Transport}} {
		if len(got.ep) != 1 || dump(&Config{Agent: &Agent{Relays: got.ep}}) != dump(&Config{Agent: &Agent{Relays: []RelayEndpoint{want}}}) ||
			got.transport != TransportWebSocket {
			t.Fatalf("%s: %+v %s", got.role, got.ep, got.transport)
		}
	}
}
