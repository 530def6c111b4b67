package wsconn

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/stream"
)

// tcpPair returns a client and a server Conn over loopback TCP.
func tcpPair(t *testing.T) (client, server *Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc := <-ch
	client, server = NewConn(cc, nil, false), NewConn(sc, nil, true)
	t.Cleanup(func() { client.raw.Close(); server.raw.Close() })
	return client, server
}

func TestMask(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	for n := 0; n < 40; n++ {
		for start := 0; start < 4; start++ {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(i * 7)
			}
			want := bytes.Clone(b)
			for i := range want {
				want[i] ^= key[(start+i)&3]
			}
			// in two pieces, to check the returned position
			half := n / 3
			pos := maskBytes(key, start, b[:half])
			maskBytes(key, pos, b[half:])
			if !bytes.Equal(b, want) {
				t.Fatalf("n=%d start=%d: %v, want %v", n, start, b, want)
			}
		}
	}
}

func TestStreamBothWays(t *testing.T) {
	for _, dir := range []string{"client-to-server", "server-to-client"} {
		t.Run(dir, func(t *testing.T) {
			c, s := tcpPair(t)
			w, r := c, s
			if dir == "server-to-client" {
				w, r = s, c
			}
			data := make([]byte, 3<<20+17)
			for i := range data {
				data[i] = byte(i * 31)
			}
			go func() {
				for p := data; len(p) > 0; {
					n := min(len(p), 100000)
					w.Write(p[:n])
					p = p[n:]
				}
				w.CloseWrite()
			}()
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read %d bytes, %v", len(got), err)
			}
			if code, _ := r.PeerClose(); code != CloseNormal {
				t.Fatalf("peer close %d", code)
			}
		})
	}
}

func TestMessagesAndControl(t *testing.T) {
	c, s := tcpPair(t)
	go func() {
		c.WriteMessage(OpText, []byte("hello"))
		c.Ping([]byte("p"))
		mw, _ := c.NewMessageWriter(OpBinary)
		mw.Write(bytes.Repeat([]byte{1}, 70000))
		c.Ping(nil) // a control frame between fragments is allowed
		mw.Write(bytes.Repeat([]byte{2}, 30000))
		mw.Close()
		c.WriteMessage(OpText, []byte("bye"))
		c.WriteClose(4000, "done here")
	}()
	want := []struct {
		op  byte
		len int
	}{{OpText, 5}, {OpBinary, 100000}, {OpText, 3}}
	for i, w := range want {
		op, b, err := s.ReadMessage(1 << 20)
		if err != nil || op != w.op || len(b) != w.len {
			t.Fatalf("message %d: op %d len %d err %v", i, op, len(b), err)
		}
	}
	_, _, err := s.ReadMessage(1 << 20)
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != 4000 || ce.Reason != "done here" || !errors.Is(err, io.EOF) {
		t.Fatalf("close: %v", err)
	}
	// The pings were answered: the client sees two pongs then our close.
	s.WriteClose(CloseNormal, "")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client read: %v", err)
	}
}

func TestTooBigAndProtocolErrors(t *testing.T) {
	c, s := tcpPair(t)
	go c.WriteMessage(OpBinary, make([]byte, 2000))
	if _, _, err := s.ReadMessage(1000); !errors.Is(err, ErrTooBig) {
		t.Fatalf("oversize: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if code, _ := c.PeerClose(); err != io.EOF || code != CloseTooBig {
		t.Fatalf("client saw %v, close %d", err, code)
	}

	for _, tc := range []struct {
		name  string
		bytes []byte
	}{
		{"unmasked from client", []byte{0x82, 0x01, 'x'}},
		{"reserved bit", []byte{0xc2, 0x81, 0, 0, 0, 0, 'x'}},
		{"unknown opcode", []byte{0x83, 0x80, 0, 0, 0, 0}},
		{"fragmented ping", []byte{0x09, 0x80, 0, 0, 0, 0}},
		{"long ping", append([]byte{0x89, 0xfe, 0, 200, 0, 0, 0, 0}, make([]byte, 200)...)},
		{"continuation first", []byte{0x80, 0x80, 0, 0, 0, 0}},
		{"one-byte close", []byte{0x88, 0x81, 0, 0, 0, 0, 3}},
		{"close code 1006", []byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xee}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			srv := NewConn(b, nil, true)
			go func() { a.Write(tc.bytes); io.Copy(io.Discard, a) }()
			_, err := io.ReadAll(srv)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v", err)
			}
		})
	}
}

// TestRelay: frames cross a relay as they were sent: types, boundaries,
// close codes, and half-close (one side's close does not stop the other).
func TestRelay(t *testing.T) {
	sender, relayA := tcpPair(t)
	listener, relayB := tcpPair(t)
	done := make(chan stream.Counts, 1)
	go func() { done <- stream.Pipe(relayA, relayB) }() // io.Copy both ways: ReadFrom relays frames

	go func() {
		sender.WriteMessage(OpText, []byte("hello"))
		sender.WriteMessage(OpBinary, make([]byte, 100<<10))
		sender.WriteMessage(OpText, []byte("world"))
		sender.WriteClose(CloseNormal, "Shutdown") // .NET's ShutdownAsync
	}()
	for i, want := range []struct {
		op  byte
		len int
	}{{OpText, 5}, {OpBinary, 100 << 10}, {OpText, 5}} {
		op, b, err := listener.ReadMessage(1 << 20)
		if err != nil || op != want.op || len(b) != want.len {
			t.Fatalf("message %d: op %d len %d %v", i, op, len(b), err)
		}
	}
	_, _, err := listener.ReadMessage(1 << 20)
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != CloseNormal || ce.Reason != "Shutdown" {
		t.Fatalf("listener saw %v", err)
	}
	// After the sender's close the listener still answers, then closes
	// with its own code.
	listener.WriteMessage(OpText, []byte("reply after shutdown"))
	listener.WriteClose(4001, "listener done")
	op, b, err := sender.ReadMessage(1 << 20)
	if err != nil || op != OpText || string(b) != "reply after shutdown" {
		t.Fatalf("sender read %q %v", b, err)
	}
	_, _, err = sender.ReadMessage(1 << 20)
	if !errors.As(err, &ce) || ce.Code != 4001 || ce.Reason != "listener done" {
		t.Fatalf("sender saw %v", err)
	}
	select {
	case n := <-done:
		if n.AToB != 100<<10+10 || n.BToA != 20 {
			t.Fatalf("counts %+v", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not end after both closes")
	}
}

func TestHandshake(t *testing.T) {
	got := make(chan *Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := CheckUpgrade(r); err != nil {
			// A custom reason phrase, written by hand.
			conn, brw, _ := w.(http.Hijacker).Hijack()
			brw.WriteString("HTTP/1.1 451 Not Here, Sorry\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno")
			brw.Flush()
			conn.Close()
			return
		}
		offered := Protocols(r.Header)
		Upgrade(w, r, UpgradeOptions{Subprotocol: offered[len(offered)-1]}, func(c *Conn) {
			c.WriteMessage(OpText, []byte("hi"))
			got <- c
			io.Copy(io.Discard, c)
		})
	}))
	defer srv.Close()
	u, _ := url.Parse("ws" + strings.TrimPrefix(srv.URL, "http") + "/x")
	conn, _ := net.Dial("tcp", srv.Listener.Addr().String())
	c, err := Dial(context.Background(), conn, u, DialOptions{Protocols: []string{"a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Subprotocol() != "b" {
		t.Fatalf("subprotocol %q", c.Subprotocol())
	}
	if _, b, err := c.ReadMessage(10); err != nil || string(b) != "hi" {
		t.Fatalf("first message: %q %v", b, err)
	}
	c.Close()
	s := <-got
	if s.Subprotocol() != "b" {
		t.Fatalf("server subprotocol %q", s.Subprotocol())
	}

	// A plain GET is refused, with its reason phrase kept.
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 451 || resp.Status != "451 Not Here, Sorry" {
		t.Fatalf("plain GET: %s", resp.Status)
	}
	// And a refused WebSocket handshake reports status and phrase.
	conn, _ = net.Dial("tcp", srv.Listener.Addr().String())
	req, _ := http.NewRequest("GET", srv.URL, nil)
	_ = req
	bad := &url.URL{Scheme: "ws", Host: srv.Listener.Addr().String(), Path: "/"}
	hj := &badVersion{Conn: conn}
	_, err = Dial(context.Background(), hj, bad, DialOptions{})
	var he *HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 451 || ReasonPhrase(he.Status) != "Not Here, Sorry" || string(he.Body) != "no" {
		t.Fatalf("refused handshake: %v", err)
	}
}

// badVersion rewrites the handshake's version header, so the server
// refuses it.
type badVersion struct {
	net.Conn
	once sync.Once
}

func (b *badVersion) Write(p []byte) (int, error) {
	n := len(p)
	b.once.Do(func() {
		p = bytes.Replace(p, []byte("Sec-WebSocket-Version: 13"), []byte("Sec-WebSocket-Version: 99"), 1)
	})
	_, err := b.Conn.Write(p)
	return n, err
}

// FuzzFrames: whatever bytes a peer sends, reading neither panics nor
// buffers more than asked, on either side, in each reading style.
func FuzzFrames(f *testing.F) {
	f.Add([]byte{0x81, 0x85, 1, 2, 3, 4, 'h' ^ 1, 'e' ^ 2, 'l' ^ 3, 'l' ^ 4, 'o' ^ 1}, true)
	f.Add([]byte{0x01, 0x02, 'h', 'e', 0x89, 0x00, 0x80, 0x01, 'y', 0x88, 0x02, 0x03, 0xe8}, false)
	f.Add([]byte{0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0}, false)
	f.Add([]byte{0x88, 0x00}, false)
	f.Fuzz(func(t *testing.T, in []byte, server bool) {
		for mode := 0; mode < 3; mode++ {
			a, b := net.Pipe()
			c := NewConn(b, bufio.NewReader(bytes.NewReader(in)), server)
			go io.Copy(io.Discard, a) // pongs and closes we write
			switch mode {
			case 0:
				io.Copy(io.Discard, io.LimitReader(c, 1<<20))
			case 1:
				for i := 0; i < 100; i++ {
					if _, _, err := c.ReadMessage(4096); err != nil {
						break
					}
				}
			case 2:
				for i := 0; i < 100; i++ {
					_, r, err := c.NextReader()
					if err != nil {
						break
					}
					io.Copy(io.Discard, io.LimitReader(r, 1<<20))
				}
			}
			c.Close()
			a.Close()
		}
	})
}
