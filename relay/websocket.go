package relay

// The WebSocket front door speaks the published Azure Relay Hybrid
// Connections protocol on the http listener, under /$hc/<hc>[/suffix]:
//
//   - sb-hc-action=listen: a listener's control channel for one hybrid
//     connection. The relay pushes {"accept":{...}} and {"request":{...}}
//     text frames and reads {"renewToken":{"token":...}} and
//     {"response":{...}} (with binary frames for response bodies).
//   - sb-hc-action=accept&sb-hc-id=<id>: the single-use rendezvous address of
//     one stream; with sb-hc-statusCode it rejects the stream instead.
//   - sb-hc-action=connect: a sender's stream.
//   - sb-hc-action=request&sb-hc-id=<id>: the rendezvous of one HTTP-mode
//     request (httpmode.go).
//   - sb-hc-action=check: hybrid's extension, a plain GET (no upgrade) that
//     answers whether a token grants hybrid-right=listen|send on hc.
//
// Authentication and every refusal happen before the upgrade (and before
// any side effect: a request that is no WebSocket upgrade is refused before
// a listener hears of it), so a refusal is an HTTP status, with a
// Hybrid-Status header that carries hybrid's precise status code. A
// listener's rejection reaches the sender as the listener's own status and
// reason phrase. The WebSocket itself is internal/wsconn's.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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

	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wire"
	"github.com/hybridconn/hybrid/internal/wsconn"
	"github.com/hybridconn/hybrid/rules"
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
	// HeaderAgent names a hybrid agent on its listen request.
	HeaderAgent = "Hybrid-Agent"
)

// maxControlMessage caps one message a listener sends on its control
// channel (renewToken, a response and its body: Azure caps control-channel
// bodies at 64 kB, larger ones use a rendezvous).
const maxControlMessage = 64 << 10

// Over-limit listeners from clients that are not hybrid's are parked (see
// park): held this long, then closed with 1013. At most maxParked at once.
const (
	parkTime  = 10 * time.Second
	maxParked = 4096
)

// doorSettings are the parts of the relay's configuration the door reads on
// every request; Server.Apply swaps them.
type doorSettings struct {
	publicURL *url.URL // nil: from each request
	maxBody   int64    // HTTP mode, each of request and response
}

func settingsOf(cfg *rules.Relay) *doorSettings {
	s := &doorSettings{maxBody: cfg.MaxHTTPBody}
	if s.maxBody <= 0 {
		s.maxBody = rules.DefaultMaxHTTPBody
	}
	if cfg.PublicURL != "" {
		s.publicURL, _ = url.Parse(cfg.PublicURL)
	}
	return s
}

// wsDoor translates Azure's WebSocket protocol into calls on the core.
type wsDoor struct {
	core   *Core
	log    hclog.Logger
	tls    bool
	ctx    context.Context
	cancel context.CancelFunc
	set    atomic.Pointer[doorSettings]
	// requestTimeout is how long an HTTP-mode request waits for the
	// listener's response (Azure: 60 s; tests shorten it).
	requestTimeout time.Duration
	// parkTime is how long an over-limit listener is held (parkTime;
	// tests shorten it).
	parkTime time.Duration

	mu        sync.Mutex
	closing   bool
	conns     map[*wsControl]struct{}
	streams   map[*heldConn]struct{}
	exchanges map[string]*exchange // HTTP-mode requests in flight, by id
	parked    int
	closers   sync.WaitGroup // close frames being written
}

func newWSDoor(core *Core, log hclog.Logger, cfg *rules.Relay) *wsDoor {
	ctx, cancel := context.WithCancel(context.Background())
	d := &wsDoor{core: core, log: log, tls: cfg.TLS != nil, ctx: ctx, cancel: cancel,
		requestTimeout: RequestTimeout, parkTime: parkTime,
		conns: map[*wsControl]struct{}{}, streams: map[*heldConn]struct{}{}, exchanges: map[string]*exchange{}}
	d.set.Store(settingsOf(cfg))
	return d
}

func (d *wsDoor) settings() *doorSettings { return d.set.Load() }

// shutdown cancels pending opens and requests, and ends every control
// channel with 1001 (hijacked connections are invisible to
// http.Server.Shutdown), waiting (a bounded time) until each close frame is
// written: a relay that exits must not leave listeners with 1006. Live
// streams are the core's: they will be closed with 1001 too.
func (d *wsDoor) shutdown() {
	d.cancel()
	d.mu.Lock()
	d.closing = true
	conns := make([]*wsControl, 0, len(d.conns))
	for c := range d.conns {
		conns = append(conns, c)
	}
	for s := range d.streams {
		s.SetCloseStatus(wsconn.CloseGoingAway, "relay is stopping")
	}
	d.mu.Unlock()
	for _, c := range conns {
		c.Close(status.Errorf(status.ShuttingDown, "relay is stopping"))
	}
	d.closers.Wait()
}

func (d *wsDoor) isClosing() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closing
}

func (d *wsDoor) refuse(w http.ResponseWriter, err error) {
	code := status.CodeOf(err)
	msg := err.Error()
	var se *status.Error
	if errors.As(err, &se) {
		msg = se.Msg
	}
	w.Header().Set(HeaderStatus, strconv.Itoa(int(code)))
	if code == status.Busy {
		w.Header().Set("Retry-After", "5")
	}
	http.Error(w, msg, status.HTTPStatus(code))
}

// refuseAs answers with the given status and reason phrase, which
// net/http cannot write (it always uses the standard phrase): a listener's
// rejection reaches the sender as the listener worded it.
func refuseAs(w http.ResponseWriter, httpStatus int, phrase string, code status.Code, body string) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		w.Header().Set(HeaderStatus, strconv.Itoa(int(code)))
		http.Error(w, body, httpStatus)
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	body += "\n"
	fmt.Fprintf(brw, "HTTP/1.1 %03d %s\r\n", httpStatus, reasonPhrase(phrase, http.StatusText(httpStatus)))
	fmt.Fprintf(brw, "Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n")
	fmt.Fprintf(brw, "%s: %d\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", HeaderStatus, code, len(body), body)
	brw.Flush()
}

// ServeHTTP implements http.Handler for /$hc/.
func (d *wsDoor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if d.isClosing() {
		d.refuse(w, status.Errorf(status.ShuttingDown, "relay is stopping"))
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/$hc/")
	hc, suffix, ok := d.core.auth.Load().lookup(path)
	if !ok {
		d.refuse(w, status.Errorf(status.NotFound, "no hybrid connection named in %q", r.URL.Path))
		return
	}
	q := r.URL.Query()
	token := r.Header.Get("ServiceBusAuthorization")
	if token == "" {
		token = q.Get("sb-hc-token")
	}
	action := q.Get("sb-hc-action")
	if action == "listen" && suffix != "" {
		// A listener serves a hybrid connection, not a path below it.
		d.refuse(w, status.Errorf(status.NotFound, "no hybrid connection named %q", path))
		return
	}
	switch action {
	case "listen":
		d.listen(w, r, hc, token)
	case "accept":
		if q.Has("sb-hc-statusCode") || q.Has("statusCode") {
			d.reject(w, r, hc, token, q)
		} else {
			d.accept(w, r, hc, token, q)
		}
	case "connect":
		d.connect(w, r, hc, suffix, token)
	case "request":
		d.requestRendezvous(w, r, hc, q)
	case "check":
		d.check(w, r, hc, token, q.Get("hybrid-right"))
	default:
		d.refuse(w, status.Errorf(status.BadRequest, "sb-hc-action must be listen, accept, connect or request"))
	}
}

// heldConn is the WebSocket side of a stream as the core holds it: Close
// also releases the http handler, which must not return while the stream
// lives (the library closes the socket when it does).
type heldConn struct {
	*wsconn.Conn
	door *wsDoor
	once sync.Once
	done chan struct{}
}

func (d *wsDoor) hold(ws *wsconn.Conn) *heldConn {
	h := &heldConn{Conn: ws, door: d, done: make(chan struct{})}
	d.mu.Lock()
	d.streams[h] = struct{}{}
	if d.closing {
		ws.SetCloseStatus(wsconn.CloseGoingAway, "relay is stopping")
	}
	d.mu.Unlock()
	return h
}

// WebSocket returns the WebSocket itself: wsconn relays frames, not
// bytes, between two of them (Conn.ReadFrom).
func (h *heldConn) WebSocket() *wsconn.Conn { return h.Conn }

func (h *heldConn) Close() error {
	var err error
	h.once.Do(func() {
		err = h.Conn.Close()
		h.door.mu.Lock()
		delete(h.door.streams, h)
		h.door.mu.Unlock()
		close(h.done)
	})
	return err
}

func remoteOf(r *http.Request) string { return r.RemoteAddr }

// streamID reads the stream a rendezvous address names: hybrid's
// sb-hc-ticket when the sender chose the sb-hc-id, else sb-hc-id.
func streamID(hc string, q url.Values) (StreamID, error) {
	var id StreamID
	s := q.Get("sb-hc-ticket")
	if s == "" {
		s = q.Get("sb-hc-id")
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, status.Errorf(status.NotFound, "no pending stream %q for %q", s, hc)
	}
	copy(id[:], b)
	return id, nil
}

// pipeForeign hands a rendezvous for a stream of another relay of the
// fleet (the listener's connection landed here through a load balancer)
// to that relay, whole; true when it did (or tried: the answer is then
// that relay's).
func (d *wsDoor) pipeForeign(w http.ResponseWriter, r *http.Request, id StreamID) bool {
	prefix, foreign := d.core.Foreign(id)
	if !foreign {
		return false
	}
	var head bytes.Buffer
	if err := r.Write(&head); err != nil {
		d.refuse(w, status.Errorf(status.BadRequest, "%v", err))
		return true
	}
	conn, head2, err := hijackFor(w, head.Bytes())
	if err != nil {
		d.refuse(w, status.Errorf(status.Internal, "cannot hand the rendezvous to its relay: %v", err))
		return true
	}
	peer, err := d.core.fleet.Pipe(d.ctx, prefix, wire.PipeHTTP, conn.RemoteAddr().String(), head2)
	if err != nil {
		d.log.Warn("rendezvous for another relay of the fleet failed", "remote", remoteOf(r), "error", err)
		answerRaw(conn, http.StatusNotFound, "")
		return true
	}
	d.core.PassThrough(conn, peer, false)
	return true
}

// hijackFor takes the client's connection from the http server, to pipe it
// to another relay of the fleet: it returns head followed by what the
// server had read past it (a body's start), and clears the deadlines the
// server set for its own reads. On an error the server still has the
// connection.
func hijackFor(w http.ResponseWriter, head []byte) (net.Conn, []byte, error) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the connection cannot be taken over")
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		head = append(head, b...)
	}
	conn.SetDeadline(time.Time{})
	return conn, head, nil
}

// answerRaw answers on a hijacked connection with code and a plain-text
// msg, then closes it.
func answerRaw(conn net.Conn, code int, msg string) {
	if msg != "" {
		msg += "\n"
	}
	fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(msg), msg)
	conn.Close()
}

func (d *wsDoor) accept(w http.ResponseWriter, r *http.Request, hc, token string, q url.Values) {
	if err := wsconn.CheckUpgrade(r); err != nil {
		d.refuse(w, status.Errorf(status.BadRequest, "%v", err))
		return
	}
	id, err := streamID(hc, q)
	if err != nil {
		d.refuse(w, err)
		return
	}
	if d.pipeForeign(w, r, id) {
		return
	}
	cl, err := d.core.Claim(id, hc, token, remoteOf(r))
	if err != nil {
		d.log.Warn("refused websocket accept", "hc", hc, "remote", remoteOf(r), "error", err)
		d.refuse(w, err)
		return
	}
	// The listener offers the one subprotocol it accepted (if any).
	var proto string
	if ps := wsconn.Protocols(r.Header); len(ps) > 0 {
		proto = ps[0]
	}
	if !wsconn.Upgrade(w, r, wsconn.UpgradeOptions{Subprotocol: proto}, func(ws *wsconn.Conn) {
		c := d.hold(ws)
		serve, wait := serveHere() // this goroutine stays until c closes: it may as well copy
		cl.Join(Peer{Conn: c, Addr: remoteOf(r), Serve: serve})
		wait()
		<-c.done
	}) {
		cl.Fail(status.Errorf(status.Unreachable, "listener's websocket upgrade failed"))
	}
}

func (d *wsDoor) reject(w http.ResponseWriter, r *http.Request, hc, token string, q url.Values) {
	id, err := streamID(hc, q)
	if err != nil {
		d.refuse(w, err)
		return
	}
	if d.pipeForeign(w, r, id) {
		return
	}
	cl, err := d.core.Claim(id, hc, token, remoteOf(r))
	if err != nil {
		d.refuse(w, err)
		return
	}
	// hyco-ws writes statusCode and statusDescription without the sb-hc-
	// prefix: take both spellings.
	get := func(name string) string {
		if v := q.Get("sb-hc-" + name); v != "" {
			return v
		}
		return q.Get(name)
	}
	hs, _ := strconv.Atoi(get("statusCode"))
	if hs < 400 || hs > 599 {
		hs = http.StatusBadRequest // a rejection is an error; anything else is not a status to pass on
	}
	desc := get("statusDescription")
	code := status.CodeOfHTTP(hs)
	if n, err := strconv.Atoi(q.Get("hybrid-status")); err == nil && status.Code(n).Valid() && n != int(status.OK) {
		code = status.Code(n) // our own agent's precise code
	}
	cl.Fail(&rejection{err: &status.Error{Code: code, Msg: desc}, http: hs, desc: desc})
	// As in Azure: a rejection completes by failing the handshake with 410.
	http.Error(w, "rejected", http.StatusGone)
}

func (d *wsDoor) connect(w http.ResponseWriter, r *http.Request, hc, suffix, token string) {
	remote := remoteOf(r)
	// A plain GET, or any request we could not upgrade, is refused here:
	// before the listener hears of it.
	if err := wsconn.CheckUpgrade(r); err != nil {
		d.refuse(w, status.Errorf(status.BadRequest, "%v", err))
		return
	}
	az := &AzureOpen{Query: senderQuery(r.URL.RawQuery)}
	if suffix != "" {
		az.Suffix = escapedSuffix(strings.TrimPrefix(r.URL.EscapedPath(), "/$hc"), hc)
	}
	if t := r.URL.Query().Get("sb-hc-id"); validTracking(t) {
		az.Tracking = t
	}
	target := r.Header.Get(HeaderTarget)
	start := time.Now()
	pr, err := d.core.Open(d.ctx, OpenRequest{HC: hc, Token: token, Target: target, Remote: remote,
		Headers: connectHeaders(r.Header), Azure: az})
	d.core.observeOpen(hc, remote, start, err)
	if err != nil {
		d.core.stats.StreamsFailed.Add(1)
		d.log.Warn("stream refused", "hc", hc, "target", target, "remote", remote, "tracking", az.Tracking, "error", err, "door", "websocket")
		if rej, ok := asRejection(err); ok {
			refuseAs(w, rej.http, rej.desc, status.CodeOf(err), rej.desc)
			return
		}
		d.refuse(w, err)
		return
	}
	// Answer with the subprotocol the listener accepted, if the sender
	// offered it.
	var proto string
	if fc, ok := pr.Agent.Conn.(interface{ WebSocket() *wsconn.Conn }); ok {
		for _, p := range wsconn.Protocols(r.Header) {
			if p == fc.WebSocket().Subprotocol() {
				proto = p
			}
		}
	}
	if !wsconn.Upgrade(w, r, wsconn.UpgradeOptions{Subprotocol: proto}, func(ws *wsconn.Conn) {
		c := d.hold(ws)
		d.core.Splice(pr, Peer{Conn: c, Addr: remote, Serve: serveInline})
		<-c.done
	}) {
		pr.Abort()
		d.core.stats.StreamsFailed.Add(1)
		d.core.openAborted(hc)
	}
}

// connectHeaders are the sender's headers forwarded to the listener, as
// Azure does (its listeners, hyco-ws among them, complete the WebSocket
// handshake from Sec-WebSocket-Key and friends): all but the relay's own
// credential (the sender's Authorization is the application's, and goes
// through) and the header only the relay may set.
func connectHeaders(h http.Header) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		switch strings.ToLower(k) {
		case "servicebusauthorization", strings.ToLower(HeaderSenderKey):
			continue
		}
		if len(v) > 0 {
			out[k] = strings.Join(v, ", ")
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
	if err := wsconn.CheckUpgrade(r); err != nil {
		d.refuse(w, status.Errorf(status.BadRequest, "%v", err))
		return
	}
	remote := remoteOf(r)
	scheme, host := d.publicBase(r)
	ch := &wsControl{door: d, hc: hc, scheme: scheme, host: host, out: make(chan any, controlQueue),
		done: make(chan struct{}), pending: map[string]*exchange{}}
	agent := r.Header.Get(HeaderAgent)
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
		if status.CodeOf(err) == status.Busy && r.Header.Get(HeaderAgent) == "" && d.park(w, r, hc, err) {
			return
		}
		d.refuse(w, err)
		return
	}
	log := d.log.With("agent", agent, "remote", remote, "hc", hc, "door", "websocket")
	wsconn.Upgrade(w, r, wsconn.UpgradeOptions{}, func(ws *wsconn.Conn) { ch.run(ws, sess, log) })
}

// park holds an over-limit listener that is not hybrid's: Microsoft's
// clients reconnect at once after a closed channel, and open two new
// attempts for every refused handshake (hyco-ws handles both 'error' and
// 'close'), so a 429 would multiply their attempts. A parked channel is
// upgraded but never registered (it gets no notices), and closed with 1013
// (try again later) after parkTime: one reconnect per parked channel every
// parkTime, however the client loops. Beyond maxParked, the channel is
// closed with 1013 at once: the client spins, but its attempts do not
// multiply as a refused handshake would make them. It returns false only
// when the relay is stopping.
func (d *wsDoor) park(w http.ResponseWriter, r *http.Request, hc string, why error) bool {
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		return false
	}
	hold := d.parkTime
	if d.parked >= maxParked {
		hold = 0
	}
	d.parked++
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.parked--
		d.mu.Unlock()
	}()
	d.log.Debug("listener over the limit parked", "hc", hc, "remote", remoteOf(r), "reason", why)
	wsconn.Upgrade(w, r, wsconn.UpgradeOptions{}, func(ws *wsconn.Conn) {
		t := time.AfterFunc(hold, func() { ws.CloseWith(wsconn.CloseTryAgainLater, "listener limit reached; try again later") })
		defer t.Stop()
		stop := context.AfterFunc(d.ctx, func() { ws.CloseWith(wsconn.CloseGoingAway, "relay is stopping") })
		defer stop()
		io.Copy(io.Discard, ws) // answers pings; ends when either close fires or the client leaves
	})
	return true
}

// Parked reports how many over-limit listeners are held (for tests and
// status).
func (d *wsDoor) Parked() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.parked
}

// wsAccept is the accept notice of Azure's protocol.
type wsAccept struct {
	Accept struct {
		Address        string            `json:"address"`
		ID             string            `json:"id"`
		ConnectHeaders map[string]string `json:"connectHeaders"`
		RemoteEndpoint remoteEndpoint    `json:"remoteEndpoint"`
		// HybridAck (hybrid's own, ignored by Azure's clients) is the id
		// an agent may acknowledge the stream with, {"hybridAck":{"id":…}},
		// while it dials, to be given the dial timeout rather than the
		// join timeout.
		HybridAck string `json:"hybridAck,omitempty"`
	} `json:"accept"`
}

type remoteEndpoint struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
}

func endpointOf(addr string) remoteEndpoint {
	var e remoteEndpoint
	if h, p, err := net.SplitHostPort(addr); err == nil {
		e.Address = h
		e.Port, _ = strconv.Atoi(p)
	}
	return e
}

// wsControl is the core's handle on a WebSocket control channel.
type wsControl struct {
	door          *wsDoor
	hc            string
	scheme, host  string // of the rendezvous addresses handed out
	out           chan any
	pending       map[string]*exchange // HTTP-mode requests sent here (guarded by door.mu)
	expect        *exchange            // a response whose body comes next (read loop only)
	expectHead    *wsResponse          // that response
	expectSkip    bool                 // the next binary message belongs to no known response
	done          chan struct{}
	once          sync.Once
	mu            sync.Mutex
	ws            *wsconn.Conn // set on upgrade
	code          int          // close code and reason, once ending
	reason        string
	writerStopped chan struct{}
}

// address builds a rendezvous address of this channel's hybrid connection.
func (c *wsControl) address(suffix, query string, params ...string) string {
	u := url.URL{Scheme: c.scheme, Host: c.host, Path: "/$hc/" + c.hc}
	q := query
	for i := 0; i+1 < len(params); i += 2 {
		if q != "" {
			q += "&"
		}
		q += params[i] + "=" + url.QueryEscape(params[i+1])
	}
	s := u.String()
	if suffix != "" {
		s += suffix
	}
	if q != "" {
		s += "?" + q
	}
	return s
}

// Accept implements ListenerConn.
func (c *wsControl) Accept(_ context.Context, a Accept) error {
	var m wsAccept
	az := a.Azure
	if az == nil {
		az = &AzureOpen{}
	}
	id := a.ID.String()
	params := []string{"sb-hc-action", "accept", "sb-hc-id", id}
	m.Accept.ID = id
	if az.Tracking != "" {
		// The sender's tracking id names the stream, as in Azure; the
		// capability travels beside it.
		params = []string{"sb-hc-action", "accept", "sb-hc-id", az.Tracking, "sb-hc-ticket", id}
		m.Accept.ID = az.Tracking
	}
	m.Accept.Address = c.address(az.Suffix, az.Query, params...)
	m.Accept.HybridAck = id
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
	m.Accept.RemoteEndpoint = endpointOf(a.SenderAddr)
	if !c.push(&m) {
		return status.Errorf(status.NoListener, "control channel closed")
	}
	return nil
}

func header(h map[string]string, name string) string {
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

// push queues a message for the writer; a full queue ends the channel (a
// listener that does not read cannot serve streams).
func (c *wsControl) push(m any) bool {
	select {
	case <-c.done:
		return false
	default:
	}
	select {
	case c.out <- m:
		return true
	case <-c.done:
		return false
	default:
		c.door.log.Warn("control channel queue full; closing", "hc", c.hc, "queued", cap(c.out))
		c.end(wsconn.CloseInternal, "listener does not read its control channel")
		return false
	}
}

// Detached implements ListenerConn: one channel serves one hybrid
// connection, so the channel ends (1008 for a revoked or expired key).
func (c *wsControl) Detached(hc string, why error) { c.Close(why) }

// GoAway implements GoAwayer: Azure's protocol has no GOAWAY, so the
// channel closes with 1001 (going away) and the listener reconnects.
func (c *wsControl) GoAway(why error) { c.end(wsconn.CloseGoingAway, why.Error()) }

// Close implements ListenerConn: the close frame says why (1001 when the
// relay stops, 1008 for policy, 1011 otherwise).
func (c *wsControl) Close(why error) {
	reason := ""
	if why != nil {
		reason = why.Error()
	}
	c.end(closeCodeFor(why), reason)
}

// end ends the channel once: the close frame is written in the background
// (bounded by wsconn's close timeout, and waited for by a stopping relay),
// then the socket is closed.
func (c *wsControl) end(code int, reason string) {
	c.once.Do(func() {
		c.mu.Lock()
		c.code, c.reason = code, reason
		ws := c.ws
		c.mu.Unlock()
		close(c.done)
		if ws != nil {
			// The status first, here: whoever closes the socket first (this
			// goroutine's closer, or the upgrade handler as run returns)
			// sends it.
			ws.SetCloseStatus(code, reason)
			c.door.closers.Add(1)
			go func() {
				defer c.door.closers.Done()
				ws.Close()
			}()
		}
		c.failExchanges()
	})
}

// run serves an upgraded control channel until it ends.
func (c *wsControl) run(ws *wsconn.Conn, sess *Session, log hclog.Logger) {
	d := c.door
	c.mu.Lock()
	c.ws = ws
	code, reason := c.code, c.reason
	c.mu.Unlock()
	select {
	case <-c.done: // ended before the upgrade completed
		ws.CloseWith(code, reason)
		return
	default:
	}
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		ws.CloseWith(wsconn.CloseGoingAway, "relay is stopping")
		return
	}
	d.conns[c] = struct{}{}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.conns, c)
		d.mu.Unlock()
	}()
	ws.OnFrame(sess.Heard) // any frame is a sign of life for the session's ranking
	log.Info("agent connected")
	c.writerStopped = make(chan struct{})
	go c.writeLoop(ws)
	defer func() { <-c.writerStopped }()
	for { // liveness: writeLoop ends a channel silent for 2 ping intervals
		op, msg, err := ws.ReadMessage(maxControlMessage)
		if err != nil {
			var ce *wsconn.CloseError
			switch {
			case errors.Is(err, wsconn.ErrTooBig):
				log.Warn("oversize message on control channel; closed with 1009", "max_bytes", maxControlMessage)
			case errors.Is(err, wsconn.ErrProtocol):
				log.Warn("websocket protocol error on control channel; closed with 1002", "error", err)
			case errors.As(err, &ce):
				log.Info("agent disconnected", "code", ce.Code, "reason", ce.Reason)
				c.end(wsconn.CloseNormal, "")
				return
			default:
				log.Info("agent disconnected", "error", err)
			}
			c.end(wsconn.CloseInternal, "")
			return
		}
		if op == wsconn.OpBinary {
			c.responseBody(msg)
			continue
		}
		var m struct {
			RenewToken *struct {
				Token string `json:"token"`
			} `json:"renewToken"`
			Response *wsResponse `json:"response"`
			Ack      *struct {
				ID string `json:"id"`
			} `json:"hybridAck"`
		}
		if err := json.Unmarshal(msg, &m); err != nil {
			log.Warn("malformed message on control channel; closing with 1008", "error", err)
			c.end(wsconn.ClosePolicy, "malformed message")
			return
		}
		if m.RenewToken != nil {
			if err := sess.Renew(c.hc, m.RenewToken.Token); err != nil {
				log.Warn("token renewal refused; closing with 1008", "error", err)
				c.end(wsconn.ClosePolicy, err.Error())
				return
			}
		}
		if m.Response != nil {
			c.response(m.Response, log)
		}
		if m.Ack != nil {
			if b, err := hex.DecodeString(m.Ack.ID); err == nil && len(b) == len(StreamID{}) {
				sess.Ack(StreamID(b))
			}
		}
	}
}

func (c *wsControl) writeLoop(ws *wsconn.Conn) {
	defer close(c.writerStopped)
	interval := c.door.core.Config().PingInterval
	ping := time.NewTicker(interval)
	defer ping.Stop()
	for {
		var err error
		select {
		case <-c.done:
			return
		case m := <-c.out:
			ws.SetWriteDeadline(time.Now().Add(writeTimeout))
			switch m := m.(type) {
			case *requestOut:
				err = m.write(ws)
			default:
				var b []byte
				if b, err = json.Marshal(m); err == nil {
					err = ws.WriteMessage(wsconn.OpText, b)
				}
			}
			// No deadline between writes: pongs are written on their own.
			ws.SetWriteDeadline(time.Time{})
		case <-ping.C:
			if idle := ws.Idle(); idle > 2*interval {
				c.door.log.Warn("closing silent websocket control channel", "hc", c.hc, "silent", idle.Round(time.Second))
				c.end(wsconn.CloseGoingAway, "no answer to pings")
				return
			}
			ws.SetWriteDeadline(time.Now().Add(writeTimeout))
			err = ws.Ping(nil)
			ws.SetWriteDeadline(time.Time{})
		}
		if err != nil {
			c.end(wsconn.CloseInternal, "")
			return
		}
	}
}
