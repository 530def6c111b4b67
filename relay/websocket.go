package relay

// The WebSocket front door speaks the published Azure Relay Hybrid
// Connections protocol on the http listener, under /$hc/<hc>:
//
//   - sb-hc-action=listen: a listener's control channel for one hybrid
//     connection. The relay pushes {"accept":{...}} text frames and reads
//     {"renewToken":{"token":...}}.
//   - sb-hc-action=accept&sb-hc-id=<id>: the single-use rendezvous address of
//     one stream; with sb-hc-statusCode it rejects the stream instead.
//   - sb-hc-action=connect: a sender's stream.
//   - sb-hc-action=check: hybrid's extension, a plain GET (no upgrade) that
//     answers whether a token grants hybrid-right=listen|send on hc.
//
// Authentication and every refusal happen in a plain handler before the
// upgrade, so a refusal is an HTTP status (with a Hybrid-Status header that
// carries hybrid's precise status code). Only then does websocket.Server
// upgrade; its Handshake hook accepts any Origin.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/net/websocket"

	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
)

// WebSocket protocol names shared with the client.
const (
	// HeaderTarget is the connect header that carries the requested target.
	HeaderTarget = "Hybrid-Target"
	// HeaderSenderKey is added by the relay to connectHeaders: the name of
	// the key the sender authenticated with (a sender's own is dropped).
	HeaderSenderKey = "Hybrid-Sender-Key"
	// HeaderStatus carries hybrid's status code on a refused handshake.
	HeaderStatus = "Hybrid-Status"
)

// wsDoor translates Azure's WebSocket protocol into calls on the core.
type wsDoor struct {
	core   *Core
	log    hclog.Logger
	tls    bool
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	closing bool
	conns   map[*wsControl]struct{}
}

func newWSDoor(core *Core, log hclog.Logger, tls bool) *wsDoor {
	ctx, cancel := context.WithCancel(context.Background())
	return &wsDoor{core: core, log: log, tls: tls, ctx: ctx, cancel: cancel, conns: map[*wsControl]struct{}{}}
}

// shutdown cancels pending opens and closes every control channel: hijacked
// connections are invisible to http.Server.Shutdown. Streams are the core's.
func (d *wsDoor) shutdown() {
	d.cancel()
	d.mu.Lock()
	d.closing = true
	conns := make([]*wsControl, 0, len(d.conns))
	for c := range d.conns {
		conns = append(conns, c)
	}
	d.mu.Unlock()
	for _, c := range conns {
		c.Close(status.Errorf(status.ShuttingDown, "relay is stopping"))
	}
}

func (d *wsDoor) refuse(w http.ResponseWriter, err error) {
	code := status.CodeOf(err)
	msg := err.Error()
	var se *status.Error
	if errors.As(err, &se) {
		msg = se.Msg
	}
	w.Header().Set(HeaderStatus, strconv.Itoa(int(code)))
	http.Error(w, msg, status.HTTPStatus(code))
}

// ServeHTTP implements http.Handler for /$hc/.
func (d *wsDoor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hc := strings.TrimPrefix(r.URL.Path, "/$hc/")
	q := r.URL.Query()
	token := r.Header.Get("ServiceBusAuthorization")
	if token == "" {
		token = q.Get("sb-hc-token")
	}
	d.mu.Lock()
	closing := d.closing
	d.mu.Unlock()
	if closing {
		d.refuse(w, status.Errorf(status.ShuttingDown, "relay is stopping"))
		return
	}
	if hc == "" || strings.Contains(hc, "/") {
		d.refuse(w, status.Errorf(status.NotFound, "no hybrid connection named in %q", r.URL.Path))
		return
	}
	switch q.Get("sb-hc-action") {
	case "listen":
		d.listen(w, r, hc, token)
	case "accept":
		if q.Has("sb-hc-statusCode") {
			d.reject(w, r, hc, token, q)
		} else {
			d.accept(w, r, hc, token, q.Get("sb-hc-id"))
		}
	case "connect":
		d.connect(w, r, hc, token)
	case "check":
		d.check(w, r, hc, token, q.Get("hybrid-right"))
	default:
		d.refuse(w, status.Errorf(status.BadRequest, "sb-hc-action must be listen, accept or connect"))
	}
}

// watchConn notes when bytes last arrived. x/net/websocket swallows pings
// and pongs inside Read, so a read deadline cannot tell a live but quiet
// peer from a dead one; this can.
type watchConn struct {
	net.Conn
	last atomic.Int64
	// heard, if set, is told whenever bytes arrive (the session's liveness).
	heard atomic.Pointer[func()]
}

func (w *watchConn) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if n > 0 {
		w.last.Store(time.Now().UnixNano())
		if f := w.heard.Load(); f != nil {
			(*f)()
		}
	}
	return n, err
}

func (w *watchConn) idle() time.Duration { return time.Since(time.Unix(0, w.last.Load())) }

// watchHijack makes the hijacked connection a watchConn, keeping the bytes
// net/http had already buffered.
type watchHijack struct {
	http.ResponseWriter
	wc *watchConn
}

func (h *watchHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := h.ResponseWriter.(http.Hijacker).Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.wc = &watchConn{Conn: conn}
	h.wc.last.Store(time.Now().UnixNano())
	var r io.Reader = h.wc
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		r = io.MultiReader(bytes.NewReader(bytes.Clone(b)), h.wc)
	}
	return h.wc, bufio.NewReadWriter(bufio.NewReader(r), brw.Writer), nil
}

// upgrade hands r to websocket.Server and runs h on the connection; it
// returns once h has returned (the library closes the socket then).
func upgrade(w http.ResponseWriter, r *http.Request, h func(ws *websocket.Conn)) bool {
	return upgradeWatched(w, r, func(ws *websocket.Conn, _ *watchConn) { h(ws) })
}

func upgradeWatched(w http.ResponseWriter, r *http.Request, h func(ws *websocket.Conn, wc *watchConn)) bool {
	ran := false
	hj := &watchHijack{ResponseWriter: w}
	websocket.Server{
		Handshake: func(*websocket.Config, *http.Request) error { return nil }, // any Origin, or none
		Handler: func(ws *websocket.Conn) {
			ran = true
			ws.PayloadType = websocket.BinaryFrame
			h(ws, hj.wc)
		},
	}.ServeHTTP(hj, r)
	return ran
}

// wsConn is a WebSocket connection handed to the core: Close also releases
// the http handler, which must not return while the stream lives.
type wsConn struct {
	*websocket.Conn
	once sync.Once
	done chan struct{}
}

func newWSConn(ws *websocket.Conn) *wsConn { return &wsConn{Conn: ws, done: make(chan struct{})} }

func (c *wsConn) Close() error {
	var err error
	c.once.Do(func() {
		err = c.Conn.Close()
		close(c.done)
	})
	return err
}

func header(h map[string]string, name string) string {
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

func remoteOf(r *http.Request) string { return r.RemoteAddr }

func (d *wsDoor) parseID(hc, s string) (StreamID, error) {
	var id StreamID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, status.Errorf(status.NotFound, "no pending stream %q for %q", s, hc)
	}
	copy(id[:], b)
	return id, nil
}

func (d *wsDoor) accept(w http.ResponseWriter, r *http.Request, hc, token, sid string) {
	id, err := d.parseID(hc, sid)
	if err != nil {
		d.refuse(w, err)
		return
	}
	cl, err := d.core.Claim(id, hc, token, remoteOf(r))
	if err != nil {
		d.log.Warn("refused websocket accept", "hc", hc, "remote", remoteOf(r), "error", err)
		d.refuse(w, err)
		return
	}
	if !upgrade(w, r, func(ws *websocket.Conn) {
		c := newWSConn(ws)
		cl.Join(Peer{Conn: c, Addr: remoteOf(r)})
		<-c.done
	}) {
		cl.Fail(status.Errorf(status.Unreachable, "agent's websocket upgrade failed"))
	}
}

func (d *wsDoor) reject(w http.ResponseWriter, r *http.Request, hc, token string, q url.Values) {
	id, err := d.parseID(hc, q.Get("sb-hc-id"))
	if err != nil {
		d.refuse(w, err)
		return
	}
	cl, err := d.core.Claim(id, hc, token, remoteOf(r))
	if err != nil {
		d.refuse(w, err)
		return
	}
	hs, _ := strconv.Atoi(q.Get("sb-hc-statusCode"))
	code := status.CodeOfHTTP(hs)
	if n, err := strconv.Atoi(q.Get("hybrid-status")); err == nil && status.Code(n).Valid() {
		code = status.Code(n) // our own agent's precise code
	}
	if code == status.OK {
		code = status.Refused
	}
	cl.Fail(&status.Error{Code: code, Msg: q.Get("sb-hc-statusDescription")})
	// As in Azure: a rejection completes by failing the handshake with 410.
	http.Error(w, "rejected", http.StatusGone)
}

func (d *wsDoor) connect(w http.ResponseWriter, r *http.Request, hc, token string) {
	remote := remoteOf(r)
	target := r.Header.Get(HeaderTarget)
	pr, err := d.core.Open(d.ctx, OpenRequest{HC: hc, Token: token, Target: target, Remote: remote,
		Headers: connectHeaders(r.Header)})
	if err != nil {
		d.core.stats.StreamsFailed.Add(1)
		d.log.Warn("stream refused", "hc", hc, "target", target, "remote", remote, "error", err, "door", "websocket")
		d.refuse(w, err)
		return
	}
	if !upgrade(w, r, func(ws *websocket.Conn) {
		c := newWSConn(ws)
		d.core.Splice(pr, Peer{Conn: c, Addr: remote})
		<-c.done
	}) {
		pr.Abort()
		d.core.stats.StreamsFailed.Add(1)
	}
}

// connectHeaders are the sender's headers forwarded to the listener, as
// Azure does (its listeners, hyco-ws among them, complete the WebSocket
// handshake from Sec-WebSocket-Key and friends): all but credentials and
// the header only the relay may set.
func connectHeaders(h http.Header) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		switch lk := strings.ToLower(k); lk {
		case "servicebusauthorization", "authorization", strings.ToLower(HeaderSenderKey):
			continue
		}
		if len(v) > 0 {
			out[k] = v[0]
		}
	}
	return out
}

func (d *wsDoor) check(w http.ResponseWriter, r *http.Request, hc, token, right string) {
	var need sas.Rights
	switch right {
	case "listen":
		need = sas.Listen
	case "send":
		need = sas.Send
	case "manage":
		need = sas.Manage
	default:
		d.refuse(w, status.Errorf(status.BadRequest, "hybrid-right must be listen, send or manage"))
		return
	}
	if _, err := d.core.authorize(hc, token, need, remoteOf(r)); err != nil {
		d.refuse(w, err)
		return
	}
	w.Header().Set(HeaderStatus, "0")
	w.Write([]byte("ok\n"))
}

func (d *wsDoor) listen(w http.ResponseWriter, r *http.Request, hc, token string) {
	remote := remoteOf(r)
	ch := &wsControl{door: d, hc: hc, host: r.Host, out: make(chan any, controlQueue), done: make(chan struct{})}
	agent := r.Header.Get("Hybrid-Agent")
	if agent == "" {
		agent = "azure-listener"
	}
	sess, err := d.core.NewSession(ch, remote, agent)
	if err != nil {
		d.refuse(w, err)
		return
	}
	defer sess.Close()
	if err := sess.Attach(hc, token); err != nil {
		d.refuse(w, err)
		return
	}
	log := d.log.With("agent", agent, "remote", remote, "hc", hc, "door", "websocket")
	upgradeWatched(w, r, func(ws *websocket.Conn, wc *watchConn) {
		ws.PayloadType = websocket.TextFrame
		// Control messages are small JSON; a listener may not make the
		// relay buffer more (the library reads no oversize frame).
		ws.MaxPayloadBytes = maxControlMessage
		ch.mu.Lock()
		ch.ws, ch.wc = ws, wc
		ch.mu.Unlock()
		heard := sess.Heard
		wc.heard.Store(&heard)
		d.mu.Lock()
		if d.closing {
			d.mu.Unlock()
			return
		}
		d.conns[ch] = struct{}{}
		d.mu.Unlock()
		defer func() {
			d.mu.Lock()
			delete(d.conns, ch)
			d.mu.Unlock()
		}()
		select {
		case <-ch.done: // closed before the upgrade completed
			return
		default:
		}
		log.Info("agent connected")
		go ch.writeLoop()
		defer ch.closeNow()
		for { // liveness: writeLoop ends a channel silent for 3 ping intervals
			var msg struct {
				RenewToken *struct {
					Token string `json:"token"`
				} `json:"renewToken"`
			}
			if err := websocket.JSON.Receive(ws, &msg); err != nil {
				var se *json.SyntaxError
				if errors.Is(err, websocket.ErrFrameTooLarge) {
					log.Warn("oversize message on control channel; closing", "max_bytes", maxControlMessage)
					ch.sendClose(closeTooBig, "message too big")
				} else if errors.As(err, &se) {
					log.Warn("bad message on control channel; closing", "error", err)
					ch.sendClose(closePolicy, "malformed message")
				} else {
					log.Info("agent disconnected", "error", err)
				}
				return
			}
			if msg.RenewToken != nil {
				if err := sess.Renew(hc, msg.RenewToken.Token); err != nil {
					log.Warn("token renewal refused; closing", "error", err)
					ch.Close(err)
					return
				}
			}
		}
	})
}

// WebSocket close codes used by the relay.
const (
	closeGoingAway = 1001
	closePolicy    = 1008
	closeTooBig    = 1009
	closeInternal  = 1011
)

// maxControlMessage caps one message a listener sends on its control
// channel (renewToken, at most a few KiB).
const maxControlMessage = 64 << 10

// wsAccept is the accept notice of Azure's protocol.
type wsAccept struct {
	Accept struct {
		Address        string            `json:"address"`
		ID             string            `json:"id"`
		ConnectHeaders map[string]string `json:"connectHeaders"`
		RemoteEndpoint struct {
			Address string `json:"address"`
			Port    int    `json:"port"`
		} `json:"remoteEndpoint"`
	} `json:"accept"`
}

// wsClose is a close frame to write, then the channel ends.
type wsClose struct {
	code   int
	reason string
}

// wsControl is the core's handle on a WebSocket control channel.
type wsControl struct {
	door *wsDoor
	hc   string
	host string
	ws   *websocket.Conn
	wc   *watchConn
	out  chan any

	mu   sync.Mutex // guards ws until set
	once sync.Once
	done chan struct{}
}

func (c *wsControl) push(m any) bool {
	select {
	case c.out <- m:
		return true
	case <-c.done:
		return false
	default:
		c.closeNow()
		return false
	}
}

// Accept implements ListenerConn.
func (c *wsControl) Accept(_ context.Context, a Accept) error {
	var m wsAccept
	scheme := "ws"
	if c.door.tls {
		scheme = "wss"
	}
	u := url.URL{Scheme: scheme, Host: c.host, Path: "/$hc/" + a.HC,
		RawQuery: "sb-hc-action=accept&sb-hc-id=" + a.ID.String()}
	m.Accept.Address = u.String()
	m.Accept.ID = a.ID.String()
	m.Accept.ConnectHeaders = map[string]string{}
	for k, v := range a.Headers {
		m.Accept.ConnectHeaders[k] = v
	}
	if a.Target != "" {
		m.Accept.ConnectHeaders[HeaderTarget] = a.Target
	}
	m.Accept.ConnectHeaders[HeaderSenderKey] = a.SenderKey
	if header(m.Accept.ConnectHeaders, "Sec-WebSocket-Key") == "" {
		// A native sender: Azure listeners expect a WebSocket sender's
		// handshake headers, so give them plausible ones.
		var key [16]byte
		rand.Read(key[:])
		m.Accept.ConnectHeaders["Sec-WebSocket-Key"] = base64.StdEncoding.EncodeToString(key[:])
		m.Accept.ConnectHeaders["Sec-WebSocket-Version"] = "13"
	}
	if h, p, err := net.SplitHostPort(a.SenderAddr); err == nil {
		m.Accept.RemoteEndpoint.Address = h
		m.Accept.RemoteEndpoint.Port, _ = strconv.Atoi(p)
	}
	if !c.push(&m) {
		return status.Errorf(status.NoListener, "control channel closed")
	}
	return nil
}

// Detached implements ListenerConn: one channel serves one hybrid
// connection, so the channel ends, with close code 1008.
func (c *wsControl) Detached(hc string, why error) {
	c.sendClose(closePolicy, why.Error())
}

// GoAway implements GoAwayer: Azure's protocol has no GOAWAY, so the
// channel closes with 1001 (going away) and the listener reconnects.
func (c *wsControl) GoAway(why error) { c.sendClose(closeGoingAway, why.Error()) }

// Close implements ListenerConn.
func (c *wsControl) Close(why error) {
	code := closeInternal
	reason := ""
	if why != nil {
		reason = why.Error()
		switch status.CodeOf(why) {
		case status.ShuttingDown:
			code = closeGoingAway
		case status.Unauthorized, status.Forbidden, status.BadRequest:
			code = closePolicy
		}
	} else {
		code = closeGoingAway
	}
	c.sendClose(code, reason)
}

func (c *wsControl) sendClose(code int, reason string) {
	select {
	case c.out <- wsClose{code, reason}:
		time.AfterFunc(time.Second, c.closeNow)
	default:
		c.closeNow()
	}
}

func (c *wsControl) closeNow() {
	c.once.Do(func() {
		close(c.done)
		c.mu.Lock()
		ws := c.ws
		c.mu.Unlock()
		if ws != nil {
			ws.Close()
		}
	})
}

// pingCodec and closeCodec write control frames through the library's own
// write lock (Codec.Send), so they never interleave with its pong replies.
var (
	pingCodec  = websocket.Codec{Marshal: func(any) ([]byte, byte, error) { return nil, websocket.PingFrame, nil }}
	closeCodec = websocket.Codec{Marshal: func(v any) ([]byte, byte, error) {
		cl := v.(wsClose)
		if len(cl.reason) > 120 {
			cl.reason = cl.reason[:120]
		}
		b := []byte{byte(cl.code >> 8), byte(cl.code)}
		return append(b, cl.reason...), websocket.CloseFrame, nil
	}}
)

func (c *wsControl) writeLoop() {
	interval := c.door.core.Config().PingInterval
	ping := time.NewTicker(interval)
	defer ping.Stop()
	for {
		var err error
		select {
		case <-c.done:
			return
		case m := <-c.out:
			c.ws.SetWriteDeadline(time.Now().Add(writeTimeout))
			if cl, ok := m.(wsClose); ok {
				closeCodec.Send(c.ws, cl)
				c.closeNow()
				return
			}
			err = websocket.JSON.Send(c.ws, m)
		case <-ping.C:
			if c.wc.idle() > 2*interval {
				c.door.log.Warn("closing silent websocket control channel", "hc", c.hc, "silent", c.wc.idle().Round(time.Second))
				c.closeNow()
				return
			}
			c.ws.SetWriteDeadline(time.Now().Add(writeTimeout))
			err = pingCodec.Send(c.ws, nil)
		}
		// No deadline between writes: the library writes pongs on its own.
		c.ws.SetWriteDeadline(time.Time{})
		if err != nil {
			c.closeNow()
			return
		}
	}
}
