package endpoint

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

func TestCanonical(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"localhost:5432", "localhost:5432"},
		{"LOCALHOST.:5432", "localhost:5432"},
		{"Db.Corp.Local:1433", "db.corp.local:1433"},
		{"db_1.corp-2.local:1", "db_1.corp-2.local:1"},
		{"a:65535", "a:65535"},
		{"127.0.0.1:5432", "127.0.0.1:5432"},
		{"10.0.0.10:80", "10.0.0.10:80"},
		{"0.0.0.0:80", "0.0.0.0:80"},
		{"[::1]:80", "[::1]:80"},
		{"[::]:80", "[::]:80"},
		{"[::ffff:127.0.0.1]:5432", "127.0.0.1:5432"},
		{"[::FFFF:7F00:1]:5432", "127.0.0.1:5432"},
		{"[0:0:0:0:0:ffff:7f00:1]:5432", "127.0.0.1:5432"},
		{"[2001:DB8:0:0::1]:443", "[2001:db8::1]:443"},
		{"[2001:0db8:0000:0000:0000:0000:0000:0001]:443", "[2001:db8::1]:443"},
		{"[::127.0.0.1]:80", "[::7f00:1]:80"}, // IPv4-compatible, not mapped: a different address
		{"1.2.3.4.example:80", "1.2.3.4.example:80"},
	} {
		t.Run(c.in, func(t *testing.T) {
			got, err := Canonical(c.in)
			if err != nil || got != c.want {
				t.Fatalf("Canonical(%q) = %q, %v; want %q", c.in, got, err, c.want)
			}
			again, err := Canonical(got)
			if err != nil || again != got {
				t.Fatalf("Canonical(%q) = %q, %v; not idempotent", got, again, err)
			}
		})
	}
}

func TestRefused(t *testing.T) {
	for _, s := range []string{
		// inet_aton shorthand, octal, hex, leading zeros
		"127.1:5432", "127.0.1:5432", "2130706433:5432", "0x7f000001:5432", "017700000001:5432",
		"0x7f.0.0.1:5432", "0X7F.0.0.1:5432", "0x7f.1:5432", "0177.0.0.1:5432", "127.000.000.001:5432",
		"127.0.0.01:5432", "127.0.0.0x1:5432", "10.0.0.010:80", "010.0.0.10:80", "10.0.0.010.:80",
		"127.1.:5432", "1.2.3.4.5:80", "256.0.0.1:80", "1.2.3:80", "x.0x7f:80", "x.0x:80", "x.123:80",
		// ports
		"host:05432", "host:5432 ", "host:+5432", "host:-1", "host:0", "host:00", "host:65536", "host:99999",
		"host:123456", "host:", "host", "host:0x50", "host:http", "host:５４３２", "host:80:80",
		// control characters, spaces
		"host:5432\x00", "host\x00:5432", " host:5432", "host :5432", "host name:80", "host\t:80",
		"host\n:80", "host\r\n:80", "host:80\n",
		// hosts
		":5432", ".:80", "..:80", "a..b:80", ".a:80", "a.b..:80", "-a.com:80", "a-.com:80", "a.-b.com:80",
		"a/b:80", "a@b:80", "a%2eb:80", "a*b:80", "user@host:80", "http://host:80",
		strings.Repeat("a", 64) + ".com:80", strings.Repeat("a.", 127) + "aa:80", strings.Repeat("a", 301) + ":80",
		// unicode hosts (including runes that strings.ToLower maps to ASCII)
		"bücher.example:80", "\u212Aube.local:80", "\u0130nternal:80", "locaLHOST\u0307:80",
		"ｌｏｃａｌｈｏｓｔ:80", "xn--bcher-kva.example\u3002:80", "local\u200bhost:80",
		// IPv6
		"[::1]", "[::1]80", "[::1]:", "::1:80", "::1", "[127.0.0.1]:80", "[localhost]:80", "[fe80::1%eth0]:80",
		"[fe80::1%25eth0]:80", "[::1]]:80", "[[::1]]:80", "[::1:80", "::1]:80", "[::g]:80", "[1:2:3:4:5:6:7:8:9]:80",
		"[::ffff:127.000.0.1]:80", "[::ffff:127.1]:80", "[ ::1]:80", "[::1 ]:80", "[]:80",
	} {
		t.Run(fmt.Sprintf("%q", s), func(t *testing.T) {
			e, err := Parse(s)
			if !errors.Is(err, ErrInvalid) || e != (Endpoint{}) {
				t.Fatalf("Parse(%q) = %+v, %v; want ErrInvalid", s, e, err)
			}
			if c, err := Canonical(s); !errors.Is(err, ErrInvalid) || c != "" {
				t.Fatalf("Canonical(%q) = %q, %v; want ErrInvalid", s, c, err)
			}
		})
	}
}

func TestEndpoint(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Endpoint
		ip   bool
	}{
		{"Db.Corp.Local:1433", Endpoint{"db.corp.local", 1433}, false},
		{"127.0.0.1:5432", Endpoint{"127.0.0.1", 5432}, true},
		{"[::ffff:127.0.0.1]:5432", Endpoint{"127.0.0.1", 5432}, true},
		{"[2001:DB8::1]:443", Endpoint{"2001:db8::1", 443}, true},
	} {
		t.Run(c.in, func(t *testing.T) {
			e, err := Parse(c.in)
			if err != nil || e != c.want || e.IsIP() != c.ip {
				t.Fatalf("Parse(%q) = %+v (IsIP %v), %v; want %+v (IsIP %v)", c.in, e, e.IsIP(), err, c.want, c.ip)
			}
		})
	}
}

// atonRef is a reference for what a lenient resolver (glibc inet_aton, which
// getaddrinfo and many dialers use) makes of an IPv4-looking host: 1 to 4
// parts, each decimal, octal (leading 0) or hex (0x), the last filling the
// remaining bytes.
func atonRef(h string) (netip.Addr, bool) {
	parts := strings.Split(h, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var vals []uint64
	for _, p := range parts {
		base := 10
		switch {
		case len(p) > 2 && (p[:2] == "0x" || p[:2] == "0X"):
			base, p = 16, p[2:]
		case len(p) > 1 && p[0] == '0':
			base, p = 8, p[1:]
		}
		v, err := strconv.ParseUint(p, base, 32)
		if err != nil || p == "" || p[0] == '+' {
			return netip.Addr{}, false
		}
		vals = append(vals, v)
	}
	var n uint64
	for i, v := range vals[:len(vals)-1] {
		if v > 255 {
			return netip.Addr{}, false
		}
		n |= v << (24 - 8*i)
	}
	last := vals[len(vals)-1]
	if last >= 1<<(8*(5-len(vals))) {
		return netip.Addr{}, false
	}
	n |= last
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), true
}

// trueDest is an independent reading of what s names, as a lenient dialer
// would understand it: inet_aton for IPv4-looking hosts, netip for bracketed
// IPv6 (unmapped), a case-insensitive DNS name (trailing dot dropped)
// otherwise, and a decimal port. ok is false when s has no clear meaning.
func trueDest(s string) (string, bool) {
	var host, port string
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 || !strings.HasPrefix(s[end:], "]:") {
			return "", false
		}
		host, port = s[1:end], s[end+2:]
		a, err := netip.ParseAddr(host)
		if err != nil || a.Zone() != "" {
			return "", false
		}
		host = a.Unmap().String()
	} else {
		i := strings.LastIndex(s, ":")
		if i < 0 {
			return "", false
		}
		host, port = s[:i], s[i+1:]
		if a, ok := atonRef(host); ok {
			host = a.String()
		} else {
			// DNS names are case-insensitive in ASCII only: a non-ASCII
			// rune is never the same as the ASCII letter it lowers to.
			host = strings.Map(func(r rune) rune {
				if 'A' <= r && r <= 'Z' {
					return r + 'a' - 'A'
				}
				return r
			}, strings.TrimSuffix(host, "."))
		}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 || host == "" {
		return "", false
	}
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + strconv.Itoa(int(p)), true
	}
	return host + ":" + strconv.Itoa(int(p)), true
}

// ipv4Spellings returns many spellings of a (inet_aton forms, mapped IPv6).
func ipv4Spellings(a netip.Addr) []string {
	b := a.As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	part := []func(uint32) string{
		func(v uint32) string { return strconv.FormatUint(uint64(v), 10) },
		func(v uint32) string { return "0" + strconv.FormatUint(uint64(v), 8) },
		func(v uint32) string { return "0x" + strconv.FormatUint(uint64(v), 16) },
		func(v uint32) string { return "0X" + strings.ToUpper(strconv.FormatUint(uint64(v), 16)) },
		func(v uint32) string { return "00" + strconv.FormatUint(uint64(v), 10) },
	}
	var out []string
	for _, f := range part {
		out = append(out,
			f(n),
			f(uint32(b[0]))+"."+f(n&0xffffff),
			f(uint32(b[0]))+"."+f(uint32(b[1]))+"."+f(n&0xffff),
			f(uint32(b[0]))+"."+f(uint32(b[1]))+"."+f(uint32(b[2]))+"."+f(uint32(b[3])),
		)
		for i := 0; i < 4; i++ { // one odd part among decimal ones
			p := []string{strconv.Itoa(int(b[0])), strconv.Itoa(int(b[1])), strconv.Itoa(int(b[2])), strconv.Itoa(int(b[3]))}
			p[i] = f(uint32(b[i]))
			out = append(out, strings.Join(p, "."))
		}
	}
	var withDot []string
	for _, s := range out {
		withDot = append(withDot, s+".")
	}
	out = append(out, withDot...)
	m := netip.AddrFrom16(a.As16())
	x := m.As16()
	out = append(out,
		"["+m.String()+"]",
		"[::ffff:"+a.String()+"]",
		"[::FFFF:"+a.String()+"]",
		fmt.Sprintf("[::ffff:%x:%x]", uint16(x[12])<<8|uint16(x[13]), uint16(x[14])<<8|uint16(x[15])),
		"[0:0:0:0:0:ffff:"+a.String()+"]",
		"[::"+a.String()+"]", // IPv4-compatible: a different address
	)
	return out
}

// TestNoConfusion: no spelling of an endpoint canonicalises to a published
// endpoint other than the one it truly names (per trueDest), and an accepted
// spelling always canonicalises to exactly what it names.
func TestNoConfusion(t *testing.T) {
	published := []string{
		"127.0.0.1:5432", "10.0.0.8:80", "10.0.0.10:80", "8.0.0.10:80", "10.0.0.1:80", "10.0.1.0:80",
		"10.1.0.0:80", "127.0.0.1:80", "[::1]:80", "[::7f00:1]:80", "localhost:5432", "db.corp.local:1433",
		"kube.local:80", "internal:80",
	}
	pub := map[string]bool{}
	for _, p := range published {
		c, err := Canonical(p)
		if err != nil || c != p {
			t.Fatalf("published %q is not canonical: %q, %v", p, c, err)
		}
		pub[p] = true
	}
	var candidates []string
	ports := []string{"80", "5432", "1433", "080", "05432", "+80", "80 ", " 80", "0x50", "80\x00"}
	for _, p := range published {
		e, _ := Parse(p)
		var hosts []string
		if a, err := netip.ParseAddr(e.Host); err == nil && a.Is4() {
			hosts = ipv4Spellings(a)
		} else if err == nil {
			hosts = []string{"[" + a.String() + "]", "[" + strings.ToUpper(a.StringExpanded()) + "]", a.String()}
		} else {
			hosts = []string{e.Host, strings.ToUpper(e.Host), e.Host + ".", e.Host + "..", "." + e.Host,
				" " + e.Host, e.Host + "\x00", strings.ReplaceAll(e.Host, "k", "\u212A"), strings.ReplaceAll(e.Host, "i", "\u0130")}
		}
		for _, h := range hosts {
			for _, port := range ports {
				candidates = append(candidates, h+":"+port)
			}
		}
	}
	candidates = append(candidates, "10.0.0.010:80", "010.0.0.10:80", "10.0.0.0x0a:80", "10.0.0.012:80", "10.8:80",
		"10.0.8:80", "0xa.0.0.8:80", "167772168:80", "127.1:5432", "0x7f.1:5432", "2130706433:5432")

	accepted := 0
	for _, s := range candidates {
		c, err := Canonical(s)
		if err != nil {
			continue
		}
		accepted++
		want, ok := trueDest(s)
		if !ok || c != want {
			t.Errorf("Canonical(%q) = %q, but it names %q (ok=%v)", s, c, want, ok)
		} else if pub[c] && c != want {
			t.Errorf("Canonical(%q) = published %q, but it names %q", s, c, want)
		}
	}
	if accepted == 0 || accepted == len(candidates) {
		t.Fatalf("accepted %d of %d candidates: the generator is broken", accepted, len(candidates))
	}
	t.Logf("%d candidates, %d accepted, all naming what they canonicalise to", len(candidates), accepted)
}

func TestAtonRef(t *testing.T) { // the reference itself
	for in, want := range map[string]string{
		"127.1": "127.0.0.1", "0x7f.1": "127.0.0.1", "0177.0.0.1": "127.0.0.1", "2130706433": "127.0.0.1",
		"10.0.0.010": "10.0.0.8", "127.000.000.001": "127.0.0.1", "1.2.3.4": "1.2.3.4", "1.0x10000": "1.1.0.0",
	} {
		if a, ok := atonRef(in); !ok || a.String() != want {
			t.Errorf("atonRef(%q) = %v, %v; want %s", in, a, ok, want)
		}
	}
	for _, in := range []string{"256.1.1.1", "1.2.3.4.5", "a.b", "", "1..2", "08", "0x", "1.16777216"} {
		if a, ok := atonRef(in); ok {
			t.Errorf("atonRef(%q) = %v, want failure", in, a)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"localhost:5432", "LOCALHOST.:5432", "[::ffff:127.0.0.1]:5432", "[2001:DB8:0:0::1]:443", "127.1:5432",
		"0x7f.0.0.1:5432", "host:05432", "[fe80::1%eth0]:80", "\u212Aube.local:80", "10.0.0.010:80", "[::1]",
		"a..b:80", "host:65536", "[::127.0.0.1]:80", "x.0x7f:80",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := Parse(s)
		c, cerr := Canonical(s)
		if (err == nil) != (cerr == nil) {
			t.Fatalf("Parse and Canonical disagree on %q: %v / %v", s, err, cerr)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) || e != (Endpoint{}) || c != "" {
				t.Fatalf("Parse(%q) = %+v, %v", s, e, err)
			}
			return
		}
		if c != e.String() || e.Port == 0 || e.Host == "" {
			t.Fatalf("Parse(%q) = %+v, Canonical = %q", s, e, c)
		}
		c2, err := Canonical(c)
		if err != nil || c2 != c {
			t.Fatalf("Canonical(Canonical(%q)) = %q, %v; want %q", s, c2, err, c)
		}
		if e2, err := Parse(c); err != nil || e2 != e {
			t.Fatalf("Parse(%q) = %+v, %v; want %+v", c, e2, err, e)
		}
		for i := 0; i < len(c); i++ {
			if ch := c[i]; ch <= ' ' || ch >= 0x7f || ch >= 'A' && ch <= 'Z' {
				t.Fatalf("canonical %q has byte %q", c, ch)
			}
		}
		if want, ok := trueDest(s); !ok || want != c {
			t.Fatalf("Canonical(%q) = %q, but it names %q (ok=%v)", s, c, want, ok)
		}
		if e.IsIP() {
			if a := netip.MustParseAddr(e.Host); a.Is4In6() || a.String() != e.Host {
				t.Fatalf("IP host %q not canonical", e.Host)
			}
		}
	})
}
