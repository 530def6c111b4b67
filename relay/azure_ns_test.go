package relay

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
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
	pool := azureCert(t, certFile, keyFile)
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
	startAgentTok(t, client(aep, cfg.Agent.Transport), ac.Name, agentTok, fullEcho)

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

// startAgentTok is startAgentWith with a given listen token.
func startAgentTok(t *testing.T, c relayclient.Client, hc, tok string, serve func(net.Conn)) {
	t.Helper()
	ctx := context.Background()
	ctl, err := c.Listen(ctx, "test", "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	if err := ctl.Attach(ctx, hc, tok); err != nil {
		t.Fatal(err)
	}
	go func() {
		for ev := range ctl.Events() {
			if acc := ev.Accept; acc != nil {
				go func() {
					if c, err := ctl.Join(ctx, acc, tok); err == nil {
						serve(c)
					}
				}()
			}
		}
	}()
}

// azureCert writes a self-signed certificate for Azure Relay's names and
// returns a pool that trusts it.
func azureCert(t *testing.T, certFile, keyFile string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "*.servicebus.windows.net"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"*.servicebus.windows.net"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}
