package wsconn

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/websocket"
)

// CheckUpgrade reports why r is not a WebSocket opening handshake this
// package can complete, or nil. Front doors call it before anything with a
// side effect (notifying a listener, claiming a stream), so that a plain
// GET is refused up front rather than after the fact.
func CheckUpgrade(r *http.Request) error {
	switch {
	case r.Method != http.MethodGet:
		return fmt.Errorf("method %s is not GET", r.Method)
	case !headerHasToken(r.Header, "Upgrade", "websocket"):
		return errors.New("not a WebSocket upgrade (no Upgrade: websocket)")
	case !headerHasToken(r.Header, "Connection", "upgrade"):
		return errors.New("not a WebSocket upgrade (no Connection: Upgrade)")
	case r.Header.Get("Sec-WebSocket-Version") != "13":
		return fmt.Errorf("Sec-WebSocket-Version %q is not 13", r.Header.Get("Sec-WebSocket-Version"))
	}
	key, err := base64.StdEncoding.DecodeString(r.Header.Get("Sec-WebSocket-Key"))
	if err != nil || len(key) != 16 {
		return errors.New("Sec-WebSocket-Key is not 16 bytes in base64")
	}
	return nil
}

// headerHasToken reports whether a comma-separated header lists token,
// ignoring case.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// Protocols returns the subprotocols a handshake request offers, in order.
func Protocols(h http.Header) []string {
	var out []string
	for _, v := range h.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// UpgradeOptions tune the server side of a handshake.
type UpgradeOptions struct {
	// Subprotocol is answered in Sec-WebSocket-Protocol; "" answers none,
	// whatever the client offered. It should be one of the offered ones.
	Subprotocol string
}

// Upgrade completes a WebSocket handshake on r (checked beforehand with
// CheckUpgrade) and runs h with the connection; it returns once h has
// returned, after the connection is closed. It returns false if the
// handshake failed (the library has then answered the client itself).
//
// The handler style comes from the library (its server runs the handler on
// the request's goroutine and closes the socket after it): callers that
// hand the connection to another goroutine must keep h waiting until it is
// done. net/http does not track hijacked connections: the caller must.
func Upgrade(w http.ResponseWriter, r *http.Request, opt UpgradeOptions, h func(*Conn)) bool {
	hj := &hijacker{ResponseWriter: w}
	ran := false
	websocket.Server{
		// Any Origin, or none (websocket.Handler would refuse clients that
		// send none, as Azure's do); the subprotocol is ours to choose: the
		// library refuses to answer when several are offered and none was
		// chosen.
		Handshake: func(cfg *websocket.Config, _ *http.Request) error {
			cfg.Protocol = nil
			if opt.Subprotocol != "" {
				cfg.Protocol = []string{opt.Subprotocol}
			}
			return nil
		},
		Handler: func(*websocket.Conn) {
			ran = true
			c := newConn(hj.conn, hj.br, true)
			c.subprotocol = opt.Subprotocol
			c.request = r
			defer c.Close()
			h(c)
		},
	}.ServeHTTP(hj, r)
	return ran
}

// hijacker keeps what net/http's Hijack returns, so frames are read from
// the same buffered reader (nothing net/http read ahead is lost).
type hijacker struct {
	http.ResponseWriter
	conn net.Conn
	br   *bufio.Reader
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := h.ResponseWriter.(http.Hijacker).Hijack()
	if err != nil {
		return nil, nil, err
	}
	conn.SetDeadline(time.Time{}) // net/http's handshake deadlines are not ours
	h.conn, h.br = conn, brw.Reader
	return conn, brw, nil
}

// HandshakeError is a refused opening handshake: the server's HTTP answer.
type HandshakeError struct {
	StatusCode int
	Status     string // as the server wrote it, reason phrase included
	Header     http.Header
	Body       []byte // at most 4 KiB
}

func (e *HandshakeError) Error() string {
	return "websocket handshake refused: " + e.Status
}

// DialOptions tune the client side of a handshake.
type DialOptions struct {
	// Header is sent with the handshake (credentials, application headers).
	Header http.Header
	// Protocols are offered in Sec-WebSocket-Protocol.
	Protocols []string
	// Timeout bounds the handshake (default 10 s).
	Timeout time.Duration
}

// Dial performs the client side of the opening handshake for u on conn (a
// connection the caller opened, to wherever it decided) and returns the
// WebSocket. A refused handshake is a *HandshakeError. conn is closed on
// failure.
func Dial(ctx context.Context, conn net.Conn, u *url.URL, opt DialOptions) (*Conn, error) {
	timeout := opt.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	origin := "http://" + u.Host
	if u.Scheme == "wss" {
		origin = "https://" + u.Host
	}
	cfg, err := websocket.NewConfig(u.String(), origin)
	if err != nil {
		conn.Close()
		return nil, err
	}
	for k, v := range opt.Header {
		cfg.Header[k] = v
	}
	cfg.Protocol = opt.Protocols
	rec := &recorder{Conn: conn}
	_, err = websocket.NewClient(cfg, rec)
	if err != nil {
		defer conn.Close()
		if errors.Is(err, websocket.ErrBadStatus) {
			return nil, refusal(rec)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("websocket %s: %w", u.Redacted(), err)
	}
	if !stop() {
		conn.Close()
		return nil, ctx.Err()
	}
	conn.SetDeadline(time.Time{})
	// The library read the answer through its own buffer, which may hold
	// the first frames already (a listener that speaks first): everything
	// the recorder saw after the answer's head is ours to read first.
	head := bytes.Index(rec.buf.Bytes(), []byte("\r\n\r\n"))
	var r io.Reader = conn
	if rest := rec.buf.Bytes()[head+4:]; len(rest) > 0 {
		r = io.MultiReader(bytes.NewReader(bytes.Clone(rest)), conn)
	}
	c := newConn(conn, bufio.NewReaderSize(r, readBufSize), false)
	if len(cfg.Protocol) == 1 && len(opt.Protocols) > 0 {
		c.subprotocol = cfg.Protocol[0]
	}
	return c, nil
}

// recorder keeps every byte read during the handshake.
type recorder struct {
	net.Conn
	buf bytes.Buffer
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.buf.Write(p[:n])
	return n, err
}

// refusal reads a refused handshake's answer, reason phrase included.
func refusal(rec *recorder) error {
	rec.Conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(io.MultiReader(bytes.NewReader(rec.buf.Bytes()), rec.Conn)), nil)
	if err != nil {
		return fmt.Errorf("websocket handshake refused with an unreadable answer: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return &HandshakeError{StatusCode: resp.StatusCode, Status: resp.Status, Header: resp.Header, Body: body}
}

// ReasonPhrase returns the reason phrase of an HTTP status line such as
// "451 Unavailable For Legal Reasons".
func ReasonPhrase(status string) string {
	if i := strings.IndexByte(status, ' '); i >= 0 {
		if _, err := strconv.Atoi(status[:i]); err == nil {
			return status[i+1:]
		}
	}
	return ""
}
