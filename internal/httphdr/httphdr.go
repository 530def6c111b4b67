// Package httphdr tells which HTTP headers concern one connection only, for
// HTTP mode at the relay and in the agent: they are never forwarded.
package httphdr

import (
	"net/http"
	"strings"
)

// hopByHop are RFC 7230's connection-level headers (Azure strips the same,
// and Via, which a forwarder extends instead), and the proxy ones.
var hopByHop = map[string]bool{
	"Connection": true, "Content-Length": true, "Host": true, "Te": true, "Trailer": true,
	"Transfer-Encoding": true, "Upgrade": true, "Close": true, "Keep-Alive": true,
	"Proxy-Connection": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
}

// HopByHop reports whether header name of h concerns one connection only:
// one of RFC 7230's, or one that h's Connection header names.
func HopByHop(h http.Header, name string) bool {
	name = http.CanonicalHeaderKey(name)
	if hopByHop[name] || name == "" {
		return true
	}
	for _, v := range h.Values("Connection") {
		for _, t := range strings.Split(v, ",") {
			if http.CanonicalHeaderKey(strings.TrimSpace(t)) == name {
				return true
			}
		}
	}
	return false
}

// EndToEnd copies the headers of src that are not hop-by-hop into dst.
func EndToEnd(dst, src http.Header) {
	for k, v := range src {
		if !HopByHop(src, k) {
			dst[http.CanonicalHeaderKey(k)] = v
		}
	}
}
