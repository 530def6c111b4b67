package fleet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/redis/go-redis/v9"

	"github.com/hybridconn/hybrid/internal/limit"
	"github.com/hybridconn/hybrid/rules"
)

func TestNewRedis(t *testing.T) {
	tests := []struct {
		url  string
		kind string // client type, or "" for an error containing want
		want string
	}{
		{"redis://127.0.0.1:6379/0", "*redis.Client", ""},
		{"rediss://user:pw@redis.example.com:6380/2", "*redis.Client", ""},
		{"redis-sentinel://user:p%40ss@s1:26379,s2:26379/mymaster?db=3", "*redis.Client", ""},
		{"redis-cluster://c1:6379,c2:6379,c3:6379", "*redis.ClusterClient", ""},
		{"redis-sentinel://s1:26379", "", "master name"},
		{"memcached://x", "", "scheme"},
		{"redis-cluster://", "", "no host"},
	}
	for _, tt := range tests {
		c, err := newRedis(tt.url)
		if tt.kind == "" {
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: err %v, want %q", tt.url, err, tt.want)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.url, err)
			continue
		}
		switch c.(type) {
		case *redis.Client:
			if tt.kind != "*redis.Client" {
				t.Errorf("%s: got a plain client", tt.url)
			}
		case *redis.ClusterClient:
			if tt.kind != "*redis.ClusterClient" {
				t.Errorf("%s: got a cluster client", tt.url)
			}
		}
		c.Close()
	}
}

// serveOnce accepts one connection with a and reports the result.
func serveOnce(t *testing.T, a *auth) (string, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	res := make(chan error, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			res <- err
			return
		}
		conn, _, err := a.accept(raw)
		if conn != nil {
			conn.Close()
		} else {
			raw.Close()
		}
		res <- err
	}()
	return ln.Addr().String(), res
}

// TestPeerAuthSecret: both sides must hold the fleet secret.
func TestPeerAuthSecret(t *testing.T) {
	good := &auth{id: "a", secret: []byte("fleet-secret-0123456789")}
	for _, tt := range []struct {
		name   string
		dialer *auth
		ok     bool
	}{
		{"same secret", &auth{id: "b", secret: []byte("fleet-secret-0123456789")}, true},
		{"other secret", &auth{id: "b", secret: []byte("not-the-secret-000000000")}, false},
		{"no secret", &auth{id: "b"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr, res := serveOnce(t, good)
			conn, err := tt.dialer.dial(context.Background(), addr)
			if conn != nil {
				conn.Close()
			}
			serr := <-res
			if tt.ok && (err != nil || serr != nil) {
				t.Fatalf("dial %v, accept %v", err, serr)
			}
			if !tt.ok && (err == nil || serr == nil) {
				t.Fatalf("a peer without the secret got through: dial %v, accept %v", err, serr)
			}
		})
	}
}

// writeCA makes a CA and a certificate it signed, as PEM files in dir.
func writeCA(t *testing.T, dir, name string) *rules.FleetTLS {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	keyDER, _ := x509.MarshalECPrivateKey(key)
	write := func(file, typ string, b []byte) string {
		p := filepath.Join(dir, file)
		os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600)
		return p
	}
	return &rules.FleetTLS{Cert: write(name+".crt", "CERTIFICATE", der), Key: write(name+".key", "EC PRIVATE KEY", keyDER),
		CA: write(name+"-ca.crt", "CERTIFICATE", caDER)}
}

// TestPeerAuthMutualTLS: peers must present a certificate of the fleet CA.
func TestPeerAuthMutualTLS(t *testing.T) {
	dir := t.TempDir()
	fleetCfg, otherCfg := writeCA(t, dir, "fleet"), writeCA(t, dir, "other")
	mk := func(c *rules.FleetTLS) *auth {
		s, cl, err := mutualTLS(c)
		if err != nil {
			t.Fatal(err)
		}
		return &auth{id: "x", serverTLS: s, clientTLS: cl}
	}
	// The same fleet CA, but another certificate of it: accepted.
	sibling := writeCA(t, t.TempDir(), "fleet")
	sibling.CA, sibling.Cert, sibling.Key = fleetCfg.CA, fleetCfg.Cert, fleetCfg.Key
	addr, res := serveOnce(t, mk(fleetCfg))
	if conn, err := mk(sibling).dial(context.Background(), addr); err != nil || <-res != nil {
		t.Fatalf("a fleet peer was refused: %v", err)
	} else {
		conn.Close()
	}
	// A certificate of another CA: refused.
	addr, res = serveOnce(t, mk(fleetCfg))
	conn, err := mk(otherCfg).dial(context.Background(), addr)
	if conn != nil {
		conn.Close()
	}
	if serr := <-res; err == nil && serr == nil {
		t.Fatal("a peer with another CA's certificate got through")
	}
}

// TestPeerHandshakesBounded: connections to the peer port that never
// authenticate hold at most maxPeerHandshakes handshakes at once; the rest
// are closed at once, and a real peer still gets through once the silent
// ones time out.
func TestPeerHandshakesBounded(t *testing.T) {
	secret := []byte("fleet-secret-0123456789")
	f := &Fleet{log: hclog.NewNullLogger(), auth: &auth{id: "a", secret: secret},
		conns: map[net.Conn]struct{}{}, handshakes: make(chan struct{}, maxPeerHandshakes), fails: limit.NewFailures()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); ln.Close(); <-done })

	const flood = maxPeerHandshakes + 100
	var conns []net.Conn
	for i := 0; i < flood; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	// The ones over the cap are closed at once: a read ends well before
	// the handshake timeout.
	var closedN atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(peerHandshake / 3) // well before the silent ones time out
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(deadline)
			if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				closedN.Add(1)
			}
		}()
	}
	wg.Wait()
	closed := int(closedN.Load())
	t.Logf("%d silent connections: %d closed at once", flood, closed)
	if closed != flood-maxPeerHandshakes {
		t.Fatalf("%d of %d silent connections closed at once, want %d (those over the cap)", closed, flood, flood-maxPeerHandshakes)
	}
	// The silent ones time out; a peer with the secret gets through.
	time.Sleep(peerHandshake)
	pc, err := (&auth{id: "b", secret: secret}).dial(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatalf("a real peer after the flood: %v", err)
	}
	pc.Close()
}
