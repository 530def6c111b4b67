package integration

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"testing"
)

// relayTLSLine makes a CA and a certificate for 127.0.0.1, writes them to
// files, points SSL_CERT_FILE (which every child process inherits, and Go's
// crypto/x509 reads on Linux) at the CA so agents and proxies trust it, and
// returns the relay's tls: line (for the TLS end-to-end tests, make bench
// and the scaling measurements).
func relayTLSLine(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	caPEM, cert := testPKI(t, "127.0.0.1", "localhost")
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile := writeFile(t, dir, "relay.crt", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})))
	keyFile := writeFile(t, dir, "relay.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})))
	t.Setenv("SSL_CERT_FILE", writeFile(t, dir, "ca.crt", string(caPEM)))
	return fmt.Sprintf("  tls: {cert: %s, key: %s}\n", certFile, keyFile)
}
