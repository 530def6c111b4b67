package rules

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hybridconn/hybrid/internal/endpoint"
)

// section treats a null section ("relay:" with everything below commented
// out) as an empty one, so that what it lacks is reported.
func section(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.ScalarNode && isNull(n) {
		return &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: n.Line, Column: n.Column}
	}
	return n
}

// root decodes the top-level mapping.
func (d *decoder) root(n *yaml.Node) *Config {
	cfg := &Config{File: d.file}
	if v := deref(n); v != nil && v.Kind != yaml.MappingNode {
		d.errorf(v.Line, "", "want a mapping of log, relay, agent and proxy sections, got %s", describe(v))
		return cfg
	}
	seen, ok := d.mapping("", n, fields{
		"log": func(p string, v *yaml.Node) { cfg.Log = d.log(p, section(v)) },
		"relay": func(p string, v *yaml.Node) {
			if !d.skip["relay"] {
				cfg.Relay = d.relay(p, section(v))
			}
		},
		"agent": func(p string, v *yaml.Node) {
			if !d.skip["agent"] {
				cfg.Agent = d.agent(p, section(v))
			}
		},
		"proxy": func(p string, v *yaml.Node) {
			if !d.skip["proxy"] {
				cfg.Proxy = d.proxy(p, section(v))
			}
		},
	})
	if ok && !seen["relay"] && !seen["agent"] && !seen["proxy"] {
		d.errorf(0, "", "no relay, agent or proxy section")
	}
	return cfg
}

// log decodes the log section; values are checked in finishLog.
func (d *decoder) log(path string, n *yaml.Node) Log {
	var l Log
	d.mapping(path, n, fields{
		"level":  func(p string, v *yaml.Node) { l.Level, _ = d.str(p, v) },
		"format": func(p string, v *yaml.Node) { l.Format, _ = d.str(p, v) },
	})
	return l // checked after environment overrides, in finishLog
}

var levels = []string{"trace", "debug", "info", "warn", "error"}

// finishLog applies defaults to l and checks it. levelEnv and formatEnv name
// the environment variables that overrode the file, if any.
func (d *decoder) finishLog(l *Log, levelEnv, formatEnv string) {
	if l.Level == "" && levelEnv == "" && d.lines["log.level"] == 0 {
		l.Level = DefaultLevel
	}
	if l.Format == "" && formatEnv == "" && d.lines["log.format"] == 0 {
		l.Format = DefaultFormat
	}
	from := func(env string) string {
		if env == "" {
			return ""
		}
		return " from " + env
	}
	if !d.bad("log.level") {
		d.checkOneOf("log.level", l.Level, "level", from(levelEnv), levels...)
	}
	if !d.bad("log.format") {
		d.checkOneOf("log.format", l.Format, "format", from(formatEnv), "text", "json")
	}
}

// relay decodes and checks the relay section: listen defaults and conflicts,
// the namespace default, the TLS requirement, and that some key exists.
func (d *decoder) relay(path string, n *yaml.Node) *Relay {
	r := &Relay{}
	rawAdmin := map[string]string{}
	var listen []listenAddr
	listenField := func(dst *string) func(string, *yaml.Node) {
		return func(p string, v *yaml.Node) {
			if a, ok := d.listen(p, v); ok {
				*dst = a.text
				listen = append(listen, a)
			}
		}
	}
	rf := fields{
		"namespace": func(p string, v *yaml.Node) { r.Namespace, _ = d.host(p, v) },
		"listen": func(p string, v *yaml.Node) {
			d.mapping(p, v, fields{
				"control": listenField(&r.Listen.Control),
				"data":    listenField(&r.Listen.Data),
				"http":    listenField(&r.Listen.HTTP),
			})
		},
		"tls":         func(p string, v *yaml.Node) { r.TLS = d.tls(p, v) },
		"insecure":    func(p string, v *yaml.Node) { r.Insecure, _ = d.boolean(p, v) },
		"keys":        func(p string, v *yaml.Node) { r.Keys = d.keys(p, v) },
		"connections": func(p string, v *yaml.Node) { r.Connections = d.relayConnections(p, v) },
		"limits":      func(p string, v *yaml.Node) { r.Limits = d.relayLimits(p, v) },
		"fleet": func(p string, v *yaml.Node) {
			var ls []listenAddr
			r.Fleet, ls = d.fleet(p, v)
			listen = append(listen, ls...)
		},
		"admin":       listenField(&r.Admin),
		"admin_token": func(p string, v *yaml.Node) { rawAdmin["admin_token"], _ = d.str(p, v) },
		"admin_token_file": func(p string, v *yaml.Node) {
			rawAdmin["admin_token_file"], _ = d.str(p, v)
		},
		"rotation_grace": func(p string, v *yaml.Node) { r.RotationGrace, _ = d.duration(p, v, 0) },
		"join_timeout":   func(p string, v *yaml.Node) { r.JoinTimeout, _ = d.duration(p, v, 50*time.Millisecond) },
		"ping_interval":  func(p string, v *yaml.Node) { r.PingInterval, _ = d.duration(p, v, 100*time.Millisecond) },
		"drain_grace":    func(p string, v *yaml.Node) { r.DrainGrace, _ = d.duration(p, v, 0) },
		"reuse_port":     func(p string, v *yaml.Node) { r.ReusePort, _ = d.boolean(p, v) },
	}
	d.relayAzureFields(rf, r)
	seen, ok := d.mapping(path, n, rf)
	if !ok {
		return r
	}
	if !seen["limits"] {
		r.Limits = d.relayLimits(path+".limits", nil)
	}
	for _, f := range []struct {
		name string
		dst  *time.Duration
		def  time.Duration
	}{
		{"rotation_grace", &r.RotationGrace, DefaultRotationGrace},
		{"join_timeout", &r.JoinTimeout, DefaultJoinTimeout},
		{"ping_interval", &r.PingInterval, DefaultPingInterval},
		{"drain_grace", &r.DrainGrace, DefaultDrainGrace},
	} {
		if !seen[f.name] {
			*f.dst = f.def
		}
	}
	if !seen["reuse_port"] {
		r.ReusePort = true
	}
	if seen["admin_token"] || seen["admin_token_file"] {
		r.AdminToken = d.secret(path, "admin_token", seen, rawAdmin, false)
	}
	// Defaults for the listen addresses left out.
	for _, f := range []struct {
		name, def string
		dst       *string
	}{
		{"control", DefaultListenControl, &r.Listen.Control},
		{"data", DefaultListenData, &r.Listen.Data},
		{"http", DefaultListenHTTP, &r.Listen.HTTP},
	} {
		fp := path + ".listen." + f.name
		if _, given := d.lines[fp]; given {
			continue
		}
		*f.dst = f.def
		a, _ := parseListen(f.def)
		a.field, a.def = fp, true
		listen = append(listen, a)
	}
	d.checkListeners(sortByLine(d, listen))

	control, err := parseListen(r.Listen.Control)
	if !seen["namespace"] && err == nil {
		if control.wildcard() {
			d.errorf(d.line(path+".listen.control"), path+".namespace",
				"required when listen.control %q names no host: give the name clients use to reach this relay", r.Listen.Control)
		} else {
			r.Namespace = control.host
		}
	}

	if r.TLS == nil && !seen["tls"] && !r.Insecure {
		for _, a := range sortByLine(d, listen) {
			if !a.loopback() && a.field != path+".admin" && !(a.field == path+".fleet.listen" && r.Fleet != nil && r.Fleet.TLS != nil) {
				d.errorf(d.line(a.field), path+".tls",
					"required because %s %q is not a loopback address: add tls: {cert: FILE, key: FILE}, or set insecure: true to serve plain TCP anyway",
					a.name(), a.text)
				break
			}
		}
	}

	for _, a := range listen {
		if a.field == path+".admin" && !a.loopback() {
			d.fieldWarn(a.field, "%q is not a loopback address: anyone who can reach it reads /status and /metrics (agent addresses, connection names)", a.text)
		}
	}
	if len(r.Connections) == 0 && len(r.Keys) == 0 && !d.bad(path+".keys") && !d.bad(path+".connections") {
		d.errorf(d.line(path), path, "no connections and no namespace keys: add connections, or keys covering every connection")
	}
	if len(r.Keys) == 0 {
		for i, c := range r.Connections {
			cp := index(path+".connections", i)
			if len(c.Keys) == 0 && !d.bad(cp+".keys") {
				d.errorf(d.line(cp), cp+".keys", "no keys here and none in %s.keys: nobody could use this connection", path)
			}
		}
	}
	return r
}

// fleet decodes relay.fleet; its listen address joins the relay's for the
// conflict check.
func (d *decoder) fleet(path string, n *yaml.Node) (*Fleet, []listenAddr) {
	f := &Fleet{}
	raw := map[string]string{}
	var ls []listenAddr
	rawStr := func(name string) func(string, *yaml.Node) {
		return func(p string, v *yaml.Node) {
			if s, ok := d.str(p, v); ok {
				raw[name] = s
			}
		}
	}
	seen, ok := d.mapping(path, section(n), fields{
		"redis": func(p string, v *yaml.Node) { f.Redis, _ = d.envString(p, v) },
		"id": func(p string, v *yaml.Node) {
			if s, ok := d.envString(p, v); ok {
				if err := checkKeyName(s); err != nil {
					d.fieldErr(p, "%v", err)
				} else {
					f.ID = s
				}
			}
		},
		"listen": func(p string, v *yaml.Node) {
			if a, ok := d.listen(p, v); ok {
				f.Listen = a.text
				ls = append(ls, a)
			}
		},
		"advertise": func(p string, v *yaml.Node) {
			if s, ok := d.envString(p, v); ok {
				if h, port, err := net.SplitHostPort(s); err != nil || h == "" || port == "" || port == "0" {
					d.fieldErr(p, "invalid address %q: want host:port that other relays can reach", s)
				} else {
					f.Advertise = s
				}
			}
		},
		"tls": func(p string, v *yaml.Node) {
			t := &FleetTLS{}
			s, ok := d.mapping(p, v, fields{
				"cert": func(p string, v *yaml.Node) { t.Cert, _ = d.path(p, v, "tls") },
				"key":  func(p string, v *yaml.Node) { t.Key, _ = d.path(p, v, "tls") },
				"ca":   func(p string, v *yaml.Node) { t.CA, _ = d.path(p, v, "tls") },
			})
			if ok {
				d.require(p, s, "cert", "key", "ca")
				f.TLS = t
			}
		},
		"secret":      rawStr("secret"),
		"secret_file": rawStr("secret_file"),
	})
	if !ok {
		return nil, nil
	}
	d.require(path, seen, "redis", "listen")
	if seen["secret"] || seen["secret_file"] {
		f.Secret = d.secret(path, "secret", seen, raw, false)
	}
	if f.Redis != "" && !d.bad(path+".redis") {
		if i := strings.Index(f.Redis, "://"); i < 0 || !slices.Contains([]string{"redis", "rediss", "redis-sentinel", "redis-cluster"}, f.Redis[:i]) {
			d.fieldErr(path+".redis", "want redis://, rediss://, redis-sentinel:// or redis-cluster:// (a URL; ${VAR} is read from the environment)")
		}
	}
	if !seen["tls"] && !seen["secret"] && !seen["secret_file"] && !seen[mergeKey] {
		d.fieldErr(path, "needs tls: {cert, key, ca} or secret: relay-to-relay connections are never open unauthenticated")
	}
	if f.ID == "" {
		// Two relays must never share an id: a host name that cannot be
		// one is an error, not a shared fallback.
		if h, err := os.Hostname(); err != nil || checkKeyName(h) != nil {
			d.fieldErr(path+".id", "required: the host name %q cannot be a fleet id (1-256 of A-Z a-z 0-9 . _ -)", h)
		} else {
			f.ID = h
		}
	}
	if f.Advertise == "" && len(ls) == 1 && !d.bad(path+".listen") {
		if ls[0].wildcard() {
			d.fieldErr(path+".advertise", "required when listen %q names no host: give the address other relays reach this one at", f.Listen)
		} else {
			f.Advertise = f.Listen
		}
	}
	return f, ls
}

// envString decodes a string that may be written ${VAR} (read from the
// environment).
func (d *decoder) envString(path string, n *yaml.Node) (string, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return "", false
	}
	if m := envRef.FindStringSubmatch(s); m != nil {
		v, set := os.LookupEnv(m[1])
		if !set || v == "" {
			d.fieldErr(path, "environment variable %s is not set", m[1])
			return "", false
		}
		return v, true
	}
	return s, true
}

// relayLimits decodes relay.limits (n nil: all defaults).
func (d *decoder) relayLimits(path string, n *yaml.Node) RelayLimits {
	l := RelayLimits{Connections: DefaultLimitConnections, PerSource: DefaultLimitPerSource,
		Pending: DefaultLimitPending, PendingPerKey: DefaultLimitPendingPerKey}
	if n == nil {
		return l
	}
	positive := func(dst *int) func(string, *yaml.Node) {
		return func(p string, v *yaml.Node) {
			if x, ok := d.integer(p, v); ok {
				if x < 1 {
					d.fieldErr(p, "must be at least 1")
					return
				}
				*dst = x
			}
		}
	}
	d.mapping(path, section(n), fields{
		"connections":     positive(&l.Connections),
		"per_source":      positive(&l.PerSource),
		"pending":         positive(&l.Pending),
		"pending_per_key": positive(&l.PendingPerKey),
	})
	if l.PerSource > l.Connections && !d.badUnder(path) {
		d.fieldWarn(path+".per_source", "%d is more than connections (%d): one source can take every connection", l.PerSource, l.Connections)
	}
	return l
}

// sortByLine orders listen addresses as they appear in the file, defaults
// last, so conflicts are reported on the later line.
func sortByLine(d *decoder, as []listenAddr) []listenAddr {
	out := slices.Clone(as)
	key := func(a listenAddr) int {
		if a.def {
			return math.MaxInt
		}
		return d.line(a.field)
	}
	slices.SortStableFunc(out, func(a, b listenAddr) int { return cmp.Compare(key(a), key(b)) })
	return out
}

// tls decodes {cert, key}, both required, paths resolved.
func (d *decoder) tls(path string, n *yaml.Node) *TLS {
	t := &TLS{}
	seen, ok := d.mapping(path, n, fields{
		"cert": func(p string, v *yaml.Node) { t.Cert, _ = d.path(p, v, "tls") },
		"key":  func(p string, v *yaml.Node) { t.Key, _ = d.path(p, v, "tls") },
	})
	if !ok {
		return nil
	}
	d.require(path, seen, "cert", "key")
	return t
}

// keys decodes a list of key rules, names unique within it.
func (d *decoder) keys(path string, n *yaml.Node) []Key {
	items, ok := d.seq(path, n)
	if !ok {
		return nil
	}
	keys := make([]Key, 0, len(items))
	names := map[string]int{}
	for i, it := range items {
		ip := index(path, i)
		k := d.key(ip, it)
		if k.Name != "" {
			d.firstSeen(names, k.Name, ip+".name", fmt.Sprintf("duplicate key name %q", k.Name), ")")
		}
		keys = append(keys, k)
	}
	return keys
}

var allRights = []string{RightListen, RightSend, RightManage}

// key decodes one rule; its values may be literal, ${ENV} or *_file.
func (d *decoder) key(path string, n *yaml.Node) Key {
	var k Key
	raw := map[string]string{}
	rawStr := func(name string) func(string, *yaml.Node) {
		return func(p string, v *yaml.Node) {
			if s, ok := d.str(p, v); ok {
				raw[name] = s
			}
		}
	}
	seen, ok := d.mapping(path, n, fields{
		"name":           func(p string, v *yaml.Node) { k.Name, _ = d.name(p, v, checkKeyName) },
		"rights":         func(p string, v *yaml.Node) { k.Rights = d.rights(p, v) },
		"primary":        rawStr("primary"),
		"primary_file":   rawStr("primary_file"),
		"secondary":      rawStr("secondary"),
		"secondary_file": rawStr("secondary_file"),
		"revoke":         func(p string, v *yaml.Node) { k.Revoke, _ = d.boolean(p, v) },
	})
	if !ok {
		return k
	}
	d.require(path, seen, "name", "rights")
	k.Primary = d.secret(path, "primary", seen, raw, true)
	k.Secondary = d.secret(path, "secondary", seen, raw, false)
	return k
}

// require reports each of names missing from the mapping at path.
func (d *decoder) require(path string, seen map[string]bool, names ...string) {
	if seen[mergeKey] {
		return
	}
	for _, f := range names {
		if !seen[f] {
			d.errorf(d.line(path), child(path, f), "required")
		}
	}
}

// rights decodes a non-empty list of distinct rights.
func (d *decoder) rights(path string, n *yaml.Node) []string {
	var out []string
	first := map[string]int{}
	ok := d.strList(path, n, func(p, s string) {
		if !d.checkOneOf(p, s, "right", "", allRights...) {
			return
		}
		if d.firstSeen(first, s, p, fmt.Sprintf("duplicate right %q", s), ")") {
			out = append(out, s)
		}
	})
	if ok && len(first) == 0 && !d.badUnder(path) {
		d.fieldErr(path, "want at least one of listen, send or manage")
	}
	return out
}

// nameSet checks hybrid connection names for uniqueness (case-insensitively:
// "Postgres" and "postgres" would be too easy to confuse in tokens and logs).
type nameSet map[string]int

// uniqueName reports name at field if seen already holds it.
func (d *decoder) uniqueName(seen nameSet, field, name string) {
	if name == "" {
		return
	}
	d.firstSeen(seen, strings.ToLower(name), field, fmt.Sprintf("duplicate name %q", name), "; names are compared ignoring case)")
}

// relayConnections decodes relay.connections.
func (d *decoder) relayConnections(path string, n *yaml.Node) []RelayConnection {
	items, ok := d.seq(path, n)
	if !ok {
		return nil
	}
	out := make([]RelayConnection, 0, len(items))
	seenNames := nameSet{}
	for i, it := range items {
		ip := index(path, i)
		var c RelayConnection
		seen, ok := d.mapping(ip, it, fields{
			"name": func(p string, v *yaml.Node) { c.Name, _ = d.name(p, v, checkName) },
			"keys": func(p string, v *yaml.Node) { c.Keys = d.keys(p, v) },
		})
		if ok {
			d.require(ip, seen, "name")
			d.uniqueName(seenNames, ip+".name", c.Name)
		}
		out = append(out, c)
	}
	return out
}

// relayEndpoint decodes one relay entry: a host alone or a mapping.
func (d *decoder) relayEndpoint(path string, n *yaml.Node) RelayEndpoint {
	e := RelayEndpoint{Control: DefaultControlPort, Data: DefaultDataPort, HTTP: DefaultHTTPPort}
	tlsSet := false
	v := deref(n)
	switch {
	case v == nil:
		return e
	case v.Kind == yaml.ScalarNode && v.ShortTag() == "!!str":
		e.Host, _ = d.host(path, v)
	case v.Kind == yaml.MappingNode:
		port := func(dst *int) func(string, *yaml.Node) {
			return func(p string, v *yaml.Node) {
				if x, ok := d.port(p, v); ok {
					*dst = x
				}
			}
		}
		seen, _ := d.mapping(path, v, fields{
			"host":      func(p string, v *yaml.Node) { e.Host, _ = d.host(p, v) },
			"control":   port(&e.Control),
			"data":      port(&e.Data),
			"http":      port(&e.HTTP),
			"tls":       func(p string, v *yaml.Node) { e.TLS, tlsSet = d.boolean(p, v) },
			"namespace": func(p string, v *yaml.Node) { e.Namespace, _ = d.host(p, v) },
			"rendezvous_hosts": func(p string, v *yaml.Node) {
				e.RendezvousHosts = []string{}
				d.strList(p, v, func(ip, s string) {
					suffix := strings.HasPrefix(s, ".")
					h, err := canonicalHost(strings.TrimPrefix(s, "."))
					if err != nil {
						d.fieldErr(ip, "%v", err)
						return
					}
					if suffix {
						h = "." + h
					}
					e.RendezvousHosts = append(e.RendezvousHosts, h)
				})
			},
		})
		d.require(path, seen, "host")
	default:
		d.typeErr(path, v, "a host name or a mapping {host, control, data, http, tls, namespace, rendezvous_hosts}")
	}
	if !tlsSet {
		e.TLS = !isLoopbackHost(e.Host)
	} else if !e.TLS && e.Host != "" && !isLoopbackHost(e.Host) {
		d.fieldWarn(path+".tls", "false towards %q, which is not a loopback host: tokens and stream bytes cross the network in clear", e.Host)
	}
	if e.Namespace == "" {
		e.Namespace = e.Host
	}
	if e.RendezvousHosts == nil && strings.HasSuffix(e.Host, AzureRendezvousSuffix) {
		e.RendezvousHosts = []string{AzureRendezvousSuffix}
	}
	return e
}

// relayEndpoints decodes a list of relay entries, or (one) a single entry.
func (d *decoder) relayEndpoints(path string, n *yaml.Node, one bool) []RelayEndpoint {
	var out []RelayEndpoint
	v := deref(n)
	if v == nil {
		return nil
	}
	if v.Kind != yaml.SequenceNode && one {
		out = append(out, d.relayEndpoint(path, v))
	} else {
		items, ok := d.seq(path, v)
		if !ok {
			return nil
		}
		seen := map[string]string{}
		for i, it := range items {
			ip := index(path, i)
			e := d.relayEndpoint(ip, it)
			if e.Host != "" {
				k := fmt.Sprintf("%s|%d", e.Host, e.Control)
				if prev, dup := seen[k]; dup {
					d.fieldErr(ip, "duplicate relay %q control port %d (same as %s)", e.Host, e.Control, prev)
				} else {
					seen[k] = ip
				}
			}
			out = append(out, e)
		}
		if len(items) == 0 {
			d.fieldErr(path, "want at least one relay")
		}
	}
	return out
}

var transports = []string{TransportAuto, TransportTCP, TransportWebSocket}

// agent decodes and checks the agent section, including agent.allow.
func (d *decoder) agent(path string, n *yaml.Node) *Agent {
	a := &Agent{Transport: DefaultTransport}
	var allow map[string]bool
	seen, ok := d.mapping(path, n, fields{
		"relays": func(p string, v *yaml.Node) {
			if v = deref(v); v == nil {
				return
			}
			if v.Kind != yaml.SequenceNode {
				d.typeErr(p, v, "a list of relays (a host, or a mapping {host, control, data, http, tls, namespace})")
				return
			}
			a.Relays = d.relayEndpoints(p, v, false)
		},
		"transport": func(p string, v *yaml.Node) {
			if s, ok := d.oneOf(p, v, "transport", transports...); ok {
				a.Transport = s
			}
		},
		"allow": func(p string, v *yaml.Node) {
			allow = map[string]bool{}
			first := map[string]int{}
			ok := d.strList(p, v, func(ip, s string) {
				c, err := endpoint.Canonical(s)
				if err != nil {
					d.fieldErr(ip, "%v", err)
					return
				}
				if !d.firstSeen(first, c, ip, fmt.Sprintf("duplicate endpoint %q", c), ")") {
					return
				}
				allow[c] = true
				a.Allow = append(a.Allow, c)
			})
			if ok && a.Allow == nil {
				a.Allow = []string{}
			}
		},
		"audit": func(p string, v *yaml.Node) { a.Audit, _ = d.path(p, v, "audit") },
		"admin": func(p string, v *yaml.Node) {
			if l, ok := d.listen(p, v); ok {
				a.Admin = l.text
			}
		},
		"proxy_url":   func(p string, v *yaml.Node) { a.ProxyURL, _ = d.proxyURL(p, v) },
		"connections": func(p string, v *yaml.Node) { a.Connections = d.agentConnections(p, v) },
		"max_streams": func(p string, v *yaml.Node) { a.MaxStreams, _ = d.positive(p, v) },
		"id":          func(p string, v *yaml.Node) { a.ID, _ = d.name(p, v, checkKeyName) },
		"pool":        func(p string, v *yaml.Node) { a.Pool, _ = d.pool(p, v) },
	})
	if !ok {
		return a
	}
	if !seen["pool"] {
		a.Pool = DefaultPool
	}
	if a.ID == "" {
		a.ID = hostname()
	}
	if a.MaxStreams == 0 {
		a.MaxStreams = DefaultAgentMaxStreams
	}
	d.require(path, seen, "relays")
	d.checkAgentTransport(path, a, seen["transport"])
	if allow != nil && !d.bad(path+".allow") {
		for i, c := range a.Connections {
			ep := index(path+".connections", i) + ".endpoint"
			if c.Endpoint != "" && !allow[c.Endpoint] {
				// Not an error: allow is the administrator's cap, and
				// narrowing it must take effect (the agent refuses the
				// connection and cuts its streams), not be refused.
				d.fieldWarn(ep, "%q is not in %s.allow: the agent will not serve it", c.Endpoint, path)
			}
		}
	}
	return a
}

// connKeyFields adds key_name, key and key_file to f: key and key_file are
// kept raw for secret.
func (d *decoder) connKeyFields(f fields, keyName *string, raw map[string]string) {
	f["key_name"] = func(p string, v *yaml.Node) { *keyName, _ = d.name(p, v, checkKeyName) }
	for _, k := range []string{"key", "key_file"} {
		f[k] = func(p string, v *yaml.Node) {
			if s, ok := d.str(p, v); ok {
				raw[k] = s
			}
		}
	}
}

// agentConnections decodes agent.connections.
func (d *decoder) agentConnections(path string, n *yaml.Node) []AgentConnection {
	items, ok := d.seq(path, n)
	if !ok {
		return nil
	}
	out := make([]AgentConnection, 0, len(items))
	seenNames := nameSet{}
	for i, it := range items {
		ip := index(path, i)
		var c AgentConnection
		raw := map[string]string{}
		f := fields{
			"name":         func(p string, v *yaml.Node) { c.Name, _ = d.name(p, v, checkName) },
			"endpoint":     func(p string, v *yaml.Node) { d.agentEndpoint(p, v, &c) },
			"max_streams":  func(p string, v *yaml.Node) { c.MaxStreams, _ = d.positive(p, v) },
			"health_check": func(p string, v *yaml.Node) { c.HealthCheck = d.healthCheck(p, v) },
		}
		d.connKeyFields(f, &c.KeyName, raw)
		seen, ok := d.mapping(ip, it, f)
		if ok {
			d.require(ip, seen, "name", "endpoint", "key_name")
			c.Key = d.secret(ip, "key", seen, raw, true)
			d.uniqueName(seenNames, ip+".name", c.Name)
		}
		out = append(out, c)
	}
	return out
}

// proxy decodes and checks the proxy section, including listener conflicts.
func (d *decoder) proxy(path string, n *yaml.Node) *Proxy {
	x := &Proxy{Transport: DefaultTransport}
	var listen []listenAddr
	listenField := func(dst *string) func(string, *yaml.Node) {
		return func(p string, v *yaml.Node) {
			if l, ok := d.listen(p, v); ok {
				*dst = l.text
				listen = append(listen, l)
			}
		}
	}
	seen, ok := d.mapping(path, n, fields{
		"relay": func(p string, v *yaml.Node) { x.Relays = d.relayEndpoints(p, v, true) },
		"transport": func(p string, v *yaml.Node) {
			if s, ok := d.oneOf(p, v, "transport", transports...); ok {
				x.Transport = s
			}
		},
		"socks":      listenField(&x.Socks),
		"socks_auth": func(p string, v *yaml.Node) { x.SocksAuth = d.socksAuth(p, v) },
		"hosts":      func(p string, v *yaml.Node) { x.Hosts = d.hosts(p, v) },
		"admin":      listenField(&x.Admin),
		"proxy_url":  func(p string, v *yaml.Node) { x.ProxyURL, _ = d.proxyURL(p, v) },
		"pool":       func(p string, v *yaml.Node) { x.Pool, _ = d.pool(p, v) },
		"relay_policy": func(p string, v *yaml.Node) {
			x.RelayPolicy, _ = d.oneOf(p, v, "relay policy", RelayPolicySpread, RelayPolicyPriority)
		},
		"connections": func(p string, v *yaml.Node) {
			var ls []listenAddr
			x.Connections, ls = d.proxyConnections(p, v)
			listen = append(listen, ls...)
		},
	})
	if !ok {
		return x
	}
	d.require(path, seen, "relay")
	if !seen["pool"] {
		x.Pool = DefaultPool
	}
	if x.RelayPolicy == "" {
		x.RelayPolicy = RelayPolicySpread
	}
	if seen["socks_auth"] && !seen["socks"] && !seen[mergeKey] {
		d.fieldErr(path+".socks_auth", "has no effect without socks: add socks (the SOCKS5 listen address) or remove socks_auth")
	}
	if x.Socks != "" && len(x.SocksAuth) == 0 {
		if a, err := parseListen(x.Socks); err == nil && !a.loopback() {
			d.fieldWarn(path+".socks", "%q is not a loopback address and socks_auth is not set: anyone who reaches it can use every connection of this proxy", x.Socks)
		}
	}
	d.checkListeners(sortByLine(d, listen))
	if x.Hosts != nil && !d.badUnder(path+".hosts") {
		d.checkHosts(path, x.Hosts, x.Connections, listen)
	}
	return x
}

// socksAuth decodes proxy.socks_auth: one {username, password} mapping or a
// non-empty list of them, usernames unique.
func (d *decoder) socksAuth(path string, n *yaml.Node) []SocksUser {
	v := deref(n)
	switch {
	case v == nil:
		return nil
	case v.Kind == yaml.MappingNode:
		return []SocksUser{d.socksUser(path, v)}
	case v.Kind != yaml.SequenceNode:
		d.typeErr(path, v, "a mapping {username, password} or a list of them")
		return nil
	}
	items, ok := d.seq(path, v)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		d.fieldErr(path, "want at least one user (leave socks_auth out for no authentication)")
		return nil
	}
	out := make([]SocksUser, 0, len(items))
	first := map[string]int{}
	for i, it := range items {
		ip := index(path, i)
		u := d.socksUser(ip, it)
		if u.Username != "" {
			d.firstSeen(first, u.Username, ip+".username", fmt.Sprintf("duplicate username %q", u.Username), ")")
		}
		out = append(out, u)
	}
	return out
}

// maxSocksField is the longest username or password SOCKS5 can carry
// (RFC 1929: one length byte).
const maxSocksField = 255

// socksUser decodes one {username, password | password_file}.
func (d *decoder) socksUser(path string, n *yaml.Node) SocksUser {
	var u SocksUser
	raw := map[string]string{}
	rawStr := func(name string) func(string, *yaml.Node) {
		return func(p string, v *yaml.Node) {
			if s, ok := d.str(p, v); ok {
				raw[name] = s
			}
		}
	}
	seen, ok := d.mapping(path, n, fields{
		"username":      func(p string, v *yaml.Node) { u.Username, _ = d.name(p, v, checkSocksUsername) },
		"password":      rawStr("password"),
		"password_file": rawStr("password_file"),
	})
	if !ok {
		return u
	}
	d.require(path, seen, "username")
	u.Password = d.secret(path, "password", seen, raw, true)
	if len(u.Password) > maxSocksField {
		f := "password"
		if seen["password_file"] {
			f = "password_file"
		}
		d.fieldErr(child(path, f), "password too long: %d bytes, SOCKS5 carries at most %d", len(u.Password), maxSocksField)
		u.Password = ""
	}
	return u
}

// checkSocksUsername validates a SOCKS5 username: characters that survive
// every client's configuration syntax (URLs, proxychains.conf).
func checkSocksUsername(s string) error {
	switch {
	case s == "":
		return errors.New("must not be empty")
	case len(s) > maxSocksField:
		return fmt.Errorf("invalid username %q: longer than %d characters", s, maxSocksField)
	case !validChars(s):
		return fmt.Errorf("invalid username %q: want A-Z a-z 0-9 . _ -", s)
	}
	return nil
}

// hosts decodes proxy.hosts, a mapping {file, range} whose fields default.
func (d *decoder) hosts(path string, n *yaml.Node) *Hosts {
	h := &Hosts{File: DefaultHostsFile(), Range: netip.MustParsePrefix(DefaultHostsRange)}
	_, ok := d.mapping(path, n, fields{
		"file": func(p string, v *yaml.Node) {
			s, ok := d.str(p, v)
			switch {
			case !ok:
			case s == "":
				d.fieldErr(p, "must not be empty (leave file out for %s)", DefaultHostsFile())
			default:
				h.File = d.resolve(s)
			}
		},
		"range": func(p string, v *yaml.Node) {
			if r, ok := d.hostsRange(p, v); ok {
				h.Range = r
			}
		},
	})
	if !ok {
		return nil
	}
	return h
}

// loopback4 is where hosts mode may take addresses: Linux routes all of it
// to the loopback interface, so any address in it can be bound at once.
var loopback4 = netip.MustParsePrefix("127.0.0.0/8")

// hostsRange decodes proxy.hosts.range.
func (d *decoder) hostsRange(path string, n *yaml.Node) (netip.Prefix, bool) {
	s, ok := d.str(path, n)
	if !ok {
		return netip.Prefix{}, false
	}
	bad := func(format string, args ...any) (netip.Prefix, bool) {
		d.fieldErr(path, "invalid range %q: "+format, append([]any{s}, args...)...)
		return netip.Prefix{}, false
	}
	r, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		return bad("want an IPv4 prefix such as %s", DefaultHostsRange)
	case !r.Addr().Is4():
		return bad("want an IPv4 prefix inside 127.0.0.0/8 (hosts mode listens on loopback addresses)")
	case r.Masked() != r:
		return bad("host bits set (did you mean %s?)", r.Masked())
	case r.Bits() < loopback4.Bits() || !loopback4.Contains(r.Addr()):
		return bad("not inside 127.0.0.0/8 (hosts mode listens on loopback addresses)")
	case r.Bits() > 30:
		return bad("too small (want /30 or larger)")
	case r.Contains(netip.AddrFrom4([4]byte{127, 0, 0, 1})):
		return bad("contains 127.0.0.1, where this machine's own services listen (try %s)", DefaultHostsRange)
	}
	return r, true
}

// checkHosts reports the listen addresses hosts mode would collide with: one
// inside the range (hosts mode hands those out), or a wildcard one on a port
// that a mapped name needs.
func (d *decoder) checkHosts(path string, h *Hosts, conns []ProxyConnection, listen []listenAddr) {
	ports := map[int]string{} // port -> the first mapped endpoint on it
	names := map[string]bool{}
	for _, c := range conns {
		if name, port, ok := h.Maps(c.Endpoint); ok {
			names[name] = true
			if _, dup := ports[int(port)]; !dup {
				ports[int(port)] = c.Endpoint
			}
		}
	}
	// Each name takes one address; the range's first and last are never used.
	if usable := 1<<(32-h.Range.Bits()) - 2; len(names) > usable {
		d.fieldErr(path+".hosts.range", "%s has %d usable addresses, fewer than the %d host names hosts mode maps", h.Range, usable, len(names))
	}
	for _, a := range sortByLine(d, listen) {
		switch {
		case d.bad(a.field):
		case a.ip.IsValid() && h.Range.Contains(a.ip):
			d.fieldErr(a.field, "%q is inside %s.hosts.range %s, whose addresses hosts mode hands out", a.text, path, h.Range)
		case a.wildcard() && ports[a.port] != "":
			d.fieldErr(a.field, "%q takes port %d on every address, which hosts mode needs for %s", a.text, a.port, ports[a.port])
		}
	}
}

// proxyConnections decodes proxy.connections and returns their listen
// addresses for the section-wide conflict check.
func (d *decoder) proxyConnections(path string, n *yaml.Node) ([]ProxyConnection, []listenAddr) {
	items, ok := d.seq(path, n)
	if !ok {
		return nil, nil
	}
	out := make([]ProxyConnection, 0, len(items))
	var listen []listenAddr
	seenNames := nameSet{}
	endpoints := map[string]int{}
	for i, it := range items {
		ip := index(path, i)
		var c ProxyConnection
		raw := map[string]string{}
		f := fields{
			"name":     func(p string, v *yaml.Node) { c.Name, _ = d.name(p, v, checkName) },
			"endpoint": func(p string, v *yaml.Node) { c.Endpoint, _ = d.endpointField(p, v) },
			"listen": func(p string, v *yaml.Node) {
				if l, ok := d.listen(p, v); ok {
					c.Listen = l.text
					listen = append(listen, l)
				}
			},
		}
		d.connKeyFields(f, &c.KeyName, raw)
		seen, ok := d.mapping(ip, it, f)
		if ok {
			d.require(ip, seen, "name", "key_name")
			if !seen["endpoint"] && !seen["listen"] && !seen[mergeKey] {
				d.errorf(d.line(ip), ip, "needs listen (a local port forward), endpoint (for SOCKS), or both")
			}
			c.Key = d.secret(ip, "key", seen, raw, true)
			d.uniqueName(seenNames, ip+".name", c.Name)
			if c.Endpoint != "" {
				d.firstSeen(endpoints, c.Endpoint, ip+".endpoint", fmt.Sprintf("duplicate endpoint %q", c.Endpoint),
					"): SOCKS could not tell the connections apart")
			}
		}
		out = append(out, c)
	}
	return out, listen
}
