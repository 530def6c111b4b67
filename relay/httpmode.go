package relay

// HTTP mode (Azure's "request/response"): any HTTP client sends a plain
// request to https://<relay>/<hc>[/suffix][?query]; the relay hands it to a
// WebSocket listener of <hc> and streams the listener's response back.
//
//	sender            relay                                   listener
//	  |--HTTP request-->| check send token (sb-hc-token,         |
//	  |                 | ServiceBusAuthorization, Authorization)|
//	  |                 |--{"request":{address,id,requestTarget, |  body <= 64 KiB:
//	  |                 |   method,requestHeaders,body}} + body->|  on the control channel
//	  |                 |--{"request":{address,id}} ------------>|  larger or unknown size:
//	  |                 |<==== GET address (sb-hc-action=request)|  the listener dials the
//	  |                 |==== {"request":{...}} + body frames ==>|  rendezvous, gets it there
//	  |                 |<-- {"response":{requestId,statusCode,  |  on the control channel, or
//	  |                 |    statusDescription,responseHeaders,  |  on a rendezvous (always
//	  |                 |    body}} + body frames ---------------|  when over 64 KiB)
//	  |<-HTTP response--| hop-by-hop headers removed, Via added  |
//
// Bodies are streamed (a rendezvous carries one fragmented binary message
// each way) and bounded by relay.max_http_body; the relay answers 502 when
// no listener is attached, 503 when none can take the request, 504 when
// the listener has not answered within RequestTimeout.

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/httphdr"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wire"
	"github.com/hybridconn/hybrid/internal/wsconn"
)

// RequestTimeout is how long an HTTP-mode request waits for the listener's
// response (Azure's 60 s), and how long a response body may stall.
const RequestTimeout = 60 * time.Second

// maxControlBody is the largest request body sent on the control channel
// (Azure's 64 kB); larger ones, and bodies of unknown length, go over a
// rendezvous.
const maxControlBody = 64 << 10

// maxExchanges bounds the HTTP-mode requests in flight at one relay.
const maxExchanges = 4096

// exchange is one HTTP-mode request in flight.
type exchange struct {
	id, hc   string
	ch       *wsControl        // the control channel it was announced on
	rv       chan *wsconn.Conn // the listener's request rendezvous (buffered 1)
	resp     chan *ctlResponse // a response on the control channel (buffered 1)
	failed   chan error        // the control channel ended (buffered 1)
	done     chan struct{}     // the sender's side is finished
	rvTaken  bool              // guarded by door.mu: the rendezvous is single use
	sentFull bool              // the whole request went on the control channel
}

type ctlResponse struct {
	head *wsResponse
	body []byte
}

// wsResponse is a listener's {"response":{...}}. hyco-https writes
// statusCode as a number, the protocol's example as a string; header values
// may be numbers too.
type wsResponse struct {
	RequestID         string                     `json:"requestId"`
	StatusCode        json.RawMessage            `json:"statusCode"`
	StatusDescription string                     `json:"statusDescription"`
	ResponseHeaders   map[string]json.RawMessage `json:"responseHeaders"`
	Body              bool                       `json:"body"`
}

// status returns the response's HTTP status, or 0 if it is not one.
func (r *wsResponse) status() int {
	s := strings.Trim(string(r.StatusCode), `"`)
	n, err := strconv.Atoi(s)
	if err != nil || n < 100 || n > 599 || n == http.StatusSwitchingProtocols {
		return 0
	}
	return n
}

// headers returns the response headers as strings, hop-by-hop ones (and
// those the Connection header names) dropped.
func (r *wsResponse) headers() http.Header {
	all := http.Header{}
	for k, raw := range r.ResponseHeaders {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			var arr []string
			if json.Unmarshal(raw, &arr) == nil && len(arr) > 0 {
				for _, v := range arr {
					all.Add(k, v)
				}
				continue
			}
			s = strings.Trim(string(raw), `"`) // a number or a boolean
		}
		all.Add(k, s)
	}
	h := http.Header{}
	httphdr.EndToEnd(h, all)
	return h
}

// wsRequest is the relay's {"request":{...}}; an address-only one tells
// the listener to fetch the request over the rendezvous.
type wsRequest struct {
	Request struct {
		Address        string            `json:"address"`
		ID             string            `json:"id"`
		RequestTarget  string            `json:"requestTarget,omitempty"`
		Method         string            `json:"method,omitempty"`
		RequestHeaders map[string]string `json:"requestHeaders,omitempty"`
		Body           *bool             `json:"body,omitempty"`
		RemoteEndpoint *remoteEndpoint   `json:"remoteEndpoint,omitempty"`
	} `json:"request"`
}

// requestOut is a request message (and its body) for a control channel's
// writer: both go out back to back.
type requestOut struct {
	msg  []byte
	body []byte
	has  bool
}

func (o *requestOut) write(ws *wsconn.Conn) error {
	if !o.has {
		return ws.WriteMessage(wsconn.OpText, o.msg)
	}
	return ws.WriteMessages([]byte{wsconn.OpText, wsconn.OpBinary}, [][]byte{o.msg, o.body})
}

// requestListeners returns how many listeners hc has, and those that can
// take HTTP-mode requests (WebSocket ones: the native protocol carries
// streams only), in turn.
func (c *Core) requestListeners(hc string) (int, []*wsControl) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ls := c.hcLocked(hc).listeners
	var out []*wsControl
	for i := range ls {
		s := ls[(i+c.requestTurn)%len(ls)] // successive requests start with successive listeners
		if wc, ok := s.conn.(*wsControl); ok {
			out = append(out, wc)
		}
	}
	c.requestTurn++
	return len(ls), out
}

// httpError answers an HTTP-mode request from the relay itself: no Via
// header, so the sender can tell (as Azure documents).
func httpError(w http.ResponseWriter, code status.Code, httpStatus int, msg string) {
	w.Header().Set(HeaderStatus, strconv.Itoa(int(code)))
	http.Error(w, msg, httpStatus)
}

// serveRequest is HTTP mode: every path of the http listener that is not
// the relay's own (/$hc/, /healthz, /metrics, /status).
func (d *wsDoor) serveRequest(w http.ResponseWriter, r *http.Request) {
	if d.isClosing() {
		httpError(w, status.ShuttingDown, http.StatusServiceUnavailable, "relay is stopping")
		return
	}
	hc, suffix, ok := d.core.auth.Load().lookup(strings.TrimPrefix(r.URL.Path, "/"))
	if !ok {
		httpError(w, status.NotFound, http.StatusNotFound, "no hybrid connection named in "+strconv.Quote(r.URL.Path))
		return
	}
	if r.Method == http.MethodConnect {
		httpError(w, status.BadRequest, http.StatusMethodNotAllowed, "CONNECT is not relayed")
		return
	}
	if r.Header.Get("Upgrade") != "" {
		httpError(w, status.BadRequest, http.StatusBadRequest, "HTTP mode relays no upgrades: WebSocket senders connect at /$hc/"+hc+"?sb-hc-action=connect")
		return
	}
	// The relay's credential, in Azure's order: sb-hc-token and
	// ServiceBusAuthorization are always taken out; Authorization only when
	// neither is there (otherwise it is the application's, and passes).
	hdr := r.Header.Clone()
	token := r.URL.Query().Get("sb-hc-token")
	if t := hdr.Get("ServiceBusAuthorization"); t != "" && token == "" {
		token = t
	}
	hdr.Del("ServiceBusAuthorization")
	if token == "" {
		token = hdr.Get("Authorization")
		hdr.Del("Authorization")
	}
	remote := remoteOf(r)
	grant, err := d.core.authorize(hc, token, sas.Send, remote)
	if err != nil {
		d.log.Warn("http request refused", "hc", hc, "remote", remote, "error", err)
		d.refuse(w, err)
		return
	}
	hdr.Del(HeaderSenderKey) // only the relay says which key the sender used
	set := d.settings()
	if r.ContentLength > set.maxBody {
		httpError(w, status.BadRequest, http.StatusRequestEntityTooLarge, "request body over relay.max_http_body")
		return
	}
	all, chans := d.core.requestListeners(hc)
	if all == 0 {
		if d.pipeRequest(w, r, hc) {
			return
		}
		httpError(w, status.NoListener, http.StatusBadGateway, "no listener for "+strconv.Quote(hc))
		return
	}
	if len(chans) == 0 {
		httpError(w, status.NoListener, http.StatusServiceUnavailable,
			"no listener of "+strconv.Quote(hc)+" takes HTTP requests (only WebSocket listeners do)")
		return
	}

	// The id carries the relay's prefix, so a rendezvous for it that lands
	// on another relay of the fleet is piped here.
	idb, _ := d.core.newID()
	ex := &exchange{id: hex.EncodeToString(idb[:]), hc: hc, rv: make(chan *wsconn.Conn, 1),
		resp: make(chan *ctlResponse, 1), failed: make(chan error, 1), done: make(chan struct{})}
	d.mu.Lock()
	if len(d.exchanges) >= maxExchanges {
		d.mu.Unlock()
		httpError(w, status.Busy, http.StatusServiceUnavailable, "too many HTTP requests in flight")
		return
	}
	d.exchanges[ex.id] = ex
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.exchanges, ex.id)
		if ex.ch != nil {
			delete(ex.ch.pending, ex.id)
		}
		d.mu.Unlock()
		close(ex.done)
	}()

	// What the listener gets: Azure's requestTarget is the path with the
	// hybrid connection's name, and the query without sb- parameters.
	escSuffix := ""
	if suffix != "" {
		escSuffix = escapedSuffix(r.URL.EscapedPath(), hc)
	}
	query := senderQuery(r.URL.RawQuery)
	target := "/" + strings.TrimPrefix((&url.URL{Path: "/" + hc}).EscapedPath(), "/") + escSuffix
	if query != "" {
		target += "?" + query
	}
	hdrs := map[string]string{}
	for k, v := range hdr {
		if !httphdr.HopByHop(r.Header, k) && len(v) > 0 {
			hdrs[k] = strings.Join(v, ", ")
		}
	}
	hdrs[HeaderSenderKey] = grant.Rule
	ns := d.core.auth.Load().verifier.Namespace
	if v := hdrs["Via"]; v != "" {
		hdrs["Via"] = v + ", 1.1 " + ns
	} else {
		hdrs["Via"] = "1.1 " + ns
	}
	var full wsRequest
	full.Request.ID = ex.id
	full.Request.RequestTarget = target
	full.Request.Method = r.Method
	full.Request.RequestHeaders = hdrs
	hasBody := r.ContentLength != 0
	full.Request.Body = &hasBody
	re := endpointOf(remote)
	full.Request.RemoteEndpoint = &re

	// Small requests travel whole on the control channel; the others only
	// as an address.
	var body []byte
	inline := r.ContentLength >= 0 && r.ContentLength <= maxControlBody
	if inline && hasBody {
		var err error
		body, err = io.ReadAll(io.LimitReader(r.Body, maxControlBody+1))
		if err != nil || int64(len(body)) != r.ContentLength {
			httpError(w, status.BadRequest, http.StatusBadRequest, "request body shorter than its Content-Length")
			return
		}
	}
	var sent *wsControl
	for _, c := range chans {
		full.Request.Address = c.address(escSuffix, query, "sb-hc-action", "request", "sb-hc-id", ex.id)
		var out *requestOut
		if inline {
			msg, _ := json.Marshal(&full)
			out = &requestOut{msg: msg, body: body, has: hasBody}
		} else {
			var short wsRequest
			short.Request.Address, short.Request.ID = full.Request.Address, ex.id
			msg, _ := json.Marshal(&short)
			out = &requestOut{msg: msg}
		}
		d.mu.Lock()
		c.pending[ex.id] = ex
		ex.ch = c
		d.mu.Unlock()
		if c.push(out) {
			sent = c
			break
		}
		d.mu.Lock()
		delete(c.pending, ex.id)
		ex.ch = nil
		d.mu.Unlock()
	}
	if sent == nil {
		httpError(w, status.NoListener, http.StatusServiceUnavailable, "no listener of "+strconv.Quote(hc)+" took the request")
		return
	}
	ex.sentFull = inline
	log := d.log.With("hc", hc, "request", ex.id, "method", r.Method, "remote", remote)

	t := time.NewTimer(d.requestTimeout)
	defer t.Stop()
	select {
	case cr := <-ex.resp:
		d.writeResponse(w, r, cr.head, bytes.NewReader(cr.body), cr.head.Body, set.maxBody, ns, log)
	case rv := <-ex.rv:
		d.overRendezvous(w, r, rv, ex, &full, set.maxBody, ns, log)
	case err := <-ex.failed:
		log.Warn("listener went away before it answered", "error", err)
		httpError(w, status.NoListener, http.StatusBadGateway, "the listener went away before it answered")
	case <-t.C:
		log.Warn("listener did not answer in time", "timeout", d.requestTimeout)
		httpError(w, status.Timeout, http.StatusGatewayTimeout, "the listener did not answer within "+d.requestTimeout.String())
	case <-r.Context().Done():
	case <-d.ctx.Done():
		httpError(w, status.ShuttingDown, http.StatusServiceUnavailable, "relay is stopping")
	}
}

// overRendezvous completes an exchange on the listener's rendezvous: the
// request first if it did not go whole on the control channel, then the
// response. Both ways at once: a listener (an API) may answer before it has
// read the whole body, as HTTP servers do.
func (d *wsDoor) overRendezvous(w http.ResponseWriter, r *http.Request, rv *wsconn.Conn, ex *exchange, full *wsRequest,
	maxBody int64, ns string, log hclog.Logger) {
	// A sender that leaves, or a stopping relay, ends the exchange at once.
	gone := func() { rv.CloseWith(wsconn.CloseGoingAway, "sender went away or relay stopping") }
	stopR := context.AfterFunc(r.Context(), gone)
	defer stopR()
	stopD := context.AfterFunc(d.ctx, gone)
	defer stopD()
	defer rv.CloseWith(wsconn.CloseNormal, "")
	// The response must begin within requestTimeout of the request having
	// been passed on (the upload's progress pushes the deadline out).
	rv.SetReadDeadline(time.Now().Add(d.requestTimeout))
	sent := make(chan error, 1)
	if ex.sentFull {
		sent <- nil
	} else {
		go func() { sent <- d.passRequest(rv, r.Body, full, maxBody) }()
		defer func() {
			// The writer may be blocked reading the sender's body: a read
			// deadline ends that, and it is waited for.
			select {
			case <-sent:
			default:
				rv.CloseWith(wsconn.CloseGoingAway, "exchange over")
				http.NewResponseController(w).SetReadDeadline(time.Now())
				<-sent
			}
		}()
	}
	op, msg, err := rv.ReadMessage(maxControlMessage)
	var m struct {
		Response *wsResponse `json:"response"`
	}
	if err == nil && (op != wsconn.OpText || json.Unmarshal(msg, &m) != nil || m.Response == nil) {
		err = errors.New("the listener sent something other than a response")
	}
	if err != nil {
		var werr error
		select {
		case werr = <-sent:
			sent <- werr // for the deferred wait
		case <-time.After(time.Second): // the reader failed on its own
		}
		switch {
		case errors.Is(werr, errBodyTooLarge):
			log.Warn("request body over relay.max_http_body", "max_bytes", maxBody)
			httpError(w, status.BadRequest, http.StatusRequestEntityTooLarge, "request body over relay.max_http_body")
		case errors.Is(err, os.ErrDeadlineExceeded):
			log.Warn("listener did not answer in time", "timeout", d.requestTimeout)
			httpError(w, status.Timeout, http.StatusGatewayTimeout, "the listener did not answer within "+d.requestTimeout.String())
		default:
			log.Warn("no response on the rendezvous", "error", err, "request_error", werr)
			httpError(w, status.Unreachable, http.StatusBadGateway, "the listener's rendezvous ended without a response")
		}
		return
	}
	var body io.Reader
	if m.Response.Body {
		_, mr, err := rv.NextReader()
		if err != nil {
			httpError(w, status.Unreachable, http.StatusBadGateway, "the listener's rendezvous ended before the response body")
			return
		}
		// A body may stream for long; each read must come within the
		// timeout (Azure: an idle response is ended after 60 s).
		body = &idleReader{r: mr, conn: rv, idle: d.requestTimeout}
	}
	d.writeResponse(w, r, m.Response, body, m.Response.Body, maxBody, ns, log)
}

var errBodyTooLarge = errors.New("request body over relay.max_http_body")

// passRequest writes the whole request on the rendezvous: its message, then
// its body as one binary message, at most maxBody bytes, each write within
// the request timeout. Progress pushes the response deadline out.
func (d *wsDoor) passRequest(rv *wsconn.Conn, body io.Reader, full *wsRequest, maxBody int64) error {
	msg, _ := json.Marshal(full)
	rv.SetWriteDeadline(time.Now().Add(d.requestTimeout))
	if err := rv.WriteMessage(wsconn.OpText, msg); err != nil {
		return err
	}
	if !*full.Request.Body {
		return nil
	}
	mw, err := rv.NewMessageWriter(wsconn.OpBinary)
	if err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	var n int64
	for {
		k, rerr := body.Read(buf)
		if k > 0 {
			if n += int64(k); n > maxBody {
				rv.CloseWith(wsconn.CloseTooBig, "request body too large")
				return errBodyTooLarge
			}
			now := time.Now()
			rv.SetWriteDeadline(now.Add(d.requestTimeout))
			rv.SetReadDeadline(now.Add(d.requestTimeout))
			if _, err := mw.Write(buf[:k]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	err = mw.Close()
	rv.SetReadDeadline(time.Now().Add(d.requestTimeout))
	return err
}

// idleReader sets a read deadline before each read.
type idleReader struct {
	r    io.Reader
	conn *wsconn.Conn
	idle time.Duration
}

func (i *idleReader) Read(p []byte) (int, error) {
	i.conn.SetReadDeadline(time.Now().Add(i.idle))
	return i.r.Read(p)
}

// writeResponse passes a listener's response to the sender: its status
// and reason phrase (statusDescription, as Azure passes it), its headers
// without hop-by-hop ones, Via, and the body streamed, at most maxBody
// bytes (a longer one is cut, and the sender's connection aborted so it
// cannot take the truncation for the whole).
func (d *wsDoor) writeResponse(w http.ResponseWriter, r *http.Request, head *wsResponse, body io.Reader, hasBody bool,
	maxBody int64, ns string, log hclog.Logger) {
	code := head.status()
	if code == 0 {
		log.Warn("listener answered with an invalid status", "status", string(head.StatusCode))
		httpError(w, status.Internal, http.StatusBadGateway, "the listener answered with an invalid status")
		return
	}
	h := w.Header()
	for k, v := range head.headers() {
		h[k] = v
	}
	h.Add("Via", "1.1 "+ns)
	if reason := reasonPhrase(head.StatusDescription, ""); reason != "" && reason != http.StatusText(code) && r.ProtoMajor == 1 {
		if hj, ok := w.(http.Hijacker); ok {
			writeWithReason(hj, r, code, reason, h, body, hasBody, maxBody, log)
			return
		}
	}
	w.WriteHeader(code)
	if !hasBody || body == nil {
		return
	}
	rc := http.NewResponseController(w)
	n, err := copyFlushing(w, rc.Flush, body, maxBody)
	if errors.Is(err, errBodyTooLarge) {
		log.Warn("response body over relay.max_http_body; cut", "max_bytes", maxBody)
		panic(http.ErrAbortHandler)
	}
	if err != nil {
		log.Warn("response body ended early", "error", err, "bytes", n)
		panic(http.ErrAbortHandler)
	}
}

// copyFlushing copies body to w, at most max bytes (errBodyTooLarge, with
// nothing of the excess written, when there are more), flushing after
// each read: a response streams (server-sent events, a long download)
// instead of waiting in the server's buffers for more.
func copyFlushing(w io.Writer, flush func() error, body io.Reader, max int64) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var n int64
	for {
		k, err := body.Read(buf)
		if k > 0 {
			if n += int64(k); n > max {
				return n, errBodyTooLarge
			}
			if _, werr := w.Write(buf[:k]); werr != nil {
				return n, werr
			}
			if ferr := flush(); ferr != nil {
				return n, ferr
			}
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// copyBufs holds the buffers of copyFlushing.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// writeWithReason writes the response itself on the sender's connection,
// since net/http always writes the standard reason phrase: HTTP/1.1, the
// body chunked (or none for HEAD and bodiless statuses), and the
// connection closed after it.
func writeWithReason(hj http.Hijacker, r *http.Request, code int, reason string, h http.Header,
	body io.Reader, hasBody bool, maxBody int64, log hclog.Logger) {
	conn, bw, err := hj.Hijack()
	if err != nil {
		log.Warn("cannot write the listener's reason phrase", "error", err)
		return
	}
	defer conn.Close()
	h = h.Clone()
	if h.Get("Date") == "" {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	// The head, then the body as it comes, until the connection closes
	// (a listener's Content-Length is not trusted to frame it).
	withBody := hasBody && body != nil && r.Method != http.MethodHead && code != http.StatusNoContent && code != http.StatusNotModified && code >= 200
	h.Del("Content-Length")
	h.Del("Transfer-Encoding")
	h.Set("Connection", "close")
	if !withBody && r.Method != http.MethodHead && code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified {
		h.Set("Content-Length", "0")
	}
	fmt.Fprintf(bw, "HTTP/1.1 %03d %s\r\n", code, reason)
	h.Write(bw)
	if _, err := bw.WriteString("\r\n"); err != nil {
		log.Warn("response to the sender ended early", "error", err)
		return
	}
	if !withBody {
		bw.Flush()
		return
	}
	if n, err := copyFlushing(bw, bw.Flush, body, maxBody); err != nil {
		log.Warn("response to the sender ended early", "error", err, "bytes", n)
		if tc, ok := conn.(interface{ SetLinger(int) error }); ok {
			tc.SetLinger(0) // a reset: the sender cannot take the cut for the end
		}
	}
}

// pipeRequest hands a request for a connection with no listener here to
// a relay of the fleet that has one, with its client connection: that
// relay answers it and closes the connection (the request goes with
// "Connection: close" added), so a pipe lives for one request, and a
// client's next request is balanced again. A connection that came from
// another relay is not passed on again (one hop). It reports whether it
// took the request (answered, or piped).
func (d *wsDoor) pipeRequest(w http.ResponseWriter, r *http.Request, hc string) bool {
	f := d.core.fleet
	if f == nil || piped(r.Context()) {
		return false
	}
	holders := f.Holders(hc)
	if len(holders) == 0 {
		return false
	}
	conn, head, err := hijackFor(w, requestHead(r))
	if err != nil {
		return false
	}
	remote := conn.RemoteAddr().String()
	var last error
	for _, p := range holders {
		peer, err := f.Pipe(d.ctx, p, wire.PipeHTTP, remote, head)
		if err == nil {
			d.core.PassThrough(conn, peer, false)
			return true
		}
		last = err
	}
	d.log.Warn("http request for another relay of the fleet failed", "hc", hc, "remote", remote, "error", last)
	answerRaw(conn, http.StatusBadGateway, "no listener for "+strconv.Quote(hc)+": "+last.Error())
	return true
}

// requestHead is r's request line and header as the client sent them
// (the framing headers the server took out put back), with "close" added
// to Connection, for a relay that reads the body, if any, from the
// connection itself.
func requestHead(r *http.Request) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s %s\r\nHost: %s\r\n", r.Method, r.RequestURI, r.Proto, r.Host)
	h := r.Header.Clone()
	h.Del("Transfer-Encoding")
	switch {
	case len(r.TransferEncoding) > 0:
		h.Del("Content-Length")
		h["Transfer-Encoding"] = r.TransferEncoding
	case r.ContentLength > 0:
		h.Set("Content-Length", strconv.FormatInt(r.ContentLength, 10))
	}
	h.Add("Connection", "close")
	h.Write(&b)
	b.WriteString("\r\n")
	return b.Bytes()
}

// requestRendezvous is sb-hc-action=request: a listener takes the
// rendezvous of one HTTP-mode request. Like accept, the address (its
// random id) is the capability, and it is single use.
func (d *wsDoor) requestRendezvous(w http.ResponseWriter, r *http.Request, hc string, q url.Values) {
	if err := wsconn.CheckUpgrade(r); err != nil {
		d.refuse(w, status.Errorf(status.BadRequest, "%v", err))
		return
	}
	id := q.Get("sb-hc-id")
	if b, err := hex.DecodeString(id); err == nil && len(b) == len(StreamID{}) && d.pipeForeign(w, r, StreamID(b)) {
		return
	}
	d.mu.Lock()
	ex := d.exchanges[id]
	if ex == nil || ex.hc != hc || ex.rvTaken {
		d.mu.Unlock()
		d.refuse(w, status.Errorf(status.NotFound, "no pending request %q for %q (expired or already taken)", id, hc))
		return
	}
	ex.rvTaken = true
	d.mu.Unlock()
	wsconn.Upgrade(w, r, wsconn.UpgradeOptions{}, func(ws *wsconn.Conn) {
		ex.rv <- ws // buffered, single use
		<-ex.done
	})
}

// response takes a listener's response from its control channel; its body,
// if any, is the next binary message.
func (c *wsControl) response(m *wsResponse, log hclog.Logger) {
	c.door.mu.Lock()
	ex := c.pending[m.RequestID]
	delete(c.pending, m.RequestID)
	c.door.mu.Unlock()
	if ex == nil {
		log.Debug("response to no request in flight on this channel", "request", m.RequestID)
		c.expectSkip = m.Body
		return
	}
	if m.Body {
		c.expect = ex
		c.expectHead = m
		return
	}
	ex.deliver(&ctlResponse{head: m})
}

// responseBody takes a binary message from the control channel: the body
// of the response just read. Anything else is dropped (hyco-https sends an
// empty frame after a bodyless response).
func (c *wsControl) responseBody(msg []byte) {
	if ex := c.expect; ex != nil {
		c.expect = nil
		ex.deliver(&ctlResponse{head: c.expectHead, body: msg})
		return
	}
	c.expectSkip = false
}

func (ex *exchange) deliver(r *ctlResponse) {
	select {
	case ex.resp <- r:
	default:
	}
}

// failExchanges fails the requests in flight on an ending channel.
func (c *wsControl) failExchanges() {
	c.door.mu.Lock()
	exs := make([]*exchange, 0, len(c.pending))
	for id, ex := range c.pending {
		exs = append(exs, ex)
		delete(c.pending, id)
	}
	c.door.mu.Unlock()
	for _, ex := range exs {
		select {
		case ex.failed <- status.Errorf(status.NoListener, "control channel ended"):
		default:
		}
	}
}
