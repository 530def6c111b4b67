// Package endpoint parses and canonicalises host:port endpoints.
//
// The agent compares what a stream asks for with what it publishes only after
// both went through Canonical, and it then dials its own published text, never
// the requested one. Canonical is therefore strict: it accepts one spelling of
// each endpoint and refuses forms that resolvers interpret in surprising ways
// (inet_aton shorthand such as 127.1 or 0x7f.1, leading zeros, zones, control
// characters), so that no two different-looking strings can name different
// destinations and still compare equal, and no hostile spelling slips through.
package endpoint

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrInvalid is wrapped by every error Canonical returns.
var ErrInvalid = errors.New("invalid endpoint")

// Endpoint is a canonical host and port.
type Endpoint struct {
	// Host is a lower-case DNS name without trailing dot, or an IP address in
	// its canonical text form (IPv4-mapped IPv6 addresses are unmapped).
	Host string
	// Port is in 1..65535.
	Port uint16
}

// String returns host:port, with brackets around IPv6 addresses.
func (e Endpoint) String() string {
	if strings.Contains(e.Host, ":") {
		return "[" + e.Host + "]:" + strconv.Itoa(int(e.Port))
	}
	return e.Host + ":" + strconv.Itoa(int(e.Port))
}

// IsIP reports whether the host is an IP address rather than a name.
func (e Endpoint) IsIP() bool {
	_, err := netip.ParseAddr(e.Host)
	return err == nil
}

// Canonical returns the canonical text of s, or an error wrapping ErrInvalid.
func Canonical(s string) (string, error) {
	e, err := Parse(s)
	if err != nil {
		return "", err
	}
	return e.String(), nil
}

// Parse parses s as host:port and canonicalises it.
func Parse(s string) (Endpoint, error) {
	bad := func(why string) (Endpoint, error) {
		return Endpoint{}, fmt.Errorf("%w %q: %s", ErrInvalid, s, why)
	}
	if len(s) > 300 {
		return bad("too long")
	}
	var host, port string
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 || !strings.HasPrefix(s[end+1:], ":") {
			return bad("want [ipv6]:port")
		}
		host, port = s[1:end], s[end+2:]
		if !strings.Contains(host, ":") {
			return bad("brackets are only for IPv6 addresses")
		}
	} else {
		i := strings.LastIndex(s, ":")
		if i < 0 {
			return bad("missing port")
		}
		host, port = s[:i], s[i+1:]
		if strings.Contains(host, ":") {
			return bad("IPv6 addresses need brackets")
		}
	}
	p, err := parsePort(port)
	if err != nil {
		return bad(err.Error())
	}
	h, err := canonicalHost(host)
	if err != nil {
		return bad(err.Error())
	}
	return Endpoint{Host: h, Port: p}, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("missing port")
	}
	if len(s) > 5 {
		return 0, errors.New("port out of range")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, errors.New("port must be decimal digits")
		}
	}
	if s[0] == '0' {
		return 0, errors.New("port must be 1-65535 without leading zeros")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, errors.New("port out of range")
	}
	return uint16(n), nil
}

func canonicalHost(h string) (string, error) {
	if h == "" {
		return "", errors.New("missing host")
	}
	if strings.Contains(h, ":") { // IPv6, brackets already removed
		if strings.Contains(h, "%") {
			return "", errors.New("zoned IPv6 addresses are not supported")
		}
		a, err := netip.ParseAddr(h)
		if err != nil {
			return "", errors.New("bad IPv6 address")
		}
		return a.Unmap().String(), nil
	}
	// Refuse non-ASCII before lowering: strings.ToLower maps some non-ASCII
	// runes to ASCII letters (U+212A KELVIN SIGN to 'k', U+0130 to 'i'), which
	// would let a Unicode spelling pass as an ASCII name.
	for i := 0; i < len(h); i++ {
		if h[i] >= 0x80 {
			return "", errors.New("non-ASCII host name")
		}
	}
	h = strings.ToLower(strings.TrimSuffix(h, "."))
	if h == "" {
		return "", errors.New("missing host")
	}
	if a, err := netip.ParseAddr(h); err == nil {
		return a.String(), nil // strict dotted quad, no leading zeros
	}
	if len(h) > 253 {
		return "", errors.New("host name too long")
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return "", errors.New("bad host name label")
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return "", fmt.Errorf("bad character %q in host name", c)
			}
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "", errors.New("host name label starts or ends with '-'")
		}
	}
	// A name whose last label is numeric (127.1, 0x7f.1 ends in "1", 10.0.0.010)
	// is an IPv4 spelling that resolvers may accept; refuse it rather than guess.
	last := labels[len(labels)-1]
	if isNumericLabel(last) {
		return "", errors.New("not a canonical IPv4 address nor a host name")
	}
	return h, nil
}

// isNumericLabel reports whether l is all digits, or a 0x hex number.
func isNumericLabel(l string) bool {
	if strings.HasPrefix(l, "0x") {
		l = l[2:]
		if l == "" {
			return true
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(l); i++ {
		if l[i] < '0' || l[i] > '9' {
			return false
		}
	}
	return true
}
