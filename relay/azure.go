package relay

// Pieces of Azure's Hybrid Connections protocol that the WebSocket door
// and HTTP mode share: which hybrid connection a path names, the public
// address rendezvous addresses are built on, the sender details an accept
// notice carries, and a listener's rejection with its HTTP status.

import (
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wsconn"
	"github.com/hybridconn/hybrid/rules"
)

// DefaultMaxListeners is Azure's limit of listeners (control channels) on
// one hybrid connection; relay.max_listeners changes it.
const DefaultMaxListeners = rules.DefaultMaxListeners

// AzureOpen is what a WebSocket sender's request adds to a stream: Azure
// passes it on to the listener in the accept notice. The core carries it
// from OpenRequest to Accept untouched.
type AzureOpen struct {
	// Tracking is the sender's sb-hc-id, used as the notice's id and the
	// stream's tracking id in logs; "" when the sender gave none.
	Tracking string
	// Suffix is the escaped path after the hybrid connection's name
	// ("/orders/42"), "" for none.
	Suffix string
	// Query holds the sender's query parameters that do not start with
	// "sb-", in order, already encoded.
	Query string
}

// lookup finds the hybrid connection a path names: the longest configured
// name that the path equals or continues with "/" (names may contain "/":
// "sql/reporting"). It returns the name as configured and the rest of the
// path ("" or "/..."). Names are compared ignoring case, as they are
// unique that way.
func (a *Auth) lookup(path string) (hc, suffix string, ok bool) {
	for _, name := range a.byLength() {
		if len(path) < len(name) || !strings.EqualFold(path[:len(name)], name) {
			continue
		}
		if rest := path[len(name):]; rest == "" || rest[0] == '/' {
			return name, rest, true
		}
	}
	return "", "", false
}

// byLength returns the configured names, longest first (computed once per
// Auth: Auth is immutable).
func (a *Auth) byLength() []string {
	a.namesOnce.Do(func() {
		for name := range a.connections {
			a.names = append(a.names, name)
		}
		sort.Slice(a.names, func(i, j int) bool {
			if len(a.names[i]) != len(a.names[j]) {
				return len(a.names[i]) > len(a.names[j])
			}
			return a.names[i] < a.names[j]
		})
	})
	return a.names
}

// escapedSuffix returns the escaped form of the path after the hybrid
// connection's name hc in escaped path p (the name's segments skipped
// whatever their escaping): "%2F" in a suffix must stay one segment.
func escapedSuffix(p, hc string) string {
	n := strings.Count(hc, "/") + 1
	for i := 0; i < n; i++ {
		j := strings.IndexByte(p, '/')
		if j < 0 {
			return ""
		}
		p = p[j+1:]
		if i == n-1 {
			if k := strings.IndexByte(p, '/'); k >= 0 {
				return p[k:]
			}
			return ""
		}
	}
	return ""
}

// senderQuery returns the query parameters of a sender's request that are
// passed to the listener: every one not starting with "sb-" (Azure strips
// its own, sb-hc-token above all), in their original order and encoding.
func senderQuery(rawQuery string) string {
	var keep []string
	for _, kv := range strings.Split(rawQuery, "&") {
		if kv == "" {
			continue
		}
		k := kv
		if i := strings.IndexByte(kv, '='); i >= 0 {
			k = kv[:i]
		}
		if uk, err := url.QueryUnescape(k); err == nil {
			k = uk
		}
		if strings.HasPrefix(strings.ToLower(k), "sb-") {
			continue
		}
		keep = append(keep, kv)
	}
	return strings.Join(keep, "&")
}

// validTracking reports whether a sender's sb-hc-id may be used as a
// tracking id: short, and made of characters that need no escaping in logs
// or URLs (a GUID, with Azure's "_G0" style suffixes).
func validTracking(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_.:", c) >= 0) {
			return false
		}
	}
	return true
}

// publicBase is the scheme ("ws" or "wss") and host that rendezvous
// addresses handed to a listener name: relay.public_url when set;
// otherwise the listener's own Host header, with wss when the relay has
// TLS or a TLS-terminating proxy in front says so (X-Forwarded-Proto:
// https). The listener's own request decides only its own addresses.
func (d *wsDoor) publicBase(r *http.Request) (scheme, host string) {
	if u := d.settings().publicURL; u != nil {
		scheme = "ws"
		if u.Scheme == "https" {
			scheme = "wss"
		}
		return scheme, u.Host
	}
	scheme = "ws"
	switch p := strings.ToLower(strings.TrimSpace(strings.Split(r.Header.Get("X-Forwarded-Proto"), ",")[0])); {
	case d.tls, r.TLS != nil, p == "https", p == "wss":
		scheme = "wss"
	}
	return scheme, r.Host
}

// rejection is a listener's refusal of a stream, as it gave it: the sender
// gets this HTTP status and reason phrase. It unwraps to the status code
// the native protocol carries.
type rejection struct {
	err  *status.Error
	http int
	desc string
}

func (r *rejection) Error() string { return r.err.Error() }
func (r *rejection) Unwrap() error { return r.err }

// asRejection returns the listener's rejection inside err, if any.
func asRejection(err error) (*rejection, bool) {
	var r *rejection
	ok := errors.As(err, &r)
	return r, ok
}

// reasonPhrase makes s safe as an HTTP reason phrase: printable ASCII
// only (no CR/LF injection), at most 200 bytes; "" becomes def.
func reasonPhrase(s, def string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 200; i++ {
		if c := s[i]; c == '\t' || c >= 0x20 && c < 0x7f {
			b.WriteByte(c)
		}
	}
	if out := strings.TrimSpace(b.String()); out != "" {
		return out
	}
	return def
}

// closeCodeFor maps why the relay ends a WebSocket to its close code.
func closeCodeFor(why error) int {
	switch status.CodeOf(why) {
	case status.OK:
		return wsconn.CloseNormal
	case status.ShuttingDown:
		return wsconn.CloseGoingAway
	case status.Unauthorized, status.Forbidden, status.BadRequest:
		return wsconn.ClosePolicy
	case status.Busy:
		return wsconn.CloseTryAgainLater
	}
	return wsconn.CloseInternal
}

// SetMaxListeners caps the listeners (control channels) of one hybrid
// connection; 0 means no cap.
func (c *Core) SetMaxListeners(n int) { c.maxListeners.Store(int64(n)) }

// admitListener refuses one more listener on hc when it already has the
// maximum: Azure allows 25, and a client that reconnects in a tight loop
// must not pile up control channels.
func (c *Core) admitListener(hc string, have int) error {
	if max := c.maxListeners.Load(); max > 0 && int64(have) >= max {
		return status.Errorf(status.Busy, "%q already has %d listeners, the most allowed", hc, max)
	}
	return nil
}
