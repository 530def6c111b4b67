// Command api is the "on-premises" HTTPS API of examples/https-api: a small
// JSON API that terminates TLS itself, with a certificate for its own host
// name issued by a private CA, as an internal API would have.
//
// For the demo it makes that CA and certificate at start (in memory; nothing
// is written but the CA certificate, -ca-out, which the app needs to trust
// the API). In production the API's certificate comes from the company's CA
// and hybrid never sees a key: the tunnel carries TLS untouched.
//
// Every answer says what the server saw of the TLS connection (SNI, the
// protocol negotiated by ALPN), so the app can check that its own handshake
// reached the API end to end.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:28443", "address to serve HTTPS on")
	name := flag.String("name", "api.internal.example", "the API's host name (its certificate's subject)")
	caOut := flag.String("ca-out", "ca.pem", "where to write the CA certificate the app must trust")
	flag.Parse()

	cert, caPEM, err := makeCertificate(*name)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*caOut, caPEM, 0o644); err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]any{
			"message": "hello from the on-premises HTTPS API at " + *addr,
			"tls": map[string]string{
				"sni":     r.TLS.ServerName,
				"alpn":    r.TLS.NegotiatedProtocol,
				"version": tls.VersionName(r.TLS.Version),
			},
			"proto":  r.Proto,
			"host":   r.Host,
			"client": r.RemoteAddr,
		})
	})
	mux.HandleFunc("GET /orders", func(w http.ResponseWriter, r *http.Request) {
		reply(w, []map[string]any{
			{"id": 1, "item": "widget", "qty": 3},
			{"id": 2, "item": "gadget", "qty": 5},
			{"id": 3, "item": "gizmo", "qty": 1},
		})
	})
	srv := &http.Server{
		Addr:              *addr,
		Handler:           mux,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		ReadHeaderTimeout: 10 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Printf("HTTPS API %s listening on %s (CA certificate in %s)", *name, *addr, *caOut)
	if err := srv.ListenAndServeTLS("", ""); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// makeCertificate returns a certificate for name signed by a fresh CA, and
// that CA's certificate in PEM.
func makeCertificate(name string) (tls.Certificate, []byte, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hybrid example internal CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("signing the API's certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), nil
}
