package integration

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// The sink/source: a byte-stream resource for transfer tests. Each connection
// starts with a one-byte command from the client:
//
//	'U'             upload: the server reads to EOF, hashing with SHA-256, then
//	                writes the 32-byte digest and the byte count (uint64, big
//	                endian) and closes.
//	'D' + uint64 n  download: the server writes n bytes of the deterministic
//	                stream (ChaCha8 seeded with streamSeed), then half-closes
//	                (CloseWrite), drains the client to EOF and closes.
//	'E'             echo: the server copies everything back until EOF, then
//	                half-closes.
//
// Only byte transparency and half-close are needed, so the client helpers work
// the same directly against the server and through a hybrid tunnel.

// streamSeed seeds the download stream; the client recomputes it locally.
var streamSeed = [32]byte{'h', 'y', 'b', 'r', 'i', 'd', '-', 's', 't', 'r', 'e', 'a', 'm'}

// uploadSeed seeds the data clients upload (any data would do; a different
// stream from the download one catches crossed wires).
var uploadSeed = [32]byte{'h', 'y', 'b', 'r', 'i', 'd', '-', 'u', 'p'}

// transferDeadline bounds one transfer of n bytes: a minute plus 2 MiB/s,
// which is far below anything loopback does even under -race.
func transferDeadline(n int64) time.Time {
	return time.Now().Add(time.Minute + time.Duration(n/(2<<20))*time.Second)
}

// startSinkSource starts the sink/source on 127.0.0.1 and returns its address.
// It is shut down, and its connections closed, when the test ends; per-
// connection server errors are logged then (clients see them as hash or count
// mismatches anyway).
func startSinkSource(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("startSinkSource: %v", err)
	}
	s := &sinkSource{l: l, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		s.close()
		for _, e := range s.errs {
			t.Logf("sink/source: %v", e)
		}
	})
	return l.Addr().String()
}

type sinkSource struct {
	l  net.Listener
	wg sync.WaitGroup

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	errs   []error
}

func (s *sinkSource) serve() {
	defer s.wg.Done()
	for {
		c, err := s.l.Accept()
		if err != nil {
			return // listener closed
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			err := s.handle(c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			if err != nil && !s.closed {
				s.errs = append(s.errs, fmt.Errorf("%s: %w", c.RemoteAddr(), err))
			}
			s.mu.Unlock()
		}()
	}
}

func (s *sinkSource) close() {
	s.mu.Lock()
	s.closed = true
	s.l.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *sinkSource) handle(c net.Conn) error {
	var cmd [1]byte
	if _, err := io.ReadFull(c, cmd[:]); err != nil {
		return fmt.Errorf("reading command: %w", err)
	}
	switch cmd[0] {
	case 'U':
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			return fmt.Errorf("upload after %d bytes: %w", n, err)
		}
		var reply [40]byte
		copy(reply[:32], h.Sum(nil))
		binary.BigEndian.PutUint64(reply[32:], uint64(n))
		if _, err := c.Write(reply[:]); err != nil {
			return fmt.Errorf("upload reply: %w", err)
		}
		return nil
	case 'D':
		var nb [8]byte
		if _, err := io.ReadFull(c, nb[:]); err != nil {
			return fmt.Errorf("download size: %w", err)
		}
		n := int64(binary.BigEndian.Uint64(nb[:]))
		if w, err := io.Copy(c, io.LimitReader(rand.NewChaCha8(streamSeed), n)); err != nil {
			return fmt.Errorf("download after %d of %d bytes: %w", w, n, err)
		}
		if err := closeWrite(c); err != nil {
			return fmt.Errorf("download close-write: %w", err)
		}
		// Let the client finish reading before we close; it closes or
		// half-closes when done.
		_, _ = io.Copy(io.Discard, c)
		return nil
	case 'E':
		if n, err := io.Copy(c, c); err != nil {
			return fmt.Errorf("echo after %d bytes: %w", n, err)
		}
		return closeWrite(c)
	default:
		return fmt.Errorf("unknown command %q", cmd[0])
	}
}

func closeWrite(c net.Conn) error {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return fmt.Errorf("%T cannot half-close", c)
	}
	return cw.CloseWrite()
}

// uploadAndHash sends n bytes to the sink at addr (a 'U' connection) and
// returns the SHA-256 of what it sent and what the sink reports it received;
// a short count fails the test. Call it from the test goroutine; from other
// goroutines use uploadAndHashErr.
func uploadAndHash(t testing.TB, addr string, n int64) (sent, got [32]byte) {
	t.Helper()
	sent, got, err := uploadAndHashErr(addr, n)
	if err != nil {
		t.Fatalf("uploadAndHash %s %d bytes: %v", addr, n, err)
	}
	return sent, got
}

// uploadAndHashErr is uploadAndHash returning errors (count mismatch included).
func uploadAndHashErr(addr string, n int64) (sent, got [32]byte, err error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return sent, got, err
	}
	defer c.Close()
	c.SetDeadline(transferDeadline(n))
	h := sha256.New()
	w := io.MultiWriter(c, h)
	if _, err := c.Write([]byte{'U'}); err != nil {
		return sent, got, fmt.Errorf("command: %w", err)
	}
	if w, err := io.Copy(w, io.LimitReader(rand.NewChaCha8(uploadSeed), n)); err != nil {
		return sent, got, fmt.Errorf("sending after %d bytes: %w", w, err)
	}
	copy(sent[:], h.Sum(nil))
	if err := closeWrite(c); err != nil {
		return sent, got, fmt.Errorf("close-write: %w", err)
	}
	var reply [40]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		return sent, got, fmt.Errorf("reading digest: %w", err)
	}
	copy(got[:], reply[:32])
	if cnt := int64(binary.BigEndian.Uint64(reply[32:])); cnt != n {
		return sent, got, fmt.Errorf("sink received %d bytes, sent %d", cnt, n)
	}
	return sent, got, nil
}

// downloadAndHash asks the source at addr for n bytes ('D') and reads to EOF;
// it returns the SHA-256 of the expected stream (computed locally), of what
// arrived, and how many bytes arrived. I/O errors fail the test; a mismatch is
// for the caller to judge. From other goroutines use downloadAndHashErr.
func downloadAndHash(t testing.TB, addr string, n int64) (want, got [32]byte, count int64) {
	t.Helper()
	want, got, count, err := downloadAndHashErr(addr, n)
	if err != nil {
		t.Fatalf("downloadAndHash %s %d bytes: %v (received %d)", addr, n, err, count)
	}
	return want, got, count
}

// downloadAndHashErr is downloadAndHash returning errors.
func downloadAndHashErr(addr string, n int64) (want, got [32]byte, count int64, err error) {
	want = expectedStreamHash(n)
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return want, got, 0, err
	}
	defer c.Close()
	c.SetDeadline(transferDeadline(n))
	var req [9]byte
	req[0] = 'D'
	binary.BigEndian.PutUint64(req[1:], uint64(n))
	if _, err := c.Write(req[:]); err != nil {
		return want, got, 0, fmt.Errorf("request: %w", err)
	}
	h := sha256.New()
	count, err = io.Copy(h, c)
	copy(got[:], h.Sum(nil))
	if err != nil {
		return want, got, count, fmt.Errorf("receiving: %w", err)
	}
	// Tell the source we are done so it closes without a reset.
	_ = closeWrite(c)
	return want, got, count, nil
}

// echoAndHash sends n bytes to the echo service at addr ('E') while reading
// the echo concurrently, half-closes, and returns the SHA-256 of what it sent
// and of what came back. I/O errors fail the test. From other goroutines use
// echoAndHashErr.
func echoAndHash(t testing.TB, addr string, n int64) (sent, got [32]byte) {
	t.Helper()
	sent, got, err := echoAndHashErr(addr, n)
	if err != nil {
		t.Fatalf("echoAndHash %s %d bytes: %v", addr, n, err)
	}
	return sent, got
}

// echoAndHashErr is echoAndHash returning errors (a short echo included).
func echoAndHashErr(addr string, n int64) (sent, got [32]byte, err error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return sent, got, err
	}
	defer c.Close()
	c.SetDeadline(transferDeadline(n))
	type result struct {
		n   int64
		err error
	}
	rx := make(chan result, 1)
	var gh hash.Hash = sha256.New()
	go func() {
		cnt, err := io.Copy(gh, c)
		rx <- result{cnt, err}
	}()
	sh := sha256.New()
	_, werr := c.Write([]byte{'E'})
	if werr == nil {
		_, werr = io.Copy(io.MultiWriter(c, sh), io.LimitReader(rand.NewChaCha8(uploadSeed), n))
	}
	if werr == nil {
		werr = closeWrite(c)
	}
	if werr != nil {
		c.Close() // unblock the reader
	}
	r := <-rx
	copy(sent[:], sh.Sum(nil))
	copy(got[:], gh.Sum(nil))
	switch {
	case werr != nil:
		return sent, got, fmt.Errorf("sending: %w", werr)
	case r.err != nil:
		return sent, got, fmt.Errorf("receiving after %d bytes: %w", r.n, r.err)
	case r.n != n:
		return sent, got, fmt.Errorf("echo returned %d bytes, sent %d", r.n, n)
	}
	return sent, got, nil
}

// expectedStreamHash is the SHA-256 of the first n bytes of the download stream.
func expectedStreamHash(n int64) [32]byte {
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(rand.NewChaCha8(streamSeed), n)); err != nil {
		panic(err) // cannot happen: neither side fails
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}
