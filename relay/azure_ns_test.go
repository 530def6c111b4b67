package relay

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/rules"
)

// TestAzureNamespaceClient: clients made from the configuration
// docs/configuration.md documents for an Azure Relay namespace work against
// a relay posing as that namespace: TLS on 443 under
// mynamespace.servicebus.windows.net (the dialer maps Azure's names to the
// test relay), tokens for the namespace, and rendezvous addresses on
// another of Azure's gateway hosts, which the agent follows because
// rendezvous_hosts defaults to .servicebus.windows.net.
func TestAzureNamespaceClient(t *testing.T) {
	const listenKey, sendKey = "listen-key-from-the-portal-0000000000000=", "send-key-from-the-portal-00000000000000000="
	t.Setenv("AZURE_RELAY_LISTEN_KEY", listenKey)
	t.Setenv("AZURE_RELAY_SEND_KEY", sendKey)
	b, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(b), "<!-- azure-relay-config -->\n```yaml\n")
	block, _, _ := strings.Cut(rest, "```")
	cfg, err := rules.Parse("azure.yaml", []byte(block))
	if err != nil {
		t.Fatal(err)
	}

	// The "namespace": hybrid's relay with a certificate for Azure's names.
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ns.crt"), filepath.Join(dir, "ns.key")
	pool := writeCertFor(t, certFile, keyFile, 1, "*.servicebus.windows.net")
	const gateway = "g2-prod-am3-001-sb.servicebus.windows.net"
	r := startRelayWith(t, func(c *rules.Relay) {
		c.Namespace = "mynamespace.servicebus.windows.net"
		c.TLS = &rules.TLS{Cert: certFile, Key: keyFile}
		c.PublicURL = "https://" + gateway
		c.Connections = []rules.RelayConnection{{Name: "postgres", Keys: []rules.Key{
			{Name: "apps", Rights: []string{"send"}, Primary: sendKey},
			{Name: "onprem", Rights: []string{"listen"}, Primary: listenKey},
		}}}
	})
	var mu sync.Mutex
	var dialled []string
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialled = append(dialled, addr)
		mu.Unlock()
		host, port, _ := net.SplitHostPort(addr)
		if !strings.HasSuffix(host, ".servicebus.windows.net") || port != "443" {
			return nil, fmt.Errorf("test dialer: %s is not an Azure address", addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", r.ep.HTTP))
	}
	client := func(ep rules.RelayEndpoint, transport string) relayclient.Client {
		return relayclient.New(ep.ClientEndpoint(), relayclient.WithTransport(transport), relayclient.WithDialer(dial),
			relayclient.WithTLSConfig(&tls.Config{RootCAs: pool}))
	}
	ac := cfg.Agent.Connections[0]
	aep := cfg.Agent.Relays[0]
	agentTok := sas.NewToken(sas.ResourceURI(aep.Namespace, ac.Name), ac.KeyName, ac.Key, time.Now().Add(time.Hour))
	startAgentToken(t, client(aep, cfg.Agent.Transport), ac.Name, agentTok, fullEcho)

	pc := cfg.Proxy.Connections[0]
	pep := cfg.Proxy.Relays[0]
	sender := client(pep, cfg.Proxy.Transport)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := sender.Open(ctx, pc.Name, sas.NewToken(sas.ResourceURI(pep.Namespace, pc.Name), pc.KeyName, pc.Key, time.Now().Add(time.Hour)), "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip(t, conn)
	mu.Lock()
	defer mu.Unlock()
	var sawGateway bool
	for _, a := range dialled {
		sawGateway = sawGateway || a == gateway+":443"
	}
	if !sawGateway {
		t.Fatalf("the agent never followed a rendezvous on the gateway host; dialled %v", dialled)
	}
}
