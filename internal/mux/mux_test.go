package mux

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	s := <-acc
	tb.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// tlsPair is tcpPair with TLS on top (a throwaway certificate).
func tlsPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	c, s := tcpPair(tb)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, DynamicRecordSizingDisabled: true})
	ts := tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}, DynamicRecordSizingDisabled: true})
	errc := make(chan error, 1)
	go func() { errc <- ts.Handshake() }()
	if err := tc.Handshake(); err != nil {
		tb.Fatal(err)
	}
	if err := <-errc; err != nil {
		tb.Fatal(err)
	}
	return tc, ts
}

// sessions returns a client and a server session over one connection.
func sessions(tb testing.TB, pair func(testing.TB) (net.Conn, net.Conn)) (*Session, *Session) {
	tb.Helper()
	c, s := pair(tb)
	cs, err := Client(c)
	if err != nil {
		tb.Fatal(err)
	}
	ss, err := Server(s)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cs.Close(); ss.Close() })
	return cs, ss
}

// streamPair opens a stream from cs and accepts it on ss.
func streamPair(t *testing.T, cs, ss *Session) (*Conn, *Conn) {
	t.Helper()
	c, err := cs.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// A stream reaches the server with its first bytes.
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	s, err := ss.Accept()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(s, b); err != nil || b[0] != 'x' {
		t.Fatalf("first byte: %q, %v", b, err)
	}
	return c, s
}

// TestStreamSemantics: each stream of a session behaves as a TCP
// connection does for the code above it.
func TestStreamSemantics(t *testing.T) {
	cs, ss := sessions(t, tcpPair)
	tests := []struct {
		name string
		run  func(t *testing.T, c, s *Conn)
	}{
		{"half-close: the peer reads EOF and may still write", func(t *testing.T, c, s *Conn) {
			c.Write([]byte("ping"))
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(s)
			if err != nil || string(got) != "ping" {
				t.Fatalf("server read %q, %v; want ping, EOF", got, err)
			}
			s.Write([]byte("pong"))
			s.Close()
			got, err = io.ReadAll(c)
			if err != nil || string(got) != "pong" {
				t.Fatalf("client read %q, %v; want pong, EOF", got, err)
			}
		}},
		{"close delivers what was written, then EOF", func(t *testing.T, c, s *Conn) {
			c.Write([]byte("last words"))
			c.Close()
			got, err := io.ReadAll(s)
			if err != nil || string(got) != "last words" {
				t.Fatalf("server read %q, %v", got, err)
			}
		}},
		{"close resets the peer's writes", func(t *testing.T, c, s *Conn) {
			c.Close()
			deadline := time.Now().Add(10 * time.Second)
			for {
				_, err := s.Write(make([]byte, 64<<10))
				if err != nil {
					if !errors.Is(err, syscall.ECONNRESET) {
						t.Fatalf("write after the peer closed: %v, want ECONNRESET", err)
					}
					return
				}
				if time.Now().After(deadline) {
					t.Fatal("writes to a closed stream still succeed after 10 s")
				}
			}
		}},
		{"a read deadline is os.ErrDeadlineExceeded and loses nothing", func(t *testing.T, c, s *Conn) {
			s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			_, err := s.Read(make([]byte, 8))
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read past deadline: %v", err)
			}
			s.SetReadDeadline(time.Time{})
			c.Write([]byte("after"))
			b := make([]byte, 5)
			if _, err := io.ReadFull(s, b); err != nil || string(b) != "after" {
				t.Fatalf("read after deadline: %q, %v", b, err)
			}
		}},
		{"addresses are the session connection's", func(t *testing.T, c, s *Conn) {
			if c.RemoteAddr().String() != s.LocalAddr().String() || s.RemoteAddr().(*net.TCPAddr) == nil {
				t.Fatalf("addresses: client remote %v, server local %v", c.RemoteAddr(), s.LocalAddr())
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, s := streamPair(t, cs, ss)
			defer c.Close()
			defer s.Close()
			tt.run(t, c, s)
		})
	}
}

// TestSessionEndResetsStreams: when the connection under a session breaks,
// every stream on it fails as a reset TCP connection would, and Accept
// returns.
func TestSessionEndResetsStreams(t *testing.T) {
	cs, ss := sessions(t, tcpPair)
	c, s := streamPair(t, cs, ss)
	accepted := make(chan error, 1)
	go func() {
		_, err := ss.Accept()
		accepted <- err
	}()
	cs.Close()
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read on a stream of an ended session: %v", err)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("write on a closed session succeeded")
	}
	select {
	case err := <-accepted:
		if err == nil {
			t.Fatal("Accept returned a stream after the session ended")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept still waiting 10 s after the session ended")
	}
}

// TestReap: an idle session ends after its idle time, a retired one as
// soon as its last stream has; a session with a stream lives on.
func TestReap(t *testing.T) {
	cs, ss := sessions(t, tcpPair)
	c, s := streamPair(t, cs, ss)
	done := make(chan struct{})
	go func() { cs.Reap(100 * time.Millisecond); close(done) }()
	time.Sleep(300 * time.Millisecond)
	if closed(cs) {
		t.Fatal("a session with a live stream was reaped")
	}
	cs.Retire()
	c.Close()
	s.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("a retired session with %d streams was not reaped", cs.Streams())
	}
	if !closed(cs) {
		t.Fatal("Reap returned, the session lives")
	}
}

// TestDialerNewSessionAfterRetireOrEnd: the dialer keeps one session while
// it is good, and dials a new one after it was retired or broke.
func TestDialerNewSessionAfterRetireOrEnd(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	var mu sync.Mutex
	var servers []*Session
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			s, _ := Server(conn)
			mu.Lock()
			servers = append(servers, s)
			mu.Unlock()
			go func() {
				for {
					st, err := s.Accept()
					if err != nil {
						return
					}
					go io.Copy(st, st)
				}
			}()
		}
	}()
	defer func() {
		mu.Lock()
		for _, s := range servers {
			s.Close()
		}
		mu.Unlock()
	}()
	d := &Dialer{Dial: func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
	}}
	echo := func() *Conn {
		t.Helper()
		c, err := d.Open(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("e"))
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := echo(), echo()
	if a.Session() != b.Session() || accepted.Load() != 1 {
		t.Fatalf("two streams took %d connections", accepted.Load())
	}
	RetireSessionOf(a)
	c := echo()
	if c.Session() == a.Session() || accepted.Load() != 2 {
		t.Fatalf("after Retire: same session %v, %d connections", c.Session() == a.Session(), accepted.Load())
	}
	// The retired session's streams still work.
	b.Write([]byte("z"))
	if _, err := io.ReadFull(b, make([]byte, 1)); err != nil {
		t.Fatalf("stream of a retired session: %v", err)
	}
	c.Session().Close()
	if e := echo(); e.Session() == c.Session() || accepted.Load() != 3 {
		t.Fatalf("after the session broke: %d connections", accepted.Load())
	}
}

// BenchmarkHop moves 64 KiB writes one way over one TLS connection (raw)
// and over a stream of a session on one (mux): what multiplexing costs a
// byte.
func BenchmarkHop(b *testing.B) {
	const chunk = 64 << 10
	run := func(b *testing.B, w io.Writer, r io.Reader) {
		b.SetBytes(chunk)
		done := make(chan struct{})
		go func() {
			io.CopyN(io.Discard, r, int64(b.N)*chunk)
			close(done)
		}()
		buf := make([]byte, chunk)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := w.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		<-done
	}
	b.Run("tls", func(b *testing.B) {
		c, s := tlsPair(b)
		run(b, c, s)
	})
	b.Run("tls+mux", func(b *testing.B) {
		cs, ss := sessions(b, tlsPair)
		c, err := cs.Open(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		c.Write([]byte("x"))
		s, err := ss.Accept()
		if err != nil {
			b.Fatal(err)
		}
		io.ReadFull(s, make([]byte, 1))
		run(b, c, s)
	})
}

// FuzzServer feeds arbitrary bytes to the relay's side of a session, as a
// hostile client would after the mux preface: nothing may panic, and the
// session must end (or go on serving) without hanging the reader.
func FuzzServer(f *testing.F) {
	// Seeds: a SYN with data, a window update, a ping, a go-away, a FIN,
	// lengths past the window, unknown versions and types.
	hdr := func(ver, typ byte, flags uint16, id, length uint32) []byte {
		return []byte{ver, typ, byte(flags >> 8), byte(flags), byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id),
			byte(length >> 24), byte(length >> 16), byte(length >> 8), byte(length)}
	}
	f.Add(append(hdr(0, 0, 1, 1, 5), "hello"...))
	f.Add(hdr(0, 1, 1, 3, 1<<20))
	f.Add(hdr(0, 2, 1, 0, 7))
	f.Add(hdr(0, 3, 0, 0, 0))
	f.Add(append(append(hdr(0, 0, 1, 1, 2), "hi"...), hdr(0, 1, 4, 1, 0)...))
	f.Add(hdr(0, 0, 1, 1, 1<<30))
	f.Add(hdr(9, 0, 1, 1, 0))
	f.Add(hdr(0, 7, 1, 1, 0))
	f.Add(append(hdr(0, 0, 1, 2, 0), hdr(0, 0, 1, 2, 0)...))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, s := net.Pipe()
		defer c.Close()
		ss, err := Server(s)
		if err != nil {
			t.Fatal(err)
		}
		defer ss.Close()
		go io.Copy(io.Discard, c) // the session's answers
		go func() {
			for {
				st, err := ss.Accept()
				if err != nil {
					return
				}
				go func() {
					st.SetReadDeadline(time.Now().Add(time.Second))
					io.Copy(io.Discard, st)
					st.Close()
				}()
			}
		}()
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		c.Write(in)
	})
}

// TestDialerWaitersKeepTheirDeadlines: while one caller's dial hangs (a
// relay that does not answer), another caller waits for it only as long
// as its own context allows, and a failed dial's error reaches the
// waiters.
func TestDialerWaitersKeepTheirDeadlines(t *testing.T) {
	release := make(chan struct{})
	var dials atomic.Int32
	d := &Dialer{Dial: func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		select {
		case <-release:
			return nil, errors.New("connection refused")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}}
	first := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := d.Open(ctx)
		first <- err
	}()
	for dials.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := d.Open(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("a waiter with 100 ms: %v after %v", err, time.Since(start))
	}
	waiter := make(chan error, 1)
	go func() {
		_, err := d.Open(context.Background())
		waiter <- err
	}()
	time.Sleep(50 * time.Millisecond)
	close(release)
	for _, ch := range []chan error{first, waiter} {
		select {
		case err := <-ch:
			if err == nil || err.Error() != "connection refused" {
				t.Fatalf("after the dial failed: %v, want its error", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a caller still waits 10 s after the dial failed")
		}
	}
}
