package rules

// The fields of Azure Relay's protocol: the relay's public URL, listener
// cap and HTTP-mode body limit, and agent connections that publish an
// HTTP endpoint (HTTP mode).

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/hybridconn/hybrid/internal/endpoint"
)

// Defaults of the Azure protocol fields.
const (
	DefaultMaxListeners = 25       // relay.max_listeners: Azure's limit
	DefaultMaxHTTPBody  = 64 << 20 // relay.max_http_body
)

// relayAzureFields adds public_url, max_listeners and max_http_body to a
// relay section's fields.
func (d *decoder) relayAzureFields(f fields, r *Relay) {
	r.MaxListeners = DefaultMaxListeners
	r.MaxHTTPBody = DefaultMaxHTTPBody
	f["public_url"] = func(p string, v *yaml.Node) { r.PublicURL, _ = d.publicURL(p, v) }
	f["max_listeners"] = func(p string, v *yaml.Node) {
		if n, ok := d.integer(p, v); ok {
			if n < 0 {
				d.fieldErr(p, "must not be negative (0 means no cap)")
				return
			}
			r.MaxListeners = n
		}
	}
	f["max_http_body"] = func(p string, v *yaml.Node) {
		if n, ok := d.size(p, v); ok {
			r.MaxHTTPBody = n
		}
	}
}

// publicURL decodes relay.public_url into its canonical form
// scheme://host[:port].
func (d *decoder) publicURL(p string, n *yaml.Node) (string, bool) {
	s, ok := d.str(p, n)
	if !ok {
		return "", false
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		d.fieldErr(p, "invalid public URL %q: want https://host[:port] (no path)", s)
		return "", false
	}
	h, err := canonicalHost(u.Hostname())
	if err != nil {
		d.fieldErr(p, "%v", err)
		return "", false
	}
	if strings.Contains(h, ":") {
		h = "[" + h + "]"
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			d.fieldErr(p, "invalid public URL %q: port out of range", s)
			return "", false
		}
		h += ":" + port
	}
	return u.Scheme + "://" + h, true
}

var sizeRE = regexp.MustCompile(`^([0-9]+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$`)

// size decodes a byte count: an integer, or a string with a unit (64MiB).
func (d *decoder) size(p string, n *yaml.Node) (int64, bool) {
	v := deref(n)
	if v != nil && v.Kind == yaml.ScalarNode && v.ShortTag() == "!!int" {
		i, ok := d.integer(p, v)
		if ok && i < 1 {
			d.fieldErr(p, "must be at least 1 byte")
			return 0, false
		}
		return int64(i), ok
	}
	s, ok := d.str(p, n)
	if !ok {
		return 0, false
	}
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		d.fieldErr(p, "invalid size %q: want bytes, or a number with B, KiB, MiB, GiB, KB, MB or GB", s)
		return 0, false
	}
	num, err := strconv.ParseInt(m[1], 10, 64)
	mult := map[string]int64{"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1e3, "MB": 1e6, "GB": 1e9}[m[2]]
	if err != nil || num < 1 || num > math.MaxInt64/mult {
		d.fieldErr(p, "invalid size %q: out of range", s)
		return 0, false
	}
	return num * mult, true
}

// agentEndpoint decodes an agent connection's endpoint: host:port for a TCP
// resource, or an http:// or https:// base URL for an HTTP one (HTTP mode),
// whose host:port becomes the connection's Endpoint.
func (d *decoder) agentEndpoint(p string, n *yaml.Node, c *AgentConnection) {
	s, ok := d.str(p, n)
	if !ok {
		return
	}
	if !strings.Contains(s, "://") {
		c.Endpoint, _ = d.endpointField(p, n)
		return
	}
	base, ep, err := httpEndpoint(s)
	if err != nil {
		d.fieldErr(p, "%v", err)
		return
	}
	c.HTTP, c.Endpoint = base, ep
}

// httpEndpoint parses an HTTP endpoint URL into its normalised base and
// canonical host:port.
func httpEndpoint(s string) (base, ep string, err error) {
	bad := func(why string) (string, string, error) {
		return "", "", fmt.Errorf("invalid HTTP endpoint %q: %s", s, why)
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("not a URL")
	}
	u.Scheme = strings.ToLower(u.Scheme)
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return bad("want http:// or https://")
	case u.Host == "":
		return bad("no host")
	case u.User != nil:
		return bad("user info is not allowed")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return bad("a query or fragment is not allowed")
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	ep, err = endpoint.Canonical(net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return bad(err.Error())
	}
	p := u.EscapedPath()
	if p != "" {
		if cleaned := path.Clean(p); cleaned != p && cleaned+"/" != p {
			return bad("the path must be clean (no . or .. segments, no double slashes)")
		}
		p = strings.TrimSuffix(p, "/")
	}
	return u.Scheme + "://" + ep + p, ep, nil
}

// checkAgentTransport requires websocket for agents that publish an HTTP
// endpoint: HTTP mode is part of Azure's WebSocket protocol, and the native
// protocol carries streams only. Left out, transport defaults to websocket
// for such agents.
func (d *decoder) checkAgentTransport(path string, a *Agent, given bool) {
	for i, c := range a.Connections {
		if c.HTTP == "" {
			continue
		}
		if !given {
			a.Transport = TransportWebSocket
			return
		}
		if a.Transport != TransportWebSocket {
			d.fieldErr(path+".transport", "%s publishes the HTTP endpoint %s (HTTP mode), which needs transport: websocket, not %s",
				index(path+".connections", i), c.HTTP, a.Transport)
		}
		return
	}
}
