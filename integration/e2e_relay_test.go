package integration

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wire"
)

// garbageKind is one way of talking nonsense to a native relay port. send
// writes it; check reads the relay's answer and says what was wrong with it.
type garbageKind struct {
	name string
	send func(c net.Conn) error
	// wantBadRequest: the relay should answer a RESULT with BadRequest
	// before closing (it understood the preface, then got nonsense).
	wantBadRequest bool
}

var garbageKinds = []garbageKind{
	{name: "random bytes", send: func(c net.Conn) error {
		b := make([]byte, 512)
		rand.Read(b)
		b[0] = 0xfe // never the preface
		_, err := c.Write(b)
		return err
	}},
	{name: "http request", send: func(c net.Conn) error {
		_, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: relay.test\r\nUser-Agent: e2e\r\n\r\n")
		return err
	}},
	{name: "oversize frame header", wantBadRequest: true, send: func(c net.Conn) error {
		_, err := c.Write(append([]byte(wire.Preface), byte(wire.TypeOpen), 0xff, 0xff, 0xff, 0xff))
		return err
	}},
	{name: "malformed frame", wantBadRequest: true, send: func(c net.Conn) error {
		// An OPEN whose first string claims 60000 bytes of a 3-byte payload.
		_, err := c.Write(append([]byte(wire.Preface), byte(wire.TypeOpen), 0, 0, 0, 3, 0xea, 0x60, 'x'))
		return err
	}},
	{name: "silent close", send: func(c net.Conn) error { return nil }},
}

// garbageOnce connects to addr, sends kind and requires the relay to close
// the connection promptly (having answered BadRequest when it should).
func garbageOnce(addr string, kind garbageKind) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	if kind.name == "silent close" {
		return nil // the deferred Close is the test
	}
	c.SetDeadline(time.Now().Add(8 * time.Second)) // below the relay's 10 s handshake deadline
	if err := kind.send(c); err != nil && !isReset(err) {
		return fmt.Errorf("send: %w", err)
	}
	if kind.wantBadRequest {
		f, err := wire.Read(c)
		if err != nil {
			return fmt.Errorf("want a RESULT frame, got %w", err)
		}
		r, ok := f.(*wire.Result)
		if !ok || r.Code != status.BadRequest {
			return fmt.Errorf("want RESULT bad request, got %s %+v", f.Type(), f)
		}
	}
	n, err := io.Copy(io.Discard, c)
	switch {
	case n > 0:
		return fmt.Errorf("relay sent %d unexpected bytes", n)
	case err == nil, isReset(err):
		return nil // closed by the relay
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("relay kept the connection open for 8 s")
	default:
		return err
	}
}

func TestE2EGarbageHandshake(t *testing.T) {
	resource := startSinkSource(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "echo", Endpoint: resource}}})
	e2eEcho(t, tun.Listen["echo"], 1<<10)
	agentMark := tun.Agent.Mark()

	ports := map[string]string{
		"control": "127.0.0.1:" + strconv.Itoa(tun.Control),
		"data":    "127.0.0.1:" + strconv.Itoa(tun.Data),
	}

	// A slow handshake per port: the preface and half a header, then silence.
	// The relay must drop it at its handshake deadline, not keep it forever.
	var slow sync.WaitGroup
	for name, addr := range ports {
		slow.Add(1)
		go func() {
			defer slow.Done()
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				t.Errorf("slow %s: dial: %v", name, err)
				return
			}
			defer c.Close()
			start := time.Now()
			c.Write(append([]byte(wire.Preface), byte(wire.TypeHello), 0))
			c.SetDeadline(time.Now().Add(30 * time.Second))
			_, err = io.Copy(io.Discard, c)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("slow %s handshake: the relay still holds it after 30 s", name)
				return
			}
			t.Logf("slow %s handshake dropped by the relay after %v", name, time.Since(start).Round(time.Millisecond))
		}()
	}

	const rounds = 50
	type job struct {
		port, addr string
		kind       garbageKind
	}
	jobs := make(chan job)
	var mu sync.Mutex
	failures := map[string]int{}
	var firstErr []string
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if err := garbageOnce(j.addr, j.kind); err != nil {
					key := j.port + "/" + j.kind.name
					mu.Lock()
					if failures[key] == 0 {
						firstErr = append(firstErr, key+": "+err.Error())
					}
					failures[key]++
					mu.Unlock()
				}
			}
		}()
	}
	start := time.Now()
	for range rounds {
		for name, addr := range ports {
			for _, k := range garbageKinds {
				jobs <- job{name, addr, k}
			}
		}
	}
	close(jobs)
	wg.Wait()
	t.Logf("%d garbage connections in %v", rounds*len(ports)*len(garbageKinds), time.Since(start).Round(time.Millisecond))
	if len(failures) > 0 {
		t.Errorf("relay mishandled garbage: %v; first error of each:\n%s", failures, strings.Join(firstErr, "\n"))
	}
	slow.Wait()

	if tun.Relay.Exited() {
		t.Fatalf("relay died: %s", tun.Relay.exitDesc())
	}
	// The tunnel is unharmed: the agent's control channel never dropped, and
	// a stream still goes through.
	e2eEcho(t, tun.Listen["echo"], 256<<10)
	if out := tun.Agent.Output()[agentMark:]; strings.Contains(out, "relay connection lost") {
		t.Errorf("the agent lost its relay connection during the garbage:\n%s", tailLines(out, 20))
	}
}

// TestE2EPipelinedOpen: a sender that writes its OPEN and its first bytes
// (and even its end of stream) in one go, before the relay has answered,
// loses nothing in the hand-over from handshake to raw bytes.
func TestE2EPipelinedOpen(t *testing.T) {
	resource := startSinkSource(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "echo", Endpoint: resource}}})
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(tun.Data), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	payload := strings.Repeat("pipelined bytes ", 4096) // 64 KiB
	msg := wire.Append([]byte(wire.Preface), &wire.Open{HC: "echo", Token: e2eToken("echo", "apps", tun.Keys["echo"].Apps)})
	msg = append(msg, 'E')
	msg = append(msg, payload...)
	// The reader runs concurrently: 64 KiB may not fit the socket buffers
	// until the relay pairs the stream and starts copying.
	type result struct {
		f    wire.Frame
		echo []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		f, err := wire.Read(c)
		if err != nil {
			done <- result{err: fmt.Errorf("reading the relay's answer: %w", err)}
			return
		}
		b, err := io.ReadAll(c)
		done <- result{f: f, echo: b, err: err}
	}()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	closeWrite(c)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if res, ok := r.f.(*wire.Result); !ok || res.Code != status.OK {
		t.Fatalf("relay answered %s %+v, want RESULT ok", r.f.Type(), r.f)
	}
	if string(r.echo) != payload {
		t.Fatalf("echo of the pipelined bytes: got %d bytes, want %d (equal: %v)", len(r.echo), len(payload), string(r.echo) == payload)
	}
}
