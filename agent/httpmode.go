package agent

// HTTP mode: a connection whose endpoint is an http:// or https:// URL
// publishes an HTTP API. Each HTTP-mode request the relay passes on is
// forwarded as a real HTTP request to exactly that endpoint: the path below
// the hybrid connection's name is appended to the endpoint's base path (made
// clean first, so it cannot climb above it), the query kept, and the host
// is always the endpoint's, never anything the request says. The response is
// streamed back. Redirects are not followed, no proxy is used, and the
// dialler re-checks that it dials a published, allowed endpoint.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/httphdr"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/rules"
)

// httpHeaderTimeout bounds the wait for the endpoint's response headers:
// below the relay's 60 s, so the sender gets our precise 503 rather than
// the relay's 504.
const httpHeaderTimeout = 50 * time.Second

// senderKeyHeader carries, from hybrid's relay, the name of the key the
// sender used (for the audit log); never forwarded.
const senderKeyHeader = "Hybrid-Sender-Key"

// httpTransport is the agent's one HTTP client transport, made on first
// use: pooled connections to the published HTTP endpoints.
func (a *Agent) httpClient() *http.Client {
	if c := a.httpc.Load(); c != nil {
		return c
	}
	d := &net.Dialer{Timeout: DialTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy: nil, // on-prem calls never go through a proxy from the environment
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			// The URL was built from a published endpoint; check again that
			// this is one, under the configuration of now.
			if !a.publishesHTTP(addr) {
				return nil, fmt.Errorf("dial %s: not a published HTTP endpoint", addr)
			}
			return d.DialContext(ctx, network, addr)
		},
		ResponseHeaderTimeout: httpHeaderTimeout,
		TLSHandshakeTimeout:   DialTimeout,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true, // bodies pass through as the endpoint sends them
	}
	c := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if a.httpc.CompareAndSwap(nil, c) {
		return c
	}
	return a.httpc.Load()
}

// publishesHTTP reports whether addr is the endpoint of a published HTTP
// connection that the agent may serve.
func (a *Agent) publishesHTTP(addr string) bool {
	cfg := a.cfg.Load()
	for _, c := range cfg.Connections {
		if c.HTTP != "" && c.Endpoint == addr {
			if _, err := Authorize(cfg, c.Name, ""); err == nil {
				return true
			}
		}
	}
	return false
}

// connection returns the configured connection named hc.
func connection(cfg *rules.Agent, hc string) (rules.AgentConnection, bool) {
	for _, c := range cfg.Connections {
		if c.Name == hc {
			return c, true
		}
	}
	return rules.AgentConnection{}, false
}

// targetURL maps a request target ("/<hc>/rest?query") onto the base URL of
// an HTTP endpoint: base path + the clean rest, the query as it came.
func targetURL(base, hc, target string) (*url.URL, error) {
	b, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	p, q, _ := strings.Cut(target, "?")
	prefix := "/" + hc
	if len(p) < len(prefix) || !strings.EqualFold(p[:len(prefix)], prefix) {
		return nil, fmt.Errorf("request target %q is not below /%s", clipText(target), hc)
	}
	rest := p[len(prefix):]
	if rest != "" && rest[0] != '/' {
		return nil, fmt.Errorf("request target %q is not below /%s", clipText(target), hc)
	}
	// Parsed under a fixed authority: "//host" in rest stays a path.
	r, err := url.Parse("http://x" + rest)
	if err != nil || r.Host != "x" {
		return nil, fmt.Errorf("request target %q does not parse", clipText(target))
	}
	if r.Path != "" {
		if c := path.Clean(r.Path); c != r.Path && c+"/" != r.Path {
			return nil, fmt.Errorf("request target %q has . or .. segments or empty ones", clipText(target))
		}
	}
	u := &url.URL{Scheme: b.Scheme, Host: b.Host, Path: b.Path + r.Path, RawQuery: q}
	if raw := b.EscapedPath() + r.EscapedPath(); raw != u.EscapedPath() {
		u.RawPath = raw
	}
	return u, nil
}

func clipText(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// cancelCloser lets Apply and shutdown end an HTTP exchange like a stream.
type cancelCloser func()

func (f cancelCloser) Close() error { f(); return nil }

// serveHTTP handles one HTTP-mode request from relay.
func (a *Agent) serveHTTP(ctx context.Context, relay string, req *relayclient.Request, attached bool, log hclog.Logger) {
	log = log.With("hc", req.HC, "request", req.ID)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	if err := req.Open(ctx); err != nil {
		log.Warn("could not fetch the request from the relay", "error", err)
		req.Abandon()
		return
	}
	ev := AuditEvent{Event: "http", HC: req.HC, Stream: req.ID, Method: req.Method, Path: req.Target,
		SenderKey: req.Header.Get(senderKeyHeader), SenderAddr: req.SenderAddr, Relay: relay}
	refuse := func(event string, code int, why string) {
		log.Warn("http request refused", "method", req.Method, "target", clipText(req.Target), "reason", why)
		ev.Event, ev.Status, ev.Reason = event, code, why
		a.record(ev)
		a.denied.Add(1)
		req.Respond(ctx, code, "", http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, strings.NewReader(why+"\n"))
	}
	cfg := a.cfg.Load()
	ep, serr := Authorize(cfg, req.HC, "")
	if serr == nil && !attached {
		serr = status.Errorf(status.NotFound, "this agent is not listening for %q on this relay", req.HC)
	}
	if serr != nil {
		code := http.StatusForbidden
		if serr.Code == status.NotFound {
			code = http.StatusNotFound
		}
		refuse("deny", code, serr.Msg)
		return
	}
	conn, _ := connection(cfg, req.HC)
	if conn.HTTP == "" {
		refuse("deny", http.StatusNotImplemented, fmt.Sprintf("%q publishes the TCP endpoint %s, not an HTTP one", req.HC, ep))
		return
	}
	u, err := targetURL(conn.HTTP, req.HC, req.Target)
	if err != nil {
		refuse("deny", http.StatusBadRequest, err.Error())
		return
	}
	// An exchange takes a stream slot (agent.max_streams, the connection's
	// max_streams) for as long as it runs.
	if serr := a.acquire(req.HC); serr != nil {
		a.busy.Add(1)
		refuse("busy", http.StatusServiceUnavailable, serr.Msg)
		return
	}
	defer a.release(req.HC)
	ev.Endpoint = conn.HTTP
	in := &countingReader{r: req.Body}
	hreq, err := http.NewRequestWithContext(ctx, req.Method, u.String(), io.NopCloser(in))
	if err != nil {
		refuse("deny", http.StatusBadRequest, "request does not form a valid HTTP request: "+err.Error())
		return
	}
	hreq.URL = u
	if br, ok := req.Body.(interface{ Len() int }); ok { // a body from the control channel: its length is known
		hreq.ContentLength = int64(br.Len())
		if hreq.ContentLength == 0 {
			hreq.Body = http.NoBody
		}
	}
	httphdr.EndToEnd(hreq.Header, req.Header)
	hreq.Header.Del(senderKeyHeader)
	ls := &liveStream{conn: cancelCloser(cancel), hc: req.HC, endpoint: ep, ev: ev, since: start}
	if !a.track(ls) {
		refuse("deny", http.StatusForbidden, "no longer published")
		return
	}
	defer a.untrack(ls)
	resp, err := a.httpClient().Do(hreq)
	if err != nil {
		msg := describeDialError(ep, err)
		if errors.Is(err, context.Canceled) {
			msg = "cancelled: " + msg
		}
		log.Warn("http endpoint unreachable", "endpoint", conn.HTTP, "error", msg)
		ev.Event, ev.Reason, ev.Status = "unreachable", msg, http.StatusServiceUnavailable
		ev.BytesIn = in.n.Load()
		a.record(ev)
		a.unreachable.Add(1)
		// 502 and 504 are the relay's to send (Azure forbids them to
		// listeners): an unreachable resource is 503.
		req.Respond(ctx, http.StatusServiceUnavailable, "Resource Unreachable",
			http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, strings.NewReader(msg+"\n"))
		return
	}
	defer resp.Body.Close()
	hdr := http.Header{}
	httphdr.EndToEnd(hdr, resp.Header)
	out := &countingReader{r: resp.Body}
	reason := strings.TrimSpace(strings.TrimPrefix(resp.Status, strconv.Itoa(resp.StatusCode)))
	a.opened.Add(1)
	err = req.Respond(ctx, resp.StatusCode, reason, hdr, out)
	ev.Status, ev.BytesIn, ev.BytesOut = resp.StatusCode, in.n.Load(), out.n.Load()
	ev.DurationMS = time.Since(start).Milliseconds()
	if err != nil {
		ev.Reason = "response not delivered: " + err.Error()
		log.Warn("http response not delivered to the relay", "error", err)
	}
	a.record(ev)
	log.Debug("http request served", "method", req.Method, "url", u.Redacted(), "status", resp.StatusCode, "bytes_out", ev.BytesOut)
}
