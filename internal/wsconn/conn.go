package wsconn

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// closeWriteTimeout bounds the write of a close frame on Close: a peer that
// stopped reading must not hold a closing connection open.
const closeWriteTimeout = 2 * time.Second

// chunk is the size of the reused buffer for masking and relaying payloads.
const chunk = 64 << 10

// readBufSize sizes a connection's read buffer: frame headers and small
// frames go through it; large payloads are read past it, straight into
// the caller's buffer (bufio does so for reads at least its size). An
// idle connection holds it, so it is small.
const readBufSize = 4 << 10

// Conn is one WebSocket connection after its opening handshake. Read and
// Write may be called concurrently with each other; only one goroutine may
// read at a time. Every write is one whole frame under the write lock, so
// writes from several goroutines (a stream's data, our pings, a close)
// never interleave on the wire.
type Conn struct {
	raw    net.Conn
	br     *bufio.Reader
	server bool // peer frames are masked, ours are not

	subprotocol string
	request     *http.Request // server side: the handshake request

	// Read side, owned by the one reader.
	hbuf      [14]byte
	cur       header // the data frame being read
	remaining int64  // payload bytes of cur still to read
	maskPos   int
	inMessage bool // a fragmented data message is in progress
	msgOp     byte // its opcode (text or binary)
	readEOF   bool // a close frame was read
	readErr   error

	last    atomic.Int64 // unix nanos of the last frame header read
	onFrame atomic.Pointer[func()]

	wsem       chan struct{} // the write lock (a channel, so Close can give up waiting)
	wbuf       []byte        // reused: a frame header
	sentClose  bool
	writingMsg bool // a MessageWriter is mid-message

	mu          sync.Mutex
	closeOnce   sync.Once
	closeErr    error
	closeCode   int // the peer's close, once read
	closeReason string
	onClose     int // code Close sends; 0 = CloseNormal
	onReason    string
}

func newConn(raw net.Conn, br *bufio.Reader, server bool) *Conn {
	c := &Conn{raw: raw, br: br, server: server, wsem: make(chan struct{}, 1)}
	c.last.Store(time.Now().UnixNano())
	return c
}

// NewConn wraps an established WebSocket connection: raw is the network
// connection, br reads from it (and may hold bytes already read past the
// handshake; nil for none), server says which side we are. Tests and
// fuzzers use it; everything else gets a Conn from Upgrade or Dial.
func NewConn(raw net.Conn, br *bufio.Reader, server bool) *Conn {
	if br == nil {
		br = bufio.NewReaderSize(raw, readBufSize)
	}
	return newConn(raw, br, server)
}

// Subprotocol is the subprotocol the handshake agreed on, or "".
func (c *Conn) Subprotocol() string { return c.subprotocol }

// Request is the handshake request (server side), or nil.
func (c *Conn) Request() *http.Request { return c.request }

// Idle is the time since the last frame arrived (pings and pongs count).
func (c *Conn) Idle() time.Duration { return time.Since(time.Unix(0, c.last.Load())) }

// PeerClose returns the close frame the peer sent: (0, "") while none was
// read, CloseNoStatus for a close frame without a code.
func (c *Conn) PeerClose() (code int, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeCode, c.closeReason
}

// SetCloseStatus sets the code and reason Close sends if this side has not
// sent a close frame yet (default CloseNormal).
func (c *Conn) SetCloseStatus(code int, reason string) {
	c.mu.Lock()
	c.onClose, c.onReason = code, reason
	c.mu.Unlock()
}

// ---------------------------------------------------------------- reading

// nextHeader reads the next frame header.
func (c *Conn) nextHeader() (header, error) {
	h, err := readHeader(c.br, &c.hbuf, c.server)
	if err == nil {
		c.last.Store(time.Now().UnixNano())
		if f := c.onFrame.Load(); f != nil {
			(*f)()
		}
	}
	return h, err
}

// OnFrame has f called whenever a frame arrives (pings and pongs too), on
// the reading goroutine: a session's sign of life.
func (c *Conn) OnFrame(f func()) { c.onFrame.Store(&f) }

// readControl reads (and unmasks) the payload of control frame h, at most
// 125 bytes; the caller acts on it.
func (c *Conn) readControl(h header) ([]byte, error) {
	p := make([]byte, h.length)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return nil, noEOF(err)
	}
	if h.masked {
		maskBytes(h.mask, 0, p)
	}
	return p, nil
}

// fail records a read error; a protocol violation is answered with a
// close frame (1002, or 1009 for an oversize message) before the caller
// sees it.
func (c *Conn) fail(err error) error {
	if c.readErr == nil {
		c.readErr = err
		switch {
		case errors.Is(err, ErrTooBig):
			c.WriteClose(CloseTooBig, "message too big")
		case errors.Is(err, ErrProtocol):
			c.WriteClose(CloseProtocolError, "protocol error")
		}
	}
	return c.readErr
}

// advance reads frames until a data frame's header: the one starting a
// message when newMessage, else the next fragment of the current one (a
// frame of the wrong kind is a protocol error). Control frames are handled
// on the way: pings answered, pongs dropped, a close recorded (then io.EOF;
// PeerClose tells its code).
func (c *Conn) advance(newMessage bool) (header, error) {
	for {
		if c.readErr != nil {
			return header{}, c.readErr
		}
		if c.readEOF {
			return header{}, io.EOF
		}
		h, err := c.nextHeader()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // the TCP connection ended without a close frame
			}
			return header{}, c.fail(err)
		}
		switch h.op {
		case OpPing:
			p, err := c.readControl(h)
			if err != nil {
				return header{}, c.fail(err)
			}
			c.writeFrame(true, OpPong, p) // best effort: a failed write shows up on the next read
			continue
		case OpPong:
			if _, err := c.readControl(h); err != nil {
				return header{}, c.fail(err)
			}
			continue
		case OpClose:
			p, err := c.readControl(h)
			if err != nil {
				return header{}, c.fail(err)
			}
			code, reason, err := parseClose(p)
			if err != nil {
				return header{}, c.fail(err)
			}
			c.mu.Lock()
			c.closeCode, c.closeReason = code, reason
			c.mu.Unlock()
			c.readEOF = true
			return header{}, io.EOF
		case OpText, OpBinary:
			if c.inMessage {
				return header{}, c.fail(fmt.Errorf("%w: new message before the last one ended", ErrProtocol))
			}
			if !newMessage {
				return header{}, c.fail(fmt.Errorf("%w: unexpected new message", ErrProtocol))
			}
			c.msgOp = h.op
		case OpContinuation:
			if !c.inMessage {
				return header{}, c.fail(fmt.Errorf("%w: continuation without a message", ErrProtocol))
			}
		}
		c.inMessage = !h.fin
		c.cur, c.remaining, c.maskPos = h, h.length, 0
		return h, nil
	}
}

// readPayload reads from the current data frame's payload.
func (c *Conn) readPayload(p []byte) (int, error) {
	if int64(len(p)) > c.remaining {
		p = p[:c.remaining]
	}
	n, err := c.br.Read(p)
	if n > 0 {
		c.remaining -= int64(n)
		if c.cur.masked {
			c.maskPos = maskBytes(c.cur.mask, c.maskPos, p[:n])
		}
	}
	if err != nil {
		return n, c.fail(noEOF(err))
	}
	return n, nil
}

// Read reads the payload bytes of data frames as one byte stream: message
// boundaries and types are not kept (a stream's view). It returns io.EOF
// once the peer's close frame has arrived; PeerClose then tells its code.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for c.remaining == 0 {
		if _, err := c.advance(!c.inMessage); err != nil {
			return 0, err
		}
	}
	return c.readPayload(p)
}

// NextReader waits for the next data message and returns its opcode (text
// or binary) and a reader of its payload, across fragments, ending with
// io.EOF at the message's end. The reader must be drained (or abandoned
// with the Conn) before the next call. A close from the peer returns a
// *CloseError (which errors.Is io.EOF).
func (c *Conn) NextReader() (byte, io.Reader, error) {
	for c.inMessage || c.remaining > 0 { // drain what the caller left
		if c.remaining > 0 {
			if _, err := io.CopyN(io.Discard, readerFunc(c.readPayload), c.remaining); err != nil {
				return 0, nil, err
			}
			continue
		}
		if _, err := c.advance(false); err != nil {
			return 0, nil, c.asCloseError(err)
		}
	}
	h, err := c.advance(true)
	if err != nil {
		return 0, nil, c.asCloseError(err)
	}
	return h.op, &messageReader{c: c, last: h.fin}, nil
}

func (c *Conn) asCloseError(err error) error {
	if err == io.EOF && c.readEOF {
		code, reason := c.PeerClose()
		return &CloseError{Code: code, Reason: reason}
	}
	return err
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// messageReader reads one message's payload.
type messageReader struct {
	c    *Conn
	last bool // the current frame is the message's last
	done bool
}

func (m *messageReader) Read(p []byte) (int, error) {
	if m.done {
		return 0, io.EOF
	}
	c := m.c
	for c.remaining == 0 {
		if m.last {
			m.done = true
			return 0, io.EOF
		}
		h, err := c.advance(false)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // closed mid-message
			}
			return 0, err
		}
		m.last = h.fin
	}
	if len(p) == 0 {
		return 0, nil
	}
	return c.readPayload(p)
}

// ReadMessage reads the next whole data message, of at most max bytes: a
// larger one fails with ErrTooBig, after a 1009 close frame to the peer
// (control channels need a bound; a peer may not make us buffer more).
func (c *Conn) ReadMessage(max int64) (byte, []byte, error) {
	op, r, err := c.NextReader()
	if err != nil {
		return 0, nil, err
	}
	var b []byte
	if mr := r.(*messageReader); mr.last && c.remaining <= max {
		b = make([]byte, 0, c.remaining) // the common case: one frame, one allocation
	}
	b, err = readAllMax(r, b, max)
	if errors.Is(err, ErrTooBig) {
		return 0, nil, c.fail(err)
	}
	if err != nil {
		return 0, nil, err
	}
	return op, b, nil
}

func readAllMax(r io.Reader, b []byte, max int64) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			if int64(len(b)) > max {
				break
			}
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			if int64(len(b)) > max {
				break
			}
			return b, nil
		}
		if err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: over %d bytes", ErrTooBig, max)
}

// ---------------------------------------------------------------- writing

var errCloseTimeout = errors.New("websocket: close frame not written: writer busy")

func (c *Conn) lock()   { c.wsem <- struct{}{} }
func (c *Conn) unlock() { <-c.wsem }

func (c *Conn) lockTimeout(d time.Duration) bool {
	select {
	case c.wsem <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case c.wsem <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

// writeFrame writes one frame under the write lock.
func (c *Conn) writeFrame(fin bool, op byte, p []byte) error {
	c.lock()
	defer c.unlock()
	return c.writeFrameLocked(fin, op, p)
}

func (c *Conn) writeFrameLocked(fin bool, op byte, p []byte) error {
	if c.sentClose {
		return ErrClosed
	}
	if op == OpClose {
		c.sentClose = true
	}
	if c.server { // unmasked: the payload goes out as it is, no copy
		c.wbuf = appendHeader(c.wbuf[:0], fin, op, len(p), nil)
		if len(p) == 0 {
			_, err := c.raw.Write(c.wbuf)
			return err
		}
		bufs := net.Buffers{c.wbuf, p}
		_, err := bufs.WriteTo(c.raw)
		return err
	}
	var key [4]byte
	if _, err := rand.Read(key[:]); err != nil {
		return err
	}
	// Header and the first part of the payload in one write; the rest in
	// chunks, masked into a pooled buffer (held only while writing: an
	// idle connection holds none).
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	b := appendHeader((*bp)[:0], fin, op, len(p), &key)
	pos := 0
	for {
		n := min(len(p), cap(b)-len(b))
		start := len(b)
		b = append(b, p[:n]...)
		pos = maskBytes(key, pos, b[start:])
		p = p[n:]
		if _, err := c.raw.Write(b); err != nil {
			return err
		}
		if len(p) == 0 {
			return nil
		}
		b = (*bp)[:0]
	}
}

// Write sends p as one binary frame (a stream's view: each Write is a
// whole message).
func (c *Conn) Write(p []byte) (int, error) {
	c.lock()
	defer c.unlock()
	if c.writingMsg {
		return 0, errors.New("websocket: Write during a MessageWriter's message")
	}
	if err := c.writeFrameLocked(true, OpBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteMessage sends one whole message as a single frame.
func (c *Conn) WriteMessage(op byte, p []byte) error {
	c.lock()
	defer c.unlock()
	if c.writingMsg {
		return errors.New("websocket: WriteMessage during a MessageWriter's message")
	}
	return c.writeFrameLocked(true, op, p)
}

// WriteMessages sends several whole messages back to back, with nothing
// from other writers in between (an HTTP request's JSON and its body).
func (c *Conn) WriteMessages(ops []byte, ps [][]byte) error {
	c.lock()
	defer c.unlock()
	if c.writingMsg {
		return errors.New("websocket: WriteMessages during a MessageWriter's message")
	}
	for i := range ops {
		if err := c.writeFrameLocked(true, ops[i], ps[i]); err != nil {
			return err
		}
	}
	return nil
}

// Ping sends a ping frame.
func (c *Conn) Ping(p []byte) error { return c.writeFrame(true, OpPing, p) }

// WriteClose sends a close frame with code and reason (clipped to fit); it
// does not close the connection: the peer may still send (half-close).
// Code 0 sends a close frame without a code. A second close is not sent.
func (c *Conn) WriteClose(code int, reason string) error {
	// A writer stuck on a peer that stopped reading holds the lock: give
	// up after the timeout (Close then closes the socket under it).
	if !c.lockTimeout(closeWriteTimeout) {
		return errCloseTimeout
	}
	defer c.unlock()
	if c.sentClose {
		return nil
	}
	c.raw.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
	err := c.writeFrameLocked(true, OpClose, closePayload(code, reason))
	c.raw.SetWriteDeadline(time.Time{})
	return err
}

// CloseWrite sends a normal close frame and leaves the read side open:
// WebSocket's half-close (the .NET SDK's ShutdownAsync does the same with
// CloseOutputAsync). stream.Pipe calls it when one direction ends.
func (c *Conn) CloseWrite() error {
	c.mu.Lock()
	code, reason := c.onClose, c.onReason
	c.mu.Unlock()
	if code == 0 {
		code = CloseNormal
	}
	return c.WriteClose(code, reason)
}

// Close sends a close frame if none was sent (the code set with
// SetCloseStatus, else 1000) and closes the connection.
//
// Concurrent and later calls wait until the first has finished: whoever
// closes, the close frame is out (or given up on) before the socket goes.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		code, reason := c.onClose, c.onReason
		c.mu.Unlock()
		if code == 0 {
			code = CloseNormal
		}
		c.WriteClose(code, reason)
		c.closeErr = c.raw.Close()
	})
	return c.closeErr
}

// CloseWith sends a close frame with code and reason (unless one was sent)
// and closes the connection.
func (c *Conn) CloseWith(code int, reason string) error {
	c.SetCloseStatus(code, reason)
	return c.Close()
}

// MessageWriter writes one message as fragments: each Write is one frame,
// Close sends the final one. Other writers may not send data frames until
// Close (control frames may interleave, as RFC 6455 allows).
type MessageWriter struct {
	c       *Conn
	op      byte
	started bool
	done    bool
}

// NewMessageWriter starts a message of type op (OpText or OpBinary).
func (c *Conn) NewMessageWriter(op byte) (*MessageWriter, error) {
	c.lock()
	defer c.unlock()
	if c.writingMsg {
		return nil, errors.New("websocket: a message is already being written")
	}
	if c.sentClose {
		return nil, ErrClosed
	}
	c.writingMsg = true
	return &MessageWriter{c: c, op: op}, nil
}

func (m *MessageWriter) frame(fin bool, p []byte) error {
	op := OpContinuation
	if !m.started {
		op, m.started = m.op, true
	}
	return m.c.writeFrameLocked(fin, op, p)
}

// Write sends p as one fragment of the message.
func (m *MessageWriter) Write(p []byte) (int, error) {
	if m.done {
		return 0, ErrClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	m.c.lock()
	defer m.c.unlock()
	if err := m.frame(false, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close ends the message with a final (empty) fragment.
func (m *MessageWriter) Close() error {
	if m.done {
		return nil
	}
	m.done = true
	m.c.lock()
	defer m.c.unlock()
	m.c.writingMsg = false
	return m.frame(true, nil)
}

// ReadFrom copies r into the message, one fragment per read (io.Copy uses
// it), with a reused buffer.
func (m *MessageWriter) ReadFrom(r io.Reader) (int64, error) { return copyChunks(m, r) }

// ------------------------------------------------------------ net.Conn

// LocalAddr implements net.Conn.
func (c *Conn) LocalAddr() net.Addr { return c.raw.LocalAddr() }

// RemoteAddr implements net.Conn.
func (c *Conn) RemoteAddr() net.Addr { return c.raw.RemoteAddr() }

// SetDeadline implements net.Conn.
func (c *Conn) SetDeadline(t time.Time) error { return c.raw.SetDeadline(t) }

// SetReadDeadline implements net.Conn.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.raw.SetReadDeadline(t) }

// SetWriteDeadline implements net.Conn.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }
