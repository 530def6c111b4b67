package stream

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// waitGoroutines waits until at most n goroutines run, for up to 5 s, and
// returns how many do.
func waitGoroutines(n int) int {
	end := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n && time.Now().Before(end) {
		time.Sleep(20 * time.Millisecond)
	}
	return runtime.NumGoroutine()
}

// TestIdleStreamsParked: idle streams hold no goroutine, over plain TCP
// and over TLS; each still carries bytes both ways, half-closes, and ends
// with its callback, after being parked and taken up again; one closed
// while parked ends too.
func TestIdleStreamsParked(t *testing.T) {
	if !parkingAvailable() {
		t.Fatal("no epoll set for parking")
	}
	t.Run("tcp", func(t *testing.T) { testParked(t, tcpPair) })
	t.Run("tls", func(t *testing.T) { testParked(t, tlsPair) })
}

func testParked(t *testing.T, pairOf func(*testing.T) (net.Conn, net.Conn)) {
	const streams = 50
	base := runtime.NumGoroutine()
	type pair struct{ client, server net.Conn }
	var pairs []pair
	var joints []*Joint
	var ended atomic.Int32
	for i := 0; i < streams; i++ {
		client, a := pairOf(t)
		b, server := pairOf(t)
		j := NewJoint(a, b)
		j.OnDone(func() { ended.Add(1) })
		j.Start()
		pairs, joints = append(pairs, pair{client, server}), append(joints, j)
	}
	// Busy at first: a round trip on each.
	for _, p := range pairs {
		roundTrip(t, p.client, p.server, "hello")
	}
	time.Sleep(IdleAfter)
	if n := waitGoroutines(base + 2); n > base+2 {
		t.Fatalf("%d goroutines for %d idle streams (%d before): not parked", n-base, streams, base)
	}
	// Taken up again when bytes come, either way, more than once.
	for round := 0; round < 2; round++ {
		for _, p := range pairs {
			roundTrip(t, p.client, p.server, "again")
			roundTrip(t, p.server, p.client, "back")
		}
		time.Sleep(IdleAfter)
		waitGoroutines(base + 2)
	}
	// Half-close of a parked stream: the client's EOF reaches the server,
	// whose answer still comes back.
	p := pairs[0]
	p.client.(interface{ CloseWrite() error }).CloseWrite()
	if b, err := io.ReadAll(p.server); err != nil || len(b) != 0 {
		t.Fatalf("server read %q, %v: want EOF", b, err)
	}
	if _, err := p.server.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	p.server.(interface{ CloseWrite() error }).CloseWrite()
	if b, err := io.ReadAll(p.client); err != nil || string(b) != "bye" {
		t.Fatalf("client read %q, %v", b, err)
	}
	select {
	case <-joints[0].Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the half-closed stream did not end")
	}
	// Closed while parked: every other stream ends, callback included.
	for _, j := range joints[1:] {
		j.Close()
	}
	for i, j := range joints {
		select {
		case <-j.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("stream %d did not end after Close while parked", i)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for ended.Load() != streams && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if ended.Load() != streams {
		t.Fatalf("%d of %d OnDone callbacks ran", ended.Load(), streams)
	}
	if n := waitGoroutines(base + 1); n > base+1 {
		t.Fatalf("%d goroutines left after every stream ended (%d before)", n, base)
	}
	idle.mu.Lock()
	left := len(idle.halves)
	idle.mu.Unlock()
	if left != 0 {
		t.Fatalf("the parker still holds %d halves", left)
	}
}

// roundTrip sends msg from one end and reads it at the other.
func roundTrip(t *testing.T, from, to net.Conn, msg string) {
	t.Helper()
	if _, err := from.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	to.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(to, b); err != nil || string(b) != msg {
		t.Fatalf("read %q, %v: want %q", b, err, msg)
	}
	to.SetReadDeadline(time.Time{})
}

// tlsPair returns the two ends of a loopback TLS connection (handshake
// done), with a throwaway certificate.
func tlsPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	c, s := tcpPair(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	ts := tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}})
	errc := make(chan error, 1)
	go func() { errc <- ts.Handshake() }()
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return tc, ts
}
