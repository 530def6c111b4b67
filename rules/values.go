package rules

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/hybridconn/hybrid/internal/endpoint"
	"github.com/hybridconn/hybrid/internal/safefile"
)

// minKeyLen is the shortest key value accepted: shorter ones are guessable.
const minKeyLen = 16

// maxKeyFile bounds what a key_file may hold; a key is a line of base64.
const maxKeyFile = 64 << 10

// listenAddr is a parsed listen address.
type listenAddr struct {
	text  string     // canonical host:port
	host  string     // "", "localhost" or canonical IP text
	ip    netip.Addr // valid when host is an IP
	port  int        // 0..65535
	field string     // where it came from, for conflict messages
	def   bool       // a default, not written in the file
}

// name describes where a came from.
func (a listenAddr) name() string {
	if a.def {
		return a.field + " (default)"
	}
	return a.field
}

// parseListen parses host:port where host is empty, localhost or an IP
// address (IPv6 in brackets, zone allowed) and port is 0..65535.
func parseListen(s string) (listenAddr, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return listenAddr{}, fmt.Errorf("invalid listen address %q: want host:port", s)
	}
	a := listenAddr{}
	switch {
	case host == "":
	case strings.EqualFold(host, "localhost"):
		a.host = "localhost"
	default:
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return listenAddr{}, fmt.Errorf("invalid listen address %q: host must be an IP address, localhost or empty (all interfaces)", s)
		}
		a.ip = ip.Unmap()
		a.host = a.ip.String()
	}
	if !isDecimal(port) || len(port) > 5 || len(port) > 1 && port[0] == '0' {
		return listenAddr{}, fmt.Errorf("invalid listen address %q: port must be a number 0-65535", s)
	}
	a.port, _ = strconv.Atoi(port)
	if a.port > 65535 {
		return listenAddr{}, fmt.Errorf("invalid listen address %q: port must be a number 0-65535", s)
	}
	a.text = net.JoinHostPort(a.host, port)
	return a, nil
}

func (a listenAddr) wildcard() bool { return a.host == "" || a.ip.IsValid() && a.ip.IsUnspecified() }

func (a listenAddr) loopback() bool {
	return a.host == "localhost" || a.ip.IsValid() && a.ip.IsLoopback()
}

// conflicts reports whether binding a and b at once would collide. Port 0
// never collides: each picks a free port.
func (a listenAddr) conflicts(b listenAddr) bool {
	if a.port == 0 || a.port != b.port {
		return false
	}
	return a.wildcard() || b.wildcard() || a.host == b.host ||
		a.host == "localhost" && b.loopback() || b.host == "localhost" && a.loopback()
}

// listen decodes a listen address at path.
func (d *decoder) listen(path string, n *yaml.Node) (listenAddr, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return listenAddr{}, false
	}
	a, err := parseListen(s)
	if err != nil {
		d.fieldErr(path, "%v", err)
		return listenAddr{}, false
	}
	a.field = path
	return a, true
}

// checkListeners reports every address that conflicts with an earlier one.
func (d *decoder) checkListeners(addrs []listenAddr) {
	for i, a := range addrs {
		for _, b := range addrs[:i] {
			if a.conflicts(b) {
				d.fieldErr(a.field, "%q conflicts with %s %q", a.text, b.name(), b.text)
				break
			}
		}
	}
}

// canonicalHost validates a DNS name or IP address (IPv6 with or without
// brackets) and returns its canonical text.
func canonicalHost(h string) (string, error) {
	if h == "" {
		return "", errors.New("must not be empty")
	}
	inner := h
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		inner = h[1 : len(h)-1]
	}
	if strings.Contains(inner, ":") {
		if _, err := netip.ParseAddr(inner); err != nil {
			return "", fmt.Errorf("invalid host %q: want a host name or IP address, without a port", h)
		}
	}
	hp := net.JoinHostPort(inner, "1")
	e, err := endpoint.Parse(hp)
	if err != nil {
		why := strings.TrimPrefix(err.Error(), fmt.Sprintf("%v %q: ", endpoint.ErrInvalid, hp))
		return "", fmt.Errorf("invalid host %q: %s", h, why)
	}
	return e.Host, nil
}

// isLoopbackHost reports whether a canonical host is loopback: 127.0.0.0/8,
// ::1 or localhost.
func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.IsLoopback()
}

// host decodes a host name at path.
func (d *decoder) host(path string, n *yaml.Node) (string, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return "", false
	}
	h, err := canonicalHost(s)
	if err != nil {
		d.fieldErr(path, "%v", err)
		return "", false
	}
	return h, true
}

// endpointField decodes a canonical endpoint at path.
func (d *decoder) endpointField(path string, n *yaml.Node) (string, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return "", false
	}
	c, err := endpoint.Canonical(s)
	if err != nil {
		d.fieldErr(path, "%v", err)
		return "", false
	}
	return c, true
}

// port decodes a port number 1..65535.
func (d *decoder) port(path string, n *yaml.Node) (int, bool) {
	p, ok := d.integer(path, n)
	if !ok {
		return 0, false
	}
	if p < 1 || p > 65535 {
		d.fieldErr(path, "port %d out of range (want 1-65535)", p)
		return 0, false
	}
	return p, true
}

// oneOf decodes a string that must be one of want; what names it in the
// message ("unknown transport ...").
func (d *decoder) oneOf(path string, n *yaml.Node, what string, want ...string) (string, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return "", false
	}
	return s, d.checkOneOf(path, s, what, "", want...)
}

func (d *decoder) checkOneOf(path, s, what, from string, want ...string) bool {
	for _, w := range want {
		if s == w {
			return true
		}
	}
	d.fieldErr(path, "unknown %s %q%s (want %s)", what, s, from, listOr(want))
	return false
}

// checkName validates a hybrid connection name.
func checkName(s string) error {
	bad := func(why string) error { return fmt.Errorf("invalid name %q: %s", s, why) }
	switch {
	case s == "":
		return errors.New("must not be empty")
	case len(s) > 128:
		return bad("longer than 128 characters")
	case strings.HasPrefix(s, "/") || strings.HasSuffix(s, "/"):
		return bad("leading or trailing slash")
	}
	for _, seg := range strings.Split(s, "/") {
		switch seg {
		case "":
			return bad("empty segment")
		case ".", "..":
			return bad(`"." and ".." segments are not allowed`)
		}
		if !validChars(seg) {
			return bad("want A-Z a-z 0-9 . _ - in segments separated by /")
		}
	}
	return nil
}

// checkKeyName validates a key (rule) name.
func checkKeyName(s string) error {
	switch {
	case s == "":
		return errors.New("must not be empty")
	case len(s) > 256:
		return fmt.Errorf("invalid key name %q: longer than 256 characters", s)
	case !validChars(s):
		return fmt.Errorf("invalid key name %q: want A-Z a-z 0-9 . _ -", s)
	}
	return nil
}

func validChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// name decodes a string checked by check.
func (d *decoder) name(path string, n *yaml.Node, check func(string) error) (string, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return "", false
	}
	if err := check(s); err != nil {
		d.fieldErr(path, "%v", err)
		return "", false
	}
	return s, true
}

// path resolves a file path against the config's directory.
func (d *decoder) path(path string, n *yaml.Node, what string) (string, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return "", false
	}
	if s == "" {
		d.fieldErr(path, "must not be empty (leave %s out for none)", what)
		return "", false
	}
	return d.resolve(s), true
}

func (d *decoder) resolve(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(d.dir, p)
}

// proxyURL decodes an HTTP CONNECT proxy URL.
func (d *decoder) proxyURL(path string, n *yaml.Node) (string, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return "", false
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		d.fieldErr(path, "invalid proxy URL: want http://host:port or https://host:port")
		return "", false
	}
	return s, true
}

var envRef = regexp.MustCompile(`^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$`)

// secret returns the value of the secret field name of the mapping at path,
// given as name (literal or ${ENV}) or as name_file. raw holds the string
// values decoded for either; seen the keys present. Absence is an error when
// required. Messages never include a secret's value.
func (d *decoder) secret(path, name string, seen map[string]bool, raw map[string]string, required bool) string {
	fileKey := name + "_file"
	vp, fp := child(path, name), child(path, fileKey)
	switch {
	case seen[name] && seen[fileKey]:
		d.fieldErr(fp, "give either %s or %s, not both", name, fileKey)
	case seen[name]:
		s, ok := raw[name]
		if !ok {
			return "" // wrong type, reported
		}
		from := ""
		if m := envRef.FindStringSubmatch(s); m != nil {
			v, set := os.LookupEnv(m[1])
			switch {
			case !set:
				d.fieldErr(vp, "environment variable %s is not set", m[1])
				return ""
			case v == "":
				d.fieldErr(vp, "environment variable %s is empty", m[1])
				return ""
			}
			s, from = v, " (from "+m[1]+")"
		} else if strings.Contains(s, "${") {
			d.fieldErr(vp, `"${" is only allowed as the whole value, as in "${NAME}"`)
			return ""
		}
		if d.checkKeyValue(vp, s, from) {
			return s
		}
	case seen[fileKey]:
		p, ok := raw[fileKey]
		if !ok {
			return ""
		}
		if p == "" {
			d.fieldErr(fp, "must not be empty")
			return ""
		}
		full := d.resolve(p)
		s, err := readKeyFile(full)
		if err != nil {
			d.fieldErr(fp, "%v", err)
			return ""
		}
		if d.checkKeyValue(fp, s, fmt.Sprintf(" (in %s)", full)) {
			return s
		}
	case required && !seen[mergeKey]:
		d.errorf(d.line(path), vp, "required (or %s)", fileKey)
	}
	return ""
}

func (d *decoder) checkKeyValue(path, s, from string) bool {
	if n := utf8.RuneCountInString(s); n < minKeyLen {
		d.fieldErr(path, "key too short%s: %d characters, want at least %d (hybrid keys new makes one)", from, n, minKeyLen)
		return false
	}
	return true
}

// readKeyFile reads a key from a regular file, without trailing whitespace.
func readKeyFile(path string) (string, error) {
	data, err := safefile.Read(path, maxKeyFile)
	switch {
	case errors.Is(err, safefile.ErrNotRegular):
		return "", fmt.Errorf("key file %s is not a regular file", path)
	case errors.Is(err, safefile.ErrTooLarge):
		return "", fmt.Errorf("key file %s is too large (over %d bytes)", path, maxKeyFile)
	case err != nil:
		return "", fmt.Errorf("cannot read key file: %w", err)
	}
	s := strings.TrimRight(string(data), " \t\r\n")
	if s == "" {
		return "", fmt.Errorf("key file %s is empty", path)
	}
	return s, nil
}

// positive decodes an integer of at least 1.
func (d *decoder) positive(path string, n *yaml.Node) (int, bool) {
	x, ok := d.integer(path, n)
	if !ok {
		return 0, false
	}
	if x < 1 {
		d.fieldErr(path, "must be at least 1")
		return 0, false
	}
	return x, true
}

// duration decodes a duration: a Go duration ("90s", "1h30m", "250ms") or
// a whole number of days ("7d"). It must be at least min; "0" is accepted
// when min is 0.
func (d *decoder) duration(path string, n *yaml.Node, min time.Duration) (time.Duration, bool) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" && n.Value == "0" && min <= 0 {
		return 0, true // a bare 0 needs no unit
	}
	s, ok := d.str(path, n)
	if !ok {
		return 0, false
	}
	v, err := ParseDuration(s)
	if err != nil {
		d.fieldErr(path, "%v", err)
		return 0, false
	}
	if v < min {
		d.fieldErr(path, "%s is shorter than %s", s, min)
		return 0, false
	}
	return v, true
}

// ParseDuration parses a Go duration ("90s", "1h30m") or a whole number of
// days ("7d"); negative values are refused.
func ParseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok && isDecimal(days) && len(days) <= 5 {
		n, _ := strconv.Atoi(days)
		return time.Duration(n) * 24 * time.Hour, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: want e.g. 90s, 10m, 1h30m or 7d", s)
	}
	if v < 0 {
		return 0, fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	return v, nil
}

// pool decodes a pool size: 0 (off) to MaxPool.
func (d *decoder) pool(path string, n *yaml.Node) (int, bool) {
	x, ok := d.integer(path, n)
	if !ok {
		return 0, false
	}
	if x < 0 || x > MaxPool {
		d.fieldErr(path, "%d is out of range (want 0 to %d; 0 turns pre-opened connections off)", x, MaxPool)
		return 0, false
	}
	return x, true
}

// healthCheck decodes {interval, timeout}; absent fields take defaults.
func (d *decoder) healthCheck(path string, n *yaml.Node) *HealthCheck {
	h := &HealthCheck{Interval: DefaultHealthInterval, Timeout: DefaultHealthTimeout}
	d.mapping(path, section(n), fields{
		"interval": func(p string, v *yaml.Node) {
			if x, ok := d.duration(p, v, 100*time.Millisecond); ok {
				h.Interval = x
			}
		},
		"timeout": func(p string, v *yaml.Node) {
			if x, ok := d.duration(p, v, 10*time.Millisecond); ok {
				h.Timeout = x
			}
		},
	})
	return h
}

// hostname is the default agent.id: the machine's name, or "agent".
func hostname() string {
	h, err := os.Hostname()
	if err != nil || checkKeyName(h) != nil {
		return "agent"
	}
	return h
}
