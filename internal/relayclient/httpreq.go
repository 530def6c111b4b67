package relayclient

// HTTP mode on the listener's side (Azure's "request" gesture): the relay
// sends {"request":{address,id,requestTarget,method,requestHeaders,body}}
// on the control channel, the body (at most 64 kB) as the next binary
// message; or, for larger bodies, only {"request":{address,id}}, and the
// listener fetches the whole request over a rendezvous WebSocket at
// address. The listener answers {"response":{requestId,statusCode,
// statusDescription,responseHeaders,body}} and the body on the control
// channel when it is small, else over the rendezvous. Every rendezvous
// address is checked like an accept notice's (checkRendezvous): the agent
// never dials anything but its relay.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hybridconn/hybrid/internal/wsconn"
)

// maxInlineResponse is the largest response body sent on the control
// channel (Azure's 64 kB limit); larger ones go over a rendezvous.
const maxInlineResponse = 64 << 10

// inlineWait is how long a response body may take to end and still go on
// the control channel (when it is at most maxInlineResponse).
const inlineWait = 100 * time.Millisecond

// Request is one HTTP-mode request from the relay. Call Open before
// reading it, then Respond exactly once.
type Request struct {
	HC         string
	ID         string // the relay's request id
	Method     string
	Target     string // requestTarget: "/<hc>[/suffix][?query]", sb- parameters removed
	Header     http.Header
	SenderAddr string
	// Body is the request body (empty when there is none), valid until
	// Respond.
	Body io.Reader

	ctl     *wsControl
	ch      *wsChan
	rv      rendezvous   // the checked rendezvous address
	conn    *wsconn.Conn // the rendezvous, once dialled
	fetch   bool         // the request itself is to be read from the rendezvous
	hasBody bool
	once    sync.Once
}

// wsRequestMsg is the relay's request message.
type wsRequestMsg struct {
	Address        string            `json:"address"`
	ID             string            `json:"id"`
	RequestTarget  string            `json:"requestTarget"`
	Method         string            `json:"method"`
	RequestHeaders map[string]string `json:"requestHeaders"`
	Body           bool              `json:"body"`
	RemoteEndpoint struct {
		Address string `json:"address"`
		Port    int    `json:"port"`
	} `json:"remoteEndpoint"`
}

func (m *wsRequestMsg) fill(r *Request) {
	r.Method, r.Target, r.hasBody = m.Method, m.RequestTarget, m.Body
	r.Header = http.Header{}
	for k, v := range m.RequestHeaders {
		r.Header.Set(k, v)
	}
	if m.RemoteEndpoint.Address != "" {
		r.SenderAddr = net.JoinHostPort(m.RemoteEndpoint.Address, strconv.Itoa(m.RemoteEndpoint.Port))
	}
	r.Body = bytes.NewReader(nil)
}

// request turns a request notice of channel ch into an event; a
// control-channel request with a body waits for its binary message.
func (c *wsControl) request(ch *wsChan, m *wsRequestMsg) (Event, bool) {
	r := &Request{HC: ch.hc, ID: m.ID, ctl: c, ch: ch}
	rv, err := c.client.checkRendezvous(m.Address, ch.hc, "request")
	if err != nil {
		// As for accepts: never dial it, and never answer (the relay
		// that sent it is not to be trusted with a response either).
		return Event{Dropped: &Dropped{Accept: &Accept{ID: idOf(m.ID), HC: ch.hc}, Address: clip(m.Address),
			Reason: "request: " + err.Error()}}, true
	}
	r.rv = rv
	if m.Method == "" { // too large for the control channel: fetch it
		r.fetch = true
		return Event{Request: r}, true
	}
	m.fill(r)
	if m.Body {
		ch.bodyFor = r
		return Event{}, false
	}
	return Event{Request: r}, true
}

// requestBody takes a binary message on ch: the body of the request just
// announced. Anything else is ignored.
func (c *wsControl) requestBody(ch *wsChan, msg []byte) (Event, bool) {
	r := ch.bodyFor
	if r == nil {
		return Event{}, false
	}
	ch.bodyFor = nil
	r.Body = bytes.NewReader(msg)
	return Event{Request: r}, true
}

// Open makes the request readable: for a request too large for the control
// channel it dials the (checked) rendezvous and reads the request there;
// otherwise it does nothing.
func (r *Request) Open(ctx context.Context) error {
	if !r.fetch {
		return nil
	}
	ws, err := r.ctl.client.dialWSAt(ctx, r.rv.host, r.rv.port, r.rv.url, nil, HandshakeTimeout)
	if err != nil {
		return err
	}
	r.conn = ws
	ws.SetReadDeadline(time.Now().Add(HandshakeTimeout))
	op, msg, err := ws.ReadMessage(MaxControlMessage)
	ws.SetReadDeadline(time.Time{})
	var m struct {
		Request *wsRequestMsg `json:"request"`
	}
	if err == nil && (op != wsconn.OpText || json.Unmarshal(msg, &m) != nil || m.Request == nil || m.Request.Method == "") {
		err = errors.New("relay sent no request on the request rendezvous")
	}
	if err != nil {
		ws.CloseWith(wsconn.CloseProtocolError, "request expected")
		return err
	}
	m.Request.fill(r)
	if m.Request.Body {
		_, body, err := ws.NextReader()
		if err != nil {
			return err
		}
		r.Body = body
	}
	return nil
}

// Respond answers the request: on the rendezvous if the request came over
// one; otherwise on the control channel when the body is small, or over a
// newly dialled rendezvous when it is larger or still coming after
// inlineWait (what the body brings by then, up to 64 KiB, tells).
// reason may be "" (the standard phrase). body is read on a goroutine of
// its own until it ends or Respond returns; a body that can block (an HTTP
// response's) must be closed by the caller after Respond, which ends that
// goroutine's last read.
func (r *Request) Respond(ctx context.Context, code int, reason string, hdr http.Header, body io.Reader) error {
	err := errors.New("request already answered")
	r.once.Do(func() { err = r.respond(ctx, code, reason, hdr, body) })
	return err
}

type wsResponseMsg struct {
	Response struct {
		RequestID         string            `json:"requestId"`
		StatusCode        int               `json:"statusCode"`
		StatusDescription string            `json:"statusDescription,omitempty"`
		ResponseHeaders   map[string]string `json:"responseHeaders"`
		Body              bool              `json:"body"`
	} `json:"response"`
}

func (r *Request) respond(ctx context.Context, code int, reason string, hdr http.Header, body io.Reader) error {
	var m wsResponseMsg
	m.Response.RequestID, m.Response.StatusCode, m.Response.StatusDescription = r.ID, code, reason
	m.Response.ResponseHeaders = map[string]string{}
	for k, v := range hdr {
		if len(v) > 0 {
			m.Response.ResponseHeaders[k] = v[0]
		}
	}
	if body == nil {
		body = bytes.NewReader(nil)
	}
	// What comes of the body within inlineWait, up to 64 KiB + 1, tells
	// whether it fits the control channel: a body that is larger, or still
	// coming (server-sent events, a slow download), streams over a
	// rendezvous instead of waiting to fill 64 KiB.
	cr := newChunkReader(body)
	defer cr.stop()
	head, complete, err := cr.gather(maxInlineResponse+1, inlineWait)
	if err != nil {
		return fmt.Errorf("response body: %w", err)
	}
	if complete {
		body = nil // all of it is in head
	} else {
		body = cr
	}
	m.Response.Body = len(head) > 0
	msg, err := json.Marshal(&m)
	if err != nil {
		return err
	}
	if r.conn == nil && body == nil { // small, and no rendezvous yet: the control channel
		if !m.Response.Body {
			return r.ch.send([]byte{wsconn.OpText}, [][]byte{msg})
		}
		return r.ch.send([]byte{wsconn.OpText, wsconn.OpBinary}, [][]byte{msg, head})
	}
	if r.conn == nil {
		ws, err := r.ctl.client.dialWSAt(ctx, r.rv.host, r.rv.port, r.rv.url, nil, HandshakeTimeout)
		if err != nil {
			return err
		}
		r.conn = ws
	}
	ws := r.conn
	defer ws.Close()
	if err := ws.WriteMessage(wsconn.OpText, msg); err != nil {
		return err
	}
	if !m.Response.Body {
		return nil
	}
	mw, err := ws.NewMessageWriter(wsconn.OpBinary)
	if err != nil {
		return err
	}
	if _, err := mw.Write(head); err != nil {
		return err
	}
	if body != nil {
		if _, err := io.Copy(mw, body); err != nil {
			ws.CloseWith(wsconn.CloseInternal, "response body failed")
			return fmt.Errorf("response body: %w", err)
		}
	}
	return mw.Close()
}

// Abandon releases a request that will not be answered (its rendezvous,
// if any, is closed; the relay answers the sender 502 or 504).
func (r *Request) Abandon() {
	r.once.Do(func() {
		if r.conn != nil {
			r.conn.CloseWith(wsconn.CloseInternal, "request abandoned")
		}
	})
}

// chunkReader reads a body on its own goroutine, so that a response can
// tell a small body that has ended from one still coming without blocking
// on it. Its goroutine ends when the body does, or, after stop, at its next
// read's end (the caller closes the body to cut that short).
type chunkReader struct {
	ch   chan []byte   // chunks, closed after the last; err is set then
	done chan struct{} // closed by stop
	err  error         // the body's error other than io.EOF, once ch is closed
	cur  []byte        // what Read has not handed out of the last chunk
}

func newChunkReader(body io.Reader) *chunkReader {
	c := &chunkReader{ch: make(chan []byte, 4), done: make(chan struct{})}
	go func() {
		defer close(c.ch)
		for {
			buf := make([]byte, 32<<10)
			n, err := body.Read(buf)
			if n > 0 {
				select {
				case c.ch <- buf[:n]:
				case <-c.done:
					return
				}
			}
			if err != nil {
				if err != io.EOF {
					c.err = err
				}
				return
			}
		}
	}()
	return c
}

// gather collects chunks until the body ends (complete), more than max
// bytes have come, or wait has passed since the first call.
func (c *chunkReader) gather(max int, wait time.Duration) (head []byte, complete bool, err error) {
	t := time.NewTimer(wait)
	defer t.Stop()
	for len(head) < max {
		select {
		case b, ok := <-c.ch:
			if !ok {
				return head, true, c.err
			}
			head = append(head, b...)
		case <-t.C:
			return head, false, nil
		}
	}
	return head, false, nil
}

// Read hands out the rest of the body.
func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.cur) == 0 {
		b, ok := <-c.ch
		if !ok {
			if c.err != nil {
				return 0, c.err
			}
			return 0, io.EOF
		}
		c.cur = b
	}
	n := copy(p, c.cur)
	c.cur = c.cur[n:]
	return n, nil
}

// stop releases the reading goroutine.
func (c *chunkReader) stop() {
	select {
	case <-c.done:
	default:
		close(c.done)
	}
}
