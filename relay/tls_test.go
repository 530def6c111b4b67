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
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/rules"
)

// writeCert writes a self-signed certificate for relay.test with the given
// serial.
func writeCert(t *testing.T, certFile, keyFile string, serial int64) {
	t.Helper()
	writeCertFor(t, certFile, keyFile, serial, "relay.test")
}

// writeCertFor writes a self-signed certificate for names and returns a
// pool that trusts it.
func writeCertFor(t *testing.T, certFile, keyFile string, serial int64, names ...string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: names}
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

// TestTLSCertificateReload: the relay serves TLS on its native ports, and
// renewed certificate files under the same names are picked up by
// ReloadCertificate (SIGHUP) for new handshakes.
func TestTLSCertificateReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "relay.crt"), filepath.Join(dir, "relay.key")
	writeCert(t, certFile, keyFile, 1)
	l := &Listeners{Control: lis(t), Data: lis(t), HTTP: lis(t)}
	cfg := &rules.Relay{Namespace: ns, TLS: &rules.TLS{Cert: certFile, Key: keyFile},
		Listen:      rules.RelayListen{Control: l.Control.Addr().String(), Data: l.Data.Addr().String(), HTTP: l.HTTP.Addr().String()},
		Connections: []rules.RelayConnection{{Name: "pg", Keys: []rules.Key{{Name: "apps", Rights: []string{"send"}, Primary: sendKey}}}}}
	srv, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	defer func() { cancel(); <-done }()

	serial := func() int64 {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", l.Data.Addr().String(),
			&tls.Config{InsecureSkipVerify: true, ServerName: "relay.test"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serial(); got != 1 {
		t.Fatalf("serial %d, want 1", got)
	}
	writeCert(t, certFile, keyFile, 2)
	if got := serial(); got != 1 {
		t.Fatalf("certificate changed before a reload: serial %d", got)
	}
	if err := srv.ReloadCertificate(); err != nil {
		t.Fatal(err)
	}
	if got := serial(); got != 2 {
		t.Fatalf("after ReloadCertificate serial %d, want 2", got)
	}
	os.WriteFile(certFile, []byte("garbage"), 0o600)
	if err := srv.ReloadCertificate(); err == nil {
		t.Fatal("a broken certificate file was accepted")
	}
	if got := serial(); got != 2 {
		t.Fatalf("a failed reload changed the certificate: serial %d", got)
	}
}

// TestWSOverTLS: the WebSocket door on a TLS relay (wss), both sides.
func TestWSOverTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "relay.crt"), filepath.Join(dir, "relay.key")
	writeCert(t, certFile, keyFile, 1)
	l := &Listeners{Control: lis(t), Data: lis(t), HTTP: lis(t)}
	keys := []rules.Key{{Name: "apps", Rights: []string{"send"}, Primary: sendKey}, {Name: "onprem", Rights: []string{"listen"}, Primary: listenKey}}
	cfg := &rules.Relay{Namespace: ns, TLS: &rules.TLS{Cert: certFile, Key: keyFile},
		Listen:      rules.RelayListen{Control: l.Control.Addr().String(), Data: l.Data.Addr().String(), HTTP: l.HTTP.Addr().String()},
		Connections: []rules.RelayConnection{{Name: "pg", Keys: keys}}}
	srv, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	defer func() { cancel(); <-done }()

	pem, _ := os.ReadFile(certFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	ep := relayclient.Endpoint{Host: "127.0.0.1", Control: port(l.Control), Data: port(l.Data), HTTP: port(l.HTTP), TLS: true, Namespace: ns}
	c := relayclient.New(ep, relayclient.WithTransport(relayclient.TransportWebSocket),
		relayclient.WithTLSConfig(&tls.Config{RootCAs: pool, ServerName: "relay.test"}))
	if !strings.HasPrefix(c.String(), "wss://") {
		t.Fatalf("client %s, want wss", c)
	}
	startAgentWith(t, c, "pg", fullEcho)
	conn, err := openWith(c, "pg", "apps", sendKey, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip(t, conn)
}
