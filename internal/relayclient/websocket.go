package relayclient

// The WebSocket client speaks Azure Relay's Hybrid Connections protocol on
// the relay's http port (see docs/protocol.md, "WebSocket fallback"):
//
//   - Open: a sender's WebSocket at /$hc/<hc>?sb-hc-action=connect, with the
//     token in ServiceBusAuthorization and the target in Hybrid-Target.
//   - Listen returns a Control that opens nothing by itself: Azure's control
//     channel serves one hybrid connection, so every Attach opens its own
//     /$hc/<hc>?sb-hc-action=listen WebSocket. If any of them ends without
//     Detach or Close, the whole Control ends (the agent reconnects).
//   - Join dials the accept notice's rendezvous address; Reject dials it with
//     sb-hc-statusCode (and hybrid-status) and expects 410.
//   - HTTP mode: a {"request":{...}} notice becomes an Event.Request
//     (httpreq.go), answered on the control channel or over the request's
//     rendezvous.
//   - Renew sends {"renewToken":{"token":...}}; Azure answers nothing, so a
//     refusal shows up as the channel closing.
//   - Check is hybrid's extension: GET /$hc/<hc>?sb-hc-action=check, which
//     Azure Relay does not have; against such a relay a listen right is
//     checked by a listen attempt that detaches at once.
//
// Liveness: the client pings each control channel every PingInterval and
// ends it after three intervals without a frame (the relay's pings or its
// pongs keep it alive). The WebSocket itself is internal/wsconn's: streams
// are *wsconn.Conn, whose CloseWrite is a close frame (half-close).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wsconn"
)

// ProbeTimeout bounds auto mode's probe of the native control port.
const ProbeTimeout = 3 * time.Second

// Names of the WebSocket protocol (mirrors of the relay's).
const (
	headerTarget    = "Hybrid-Target"
	headerSenderKey = "Hybrid-Sender-Key"
	headerStatus    = "Hybrid-Status"
	headerAgent     = "Hybrid-Agent"
	headerAuth      = "ServiceBusAuthorization"
)

type wsClient struct {
	n *native
}

func newWS(n *native) *wsClient { return &wsClient{n: n} }

func (c *wsClient) scheme() string {
	if c.n.tls != nil {
		return "wss"
	}
	return "ws"
}

func (c *wsClient) String() string {
	return c.scheme() + "://" + net.JoinHostPort(c.n.ep.Host, strconv.Itoa(c.n.ep.HTTP))
}

func (c *wsClient) url(hc, action string) string {
	u := url.URL{Scheme: c.scheme(), Host: net.JoinHostPort(c.n.ep.Host, strconv.Itoa(c.n.ep.HTTP)),
		Path: "/$hc/" + hc, RawQuery: "sb-hc-action=" + action}
	return u.String()
}

// dialWS opens a WebSocket to rawURL on the relay (its http port unless
// the URL names another). A refused upgrade is returned as a *status.Error
// built from the HTTP answer.
func (c *wsClient) dialWS(ctx context.Context, rawURL string, hdr http.Header, timeout time.Duration) (*wsconn.Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("websocket address %q: %w", rawURL, err)
	}
	port := c.n.ep.HTTP
	if p := u.Port(); p != "" {
		port, _ = strconv.Atoi(p)
	}
	return c.dialWSAt(ctx, c.n.ep.Host, port, u, hdr, timeout)
}

// dialWSAt opens a WebSocket to u over a TCP connection to host:port, and
// nowhere else whatever u says.
func (c *wsClient) dialWSAt(ctx context.Context, host string, port int, u *url.URL, hdr http.Header, timeout time.Duration) (*wsconn.Conn, error) {
	conn, err := c.n.dialHost(ctx, host, port)
	if err != nil {
		return nil, err
	}
	ws, err := wsconn.Dial(ctx, conn, u, wsconn.DialOptions{Header: hdr, Timeout: timeout})
	var he *wsconn.HandshakeError
	if errors.As(err, &he) {
		return nil, refusal(he)
	}
	return ws, err
}

// refusal turns a refused handshake's answer into a *status.Error: the
// relay's Hybrid-Status code when it sent one, else the HTTP status's.
func refusal(he *wsconn.HandshakeError) error {
	code := status.CodeOfHTTP(he.StatusCode)
	if n, err := strconv.Atoi(he.Header.Get(headerStatus)); err == nil && status.Code(n).Valid() {
		code = status.Code(n)
	}
	msg := strings.TrimSpace(string(he.Body))
	if msg == "" {
		msg = he.Status
	}
	if code == status.OK {
		code = status.Internal
		msg = "unexpected answer to websocket upgrade: " + he.Status
	}
	return &status.Error{Code: code, Msg: msg}
}

func (c *wsClient) Transport() string { return TransportWebSocket }

func (c *wsClient) Open(ctx context.Context, hc, token, target string) (net.Conn, error) {
	return c.OpenStream(ctx, OpenRequest{HC: hc, Token: token, Target: target})
}

// OpenStream opens a sender's WebSocket. Sessions and warm connections are
// native only; early data is simply the stream's first bytes.
func (c *wsClient) OpenStream(ctx context.Context, req OpenRequest) (net.Conn, error) {
	h := http.Header{}
	h.Set(headerAuth, req.Token)
	if req.Target != "" {
		h.Set(headerTarget, req.Target)
	}
	ws, err := c.dialWS(ctx, c.url(req.HC, "connect"), h, OpenTimeout)
	if err != nil {
		return nil, err
	}
	if len(req.Early) > 0 {
		ws.SetWriteDeadline(deadlineOf(ctx, HandshakeTimeout))
		_, err := ws.Write(req.Early)
		ws.SetWriteDeadline(time.Time{})
		if err != nil {
			ws.Close()
			return nil, fmt.Errorf("websocket %s: %w", c, err)
		}
	}
	return ws, nil
}

// Probe implements Client: the http port answers a GET /healthz (any HTTP
// answer will do: Azure Relay has no /healthz, but it does answer).
func (c *wsClient) Probe(ctx context.Context) error {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return c.n.dial(ctx, c.n.ep.HTTP) },
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(c.n.ep.Host, strconv.Itoa(c.n.ep.HTTP))+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: HandshakeTimeout}).Do(req)
	if err != nil {
		return fmt.Errorf("relay %s: %w", c, err)
	}
	resp.Body.Close()
	return nil
}

// Connect implements Client: Azure's protocol has no sender sessions.
func (c *wsClient) Connect(context.Context, string, string) (Control, error) {
	return nil, ErrUnsupported
}

// Check asks the relay with hybrid's sb-hc-action=check extension (plain
// HTTP, no upgrade). Azure Relay itself has no such action.
func (c *wsClient) Check(ctx context.Context, hc, token string, right sas.Rights) error {
	var r string
	switch right {
	case sas.Listen:
		r = "listen"
	case sas.Send:
		r = "send"
	case sas.Manage:
		r = "manage"
	default:
		return status.Errorf(status.BadRequest, "unknown right %d", right)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return c.n.dial(ctx, c.n.ep.HTTP) },
	}
	defer tr.CloseIdleConnections()
	hc2 := &http.Client{Transport: tr, Timeout: HandshakeTimeout}
	u := "http://" + net.JoinHostPort(c.n.ep.Host, strconv.Itoa(c.n.ep.HTTP)) + "/$hc/" + url.PathEscape(hc) +
		"?sb-hc-action=check&hybrid-right=" + r
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set(headerAuth, token)
	resp, err := hc2.Do(req)
	if err != nil {
		return fmt.Errorf("relay %s: %w", c, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode == http.StatusOK && resp.Header.Get(headerStatus) == "0" {
		return nil
	}
	if resp.Header.Get(headerStatus) == "" {
		// Not a hybrid relay (Azure Relay has no check action).
		return c.checkForeign(ctx, hc, token, right)
	}
	code := status.CodeOfHTTP(resp.StatusCode)
	if n, err := strconv.Atoi(resp.Header.Get(headerStatus)); err == nil && status.Code(n).Valid() {
		code = status.Code(n)
	}
	if code == status.OK {
		return status.Errorf(status.Version, "relay %s does not support credential checks over websocket", c)
	}
	return &status.Error{Code: code, Msg: strings.TrimSpace(string(body))}
}

// WithDialer makes the client open its TCP connections (to the relay, a
// rendezvous host or a CONNECT proxy) with dial: names and ports are still
// checked as always, only the way there changes. For tests that play a
// relay under a name DNS does not know (an Azure namespace).
func WithDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return func(o *options) { o.dial = dial }
}

// ErrNotCheckable says a relay cannot tell whether a key is good without
// side effects: a send right on a relay that is not hybrid's could only be
// tested by opening a stream (which a listener would serve).
var ErrNotCheckable = errors.New("cannot be checked at this relay without opening a stream")

// checkForeign checks a key at a relay without hybrid's check action
// (Azure Relay): a listen right by opening a control channel and leaving at
// once (a listener that is gone before it could be offered anything); a
// send right not at all (ErrNotCheckable).
func (c *wsClient) checkForeign(ctx context.Context, hc, token string, right sas.Rights) error {
	if !right.Has(sas.Listen) {
		return fmt.Errorf("send key for %q at %s: %w", hc, c, ErrNotCheckable)
	}
	h := http.Header{}
	h.Set(headerAuth, token)
	ws, err := c.dialWS(ctx, c.url(hc, "listen"), h, HandshakeTimeout)
	if err != nil {
		return err
	}
	ws.CloseWith(wsconn.CloseNormal, "key check")
	return nil
}

func (c *wsClient) Listen(ctx context.Context, agent, version string) (Control, error) {
	// Nothing to open until Attach; make sure the http port answers.
	conn, err := c.n.dial(ctx, c.n.ep.HTTP)
	if err != nil {
		return nil, err
	}
	conn.Close()
	return &wsControl{client: c, agent: agent, chans: map[string]*wsChan{}, addrs: map[StreamID]rendezvous{},
		events: make(chan Event, 64), done: make(chan struct{})}, nil
}

type wsControl struct {
	client *wsClient
	agent  string
	events chan Event

	mu    sync.Mutex
	chans map[string]*wsChan
	addrs map[StreamID]rendezvous // rendezvous addresses of notified streams
	err   error
	once  sync.Once
	done  chan struct{}
	wg    sync.WaitGroup // read and ping loops
	// rejects counts rejections still dialling; they end on their own
	// within HandshakeTimeout.
	rejects sync.WaitGroup
}

type wsChan struct {
	hc      string
	ws      *wsconn.Conn
	wmu     sync.Mutex  // our writes, each with its write deadline
	leaving atomic.Bool // ended by Detach or Close
	// bodyFor is a control-channel HTTP request whose body is the next
	// binary message (read loop only).
	bodyFor *Request
}

func (c *wsControl) Events() <-chan Event  { return c.events }
func (c *wsControl) Done() <-chan struct{} { return c.done }
func (c *wsControl) Session() SessionID    { return SessionID{} }
func (c *wsControl) Transport() string     { return TransportWebSocket }

// Ack implements Control. Azure's protocol has no acknowledgement (the
// rendezvous itself answers); a hybrid relay offers one in its accept
// notice (hybridAck), which buys the agent a dial longer than the relay's
// join timeout. Towards other relays it does nothing.
func (c *wsControl) Ack(id StreamID) error {
	c.mu.Lock()
	rv, ok := c.addrs[id]
	c.mu.Unlock()
	if !ok || rv.ack == "" || rv.ch == nil || rv.ch.ws == nil {
		return nil
	}
	var m struct {
		Ack struct {
			ID string `json:"id"`
		} `json:"hybridAck"`
	}
	m.Ack.ID = rv.ack
	return rv.ch.sendJSON(&m)
}

// Health implements Control: not in Azure's protocol; the relay learns of
// an unreachable endpoint from the rejection.
func (c *wsControl) Health(string, status.Code, string) error { return nil }

// Park implements Control: not in Azure's protocol.
func (c *wsControl) Park(context.Context) (*Parked, error) { return nil, ErrUnsupported }

// Warm implements Control: not in Azure's protocol.
func (c *wsControl) Warm(context.Context) (*Warm, error) { return nil, ErrUnsupported }

func (c *wsControl) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *wsControl) fail(err error) {
	c.once.Do(func() {
		c.mu.Lock()
		c.err = err
		chans := c.chans
		c.chans = map[string]*wsChan{}
		c.mu.Unlock()
		close(c.done)
		for _, ch := range chans {
			ch.leaving.Store(true)
			ch.ws.Close()
		}
		go func() { c.wg.Wait(); close(c.events) }()
	})
}

func (c *wsControl) Close() error {
	c.fail(net.ErrClosed)
	return nil
}

func (c *wsControl) Attach(ctx context.Context, hc, token string) error {
	if err := c.Err(); err != nil {
		return err
	}
	h := http.Header{}
	h.Set(headerAuth, token)
	if c.agent != "" {
		h.Set(headerAgent, c.agent)
	}
	ws, err := c.client.dialWS(ctx, c.client.url(hc, "listen"), h, HandshakeTimeout)
	if err != nil {
		return err
	}
	ch := &wsChan{hc: hc, ws: ws}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		ws.Close()
		return c.err
	}
	if old := c.chans[hc]; old != nil { // re-attach with another key: the new channel replaces it
		old.leaving.Store(true)
		old.ws.Close()
	}
	c.chans[hc] = ch
	c.wg.Add(2)
	c.mu.Unlock()
	go c.readLoop(ch)
	go c.pingLoop(ch)
	return nil
}

func (c *wsControl) channel(hc string) (*wsChan, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	ch := c.chans[hc]
	if ch == nil {
		return nil, status.Errorf(status.NotFound, "not attached to %q", hc)
	}
	return ch, nil
}

// send writes messages back to back (one op and payload each), with a
// write deadline.
func (ch *wsChan) send(ops []byte, ps [][]byte) error {
	ch.wmu.Lock()
	defer ch.wmu.Unlock()
	ch.ws.SetWriteDeadline(time.Now().Add(HandshakeTimeout))
	err := ch.ws.WriteMessages(ops, ps)
	ch.ws.SetWriteDeadline(time.Time{}) // pongs are written on their own
	return err
}

func (ch *wsChan) sendJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return ch.send([]byte{wsconn.OpText}, [][]byte{b})
}

func (c *wsControl) Renew(ctx context.Context, hc, token string) error {
	ch, err := c.channel(hc)
	if err != nil {
		return err
	}
	var m struct {
		RenewToken struct {
			Token string `json:"token"`
		} `json:"renewToken"`
	}
	m.RenewToken.Token = token
	return ch.sendJSON(&m)
}

func (c *wsControl) Detach(hc string) error {
	c.mu.Lock()
	ch := c.chans[hc]
	delete(c.chans, hc)
	c.mu.Unlock()
	if ch != nil {
		ch.leaving.Store(true)
		ch.ws.Close()
	}
	return nil
}

// rendezvous is a checked rendezvous address: the URL to request and the
// only host and port it may be requested from.
type rendezvous struct {
	url  *url.URL
	host string
	port int
	ack  string  // the relay's name for the stream in a hybridAck; "": the relay takes none
	ch   *wsChan // the channel the accept came on
}

func (c *wsControl) takeAddr(id StreamID) (rendezvous, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.addrs[id]
	delete(c.addrs, id)
	return a, ok
}

func (c *wsControl) Reject(id StreamID, code status.Code, msg string) error {
	addr, ok := c.takeAddr(id)
	if !ok {
		return status.Errorf(status.NotFound, "no pending stream %s", id)
	}
	if code == status.OK {
		code = status.Refused
	}
	u := *addr.url
	q := u.Query()
	q.Set("sb-hc-action", "accept")
	q.Set("sb-hc-statusCode", strconv.Itoa(status.HTTPStatus(code)))
	q.Set("sb-hc-statusDescription", msg)
	q.Set("hybrid-status", strconv.Itoa(int(code)))
	u.RawQuery = q.Encode()
	c.rejects.Add(1)
	go func() { // like the native REJECT, this does not wait
		defer c.rejects.Done()
		ctx, cancel := context.WithTimeout(context.Background(), HandshakeTimeout)
		defer cancel()
		ws, err := c.client.dialWSAt(ctx, addr.host, addr.port, &u, nil, HandshakeTimeout)
		if err == nil {
			ws.Close() // a relay that accepted a rejection: nothing more to do
		}
	}()
	return nil
}

func (c *wsControl) Join(ctx context.Context, a *Accept, token string) (net.Conn, error) {
	addr, ok := c.takeAddr(a.ID)
	if !ok {
		return nil, status.Errorf(status.NotFound, "no pending stream %s", a.ID)
	}
	// No token on the rendezvous: the single-use address is the
	// capability (as in Azure), and the listen key stays with the relay
	// that was configured.
	for try := 1; ; try++ {
		ws, err := c.client.dialWSAt(ctx, addr.host, addr.port, addr.url, nil, HandshakeTimeout)
		if err == nil {
			return ws, nil
		}
		// As a native JOIN: a rendezvous that landed on the old process of
		// a relay restarting in place goes again.
		if code := status.CodeOf(err); try < joinTries && ctx.Err() == nil && (code == status.NotFound || code == status.ShuttingDown) {
			continue
		}
		return nil, err
	}
}

// idOf turns an Azure stream id (a GUID, or our hex) into a StreamID.
func idOf(s string) StreamID {
	var id StreamID
	if b, err := hex.DecodeString(strings.ReplaceAll(s, "-", "")); err == nil && len(b) == len(id) {
		copy(id[:], b)
		return id
	}
	sum := sha256.Sum256([]byte(s))
	copy(id[:], sum[:])
	return id
}

type wsAcceptMsg struct {
	Request *wsRequestMsg `json:"request"`
	Accept  *struct {
		Address        string            `json:"address"`
		ID             string            `json:"id"`
		ConnectHeaders map[string]string `json:"connectHeaders"`
		RemoteEndpoint struct {
			Address string `json:"address"`
			Port    int    `json:"port"`
		} `json:"remoteEndpoint"`
		// HybridAck: a hybrid relay takes {"hybridAck":{"id":…}} for
		// this stream (not in Azure's protocol, which ignores it).
		HybridAck string `json:"hybridAck"`
	} `json:"accept"`
}

func header(h map[string]string, name string) string {
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

// MaxControlMessage caps one message on a WebSocket control channel: an
// accept notice is well under 8 KiB, so anything near this is hostile.
const MaxControlMessage = 64 << 10

func (c *wsControl) readLoop(ch *wsChan) {
	defer c.wg.Done()
	for {
		op, msg, err := ch.ws.ReadMessage(MaxControlMessage)
		if err != nil {
			if errors.Is(err, wsconn.ErrTooBig) {
				err = fmt.Errorf("relay sent a control message over %d bytes", MaxControlMessage)
			}
			if !ch.leaving.Load() {
				c.fail(fmt.Errorf("control channel to %s for %q: %w", c.client, ch.hc, closedErr(err)))
			}
			return
		}
		var ev Event
		var ok bool
		if op == wsconn.OpBinary {
			ev, ok = c.requestBody(ch, msg)
		} else {
			ev, ok = c.noticeOn(ch, msg)
		}
		if !ok {
			continue // a message this client does not know, or a request waiting for its body
		}
		select {
		case c.events <- ev:
		case <-c.done:
			return
		}
	}
}

// notice turns one control message into an event: an accept whose
// rendezvous address the agent may follow, or a dropped notice saying why
// not. ok is false for messages that are not accept notices.
func (c *wsControl) notice(hc string, msg []byte) (ev Event, ok bool) {
	return c.noticeOn(&wsChan{hc: hc}, msg)
}

// noticeOn turns one text message of channel ch into an event: an accept
// (or HTTP request, httpreq.go) whose rendezvous address the agent may
// follow, or a dropped notice saying why not. ok is false for messages
// that are not notices, and for a request whose body is still to come.
func (c *wsControl) noticeOn(ch *wsChan, msg []byte) (ev Event, ok bool) {
	hc := ch.hc
	var m wsAcceptMsg
	if json.Unmarshal(msg, &m) != nil {
		return Event{}, false
	}
	if m.Request != nil {
		return c.request(ch, m.Request)
	}
	if m.Accept == nil {
		return Event{}, false
	}
	acc := &Accept{ID: idOf(m.Accept.ID), HC: hc,
		Target:    header(m.Accept.ConnectHeaders, headerTarget),
		SenderKey: header(m.Accept.ConnectHeaders, headerSenderKey)}
	if m.Accept.RemoteEndpoint.Address != "" {
		acc.SenderAddr = net.JoinHostPort(m.Accept.RemoteEndpoint.Address, strconv.Itoa(m.Accept.RemoteEndpoint.Port))
	}
	rv, err := c.client.checkRendezvous(m.Accept.Address, hc, "accept")
	if err != nil {
		// Never dial it, not even to reject: a relay must not be able to
		// point the agent at anything but itself.
		return Event{Dropped: &Dropped{Accept: acc, Address: clip(m.Accept.Address), Reason: err.Error()}}, true
	}
	rv.ack, rv.ch = m.Accept.HybridAck, ch
	c.mu.Lock()
	c.addrs[acc.ID] = rv
	c.mu.Unlock()
	// Forget addresses never used (a relay waits about 30 s at most).
	time.AfterFunc(time.Minute, func() { c.takeAddr(acc.ID) })
	return Event{Accept: acc}, true
}

// clip shortens s for a log line.
func clip(s string) string {
	const max = 200
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// checkRendezvous reports why the agent must not follow addr, the
// rendezvous address of an accept (or request) notice for hc, or nil if it
// may: the scheme must match the relay entry's TLS setting, the host must
// be the relay itself (on its http port) or one of the entry's rendezvous
// hosts (on the scheme's port or the http port), the path must be
// /$hc/<hc>, or a clean path below it (a sender's suffix), and the query
// must name the action and an id.
func (c *wsClient) checkRendezvous(addr, hc, action string) (rendezvous, error) {
	fail := func(err error) (rendezvous, error) { return rendezvous{}, err }
	u, err := url.Parse(addr)
	if err != nil {
		return fail(errors.New("rendezvous address does not parse"))
	}
	want, defPort := "ws", 80
	if c.n.tls != nil {
		want, defPort = "wss", 443
	}
	if u.Scheme != want {
		return fail(fmt.Errorf("rendezvous scheme %q is not %q", u.Scheme, want))
	}
	if u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return fail(errors.New("rendezvous address has user info, a fragment or no path"))
	}
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	port := defPort
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return fail(fmt.Errorf("rendezvous port %q is not a port", p))
		}
		port = n
	}
	switch {
	case host == c.n.ep.Host:
		if port != c.n.ep.HTTP {
			return fail(fmt.Errorf("rendezvous port %d is not the relay's http port %d", port, c.n.ep.HTTP))
		}
	case rendezvousHost(c.n.ep.RendezvousHosts, host):
		if port != defPort && port != c.n.ep.HTTP {
			return fail(fmt.Errorf("rendezvous port %d on %s is neither %d nor the relay's http port", port, host, defPort))
		}
	default:
		return fail(fmt.Errorf("rendezvous host %q is neither the relay %q nor in its rendezvous_hosts", host, c.n.ep.Host))
	}
	base := "/$hc/" + hc
	if u.Path != base && (!strings.HasPrefix(u.Path, base+"/") || path.Clean(u.Path) != u.Path) {
		return fail(fmt.Errorf("rendezvous path %q is not /$hc/%s or a clean path below it", u.Path, hc))
	}
	q := u.Query()
	if a := q.Get("sb-hc-action"); a != action {
		return fail(fmt.Errorf("rendezvous action %q is not %s", a, action))
	}
	if q.Get("sb-hc-id") == "" {
		return fail(errors.New("rendezvous address has no sb-hc-id"))
	}
	return rendezvous{url: u, host: host, port: port}, nil
}

// rendezvousHost reports whether host matches an entry of hosts: ".x.y"
// matches names ending with it, any other entry only itself.
func rendezvousHost(hosts []string, host string) bool {
	if host == "" {
		return false
	}
	for _, h := range hosts {
		if h == host || strings.HasPrefix(h, ".") && strings.HasSuffix(host, h) && len(host) > len(h) {
			return true
		}
	}
	return false
}

func closedErr(err error) error {
	var ce *wsconn.CloseError
	if errors.As(err, &ce) {
		if ce.Reason != "" {
			return fmt.Errorf("closed by the relay: %d %s", ce.Code, ce.Reason)
		}
		return fmt.Errorf("closed by the relay: %d", ce.Code)
	}
	if errors.Is(err, io.EOF) {
		return errors.New("closed by the relay")
	}
	return err
}

// pingLoop pings the channel and ends it when nothing arrived for three
// intervals.
func (c *wsControl) pingLoop(ch *wsChan) {
	defer c.wg.Done()
	t := time.NewTicker(PingInterval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		if ch.leaving.Load() {
			return
		}
		if ch.ws.Idle() > 3*PingInterval {
			c.fail(fmt.Errorf("control channel to %s for %q: relay silent for %s", c.client, ch.hc, 3*PingInterval))
			return
		}
		ch.wmu.Lock()
		ch.ws.SetWriteDeadline(time.Now().Add(HandshakeTimeout))
		err := ch.ws.Ping(nil)
		ch.ws.SetWriteDeadline(time.Time{})
		ch.wmu.Unlock()
		if err != nil {
			if !ch.leaving.Load() {
				c.fail(fmt.Errorf("control channel to %s for %q: %w", c.client, ch.hc, err))
			}
			return
		}
	}
}

// auto uses the native protocol when the control port speaks it (a probe:
// our preface and a HELLO, answered by a WELCOME, not just an open port),
// and Azure's WebSocket protocol otherwise. At start it retries the probe
// for a few seconds, so a relay still starting is not taken for a blocked
// port; the verdict is kept for autoRecheck, then probed again, and native
// is taken back as soon as it answers.
type auto struct {
	native       *native
	ws           *wsClient
	log          hclog.Logger
	probeTimeout time.Duration

	mu     sync.Mutex
	chosen Client
	why    error // why the websocket fallback, while it is chosen
	until  time.Time
}

// Fallbacker is implemented by clients of transport auto: Fallback says
// why the WebSocket fallback is in use (nil on native).
type Fallbacker interface {
	Fallback() error
}

// Reprober is implemented by clients of transport auto: NativeBack probes
// the native protocol and, if it answers, makes it the choice again. A
// channel on the WebSocket fallback calls it now and then to move back.
type Reprober interface {
	NativeBack(ctx context.Context) bool
}

const (
	// autoRecheck is how long auto mode keeps a probe's verdict.
	autoRecheck = 30 * time.Second
	// autoStartTries is how long the first probe keeps trying a port
	// that does not answer at all before falling back.
	autoStartTries = 5 * time.Second
)

func (a *auto) String() string { return a.native.String() }

func (a *auto) Transport() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.chosen == nil {
		return TransportAuto
	}
	return a.chosen.Transport()
}

// Fallback says why auto mode uses WebSocket now; nil on native.
func (a *auto) Fallback() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.why
}

func (a *auto) probe(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, a.probeTimeout)
	defer cancel()
	return a.native.Probe(pctx)
}

func (a *auto) pick(ctx context.Context) Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.chosen != nil && time.Now().Before(a.until) {
		return a.chosen
	}
	err := a.probe(ctx)
	if a.chosen == nil { // starting: the relay may not listen yet
		window := autoStartTries
		if d, ok := ctx.Deadline(); ok && time.Until(d)/2 < window {
			window = time.Until(d) / 2 // leave the fallback time to answer too
		}
		for deadline := time.Now().Add(window); err != nil && notAnswering(err) && time.Now().Before(deadline) && ctx.Err() == nil; {
			select {
			case <-time.After(250 * time.Millisecond):
			case <-ctx.Done():
			}
			err = a.probe(ctx)
		}
	}
	a.choose(err)
	return a.chosen
}

// notAnswering reports a port that gave no answer in any protocol (refused,
// unreachable, timed out), as opposed to one that answered in another.
func notAnswering(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &oe) || errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}

// choose records the verdict of a probe that ended with err.
func (a *auto) choose(err error) {
	var next Client = a.native
	if err != nil {
		next = a.ws
	}
	if next != a.chosen {
		if next == a.ws {
			a.log.Warn("native protocol does not answer; using the websocket fallback",
				"relay", a.native.String(), "websocket", a.ws.String(), "error", err)
		} else {
			a.log.Info("using the native protocol", "relay", a.native.String())
		}
	}
	a.chosen, a.why, a.until = next, err, time.Now().Add(autoRecheck)
}

// NativeBack implements Reprober.
func (a *auto) NativeBack(ctx context.Context) bool {
	err := a.probe(ctx)
	if err != nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.choose(nil)
	return true
}

func (a *auto) Open(ctx context.Context, hc, token, target string) (net.Conn, error) {
	return a.pick(ctx).Open(ctx, hc, token, target)
}

func (a *auto) OpenStream(ctx context.Context, req OpenRequest) (net.Conn, error) {
	return a.pick(ctx).OpenStream(ctx, req)
}

func (a *auto) Listen(ctx context.Context, name, version string) (Control, error) {
	return a.pick(ctx).Listen(ctx, name, version)
}

func (a *auto) Connect(ctx context.Context, name, version string) (Control, error) {
	return a.pick(ctx).Connect(ctx, name, version)
}

func (a *auto) Probe(ctx context.Context) error { return a.pick(ctx).Probe(ctx) }

func (a *auto) Check(ctx context.Context, hc, token string, right sas.Rights) error {
	return a.pick(ctx).Check(ctx, hc, token, right)
}
