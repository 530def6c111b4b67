package rules

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Key values used in the tests (any string of 16+ characters is a valid key).
const (
	keyApps1   = "YXBwcy1wcmltYXJ5LWtleS0xMjM0NTY3ODkwYWJjZGVm"
	keyApps2   = "YXBwcy1zZWNvbmRhcnkta2V5LTEyMzQ1Njc4OTBhYmNk"
	keyOnprem  = "b25wcmVtLXByaW1hcnkta2V5LTEyMzQ1Njc4OTBhYmNk"
	keySixteen = "0123456789abcdef"
)

// clearEnv neutralises overrides the environment running the tests may set;
// viper treats an empty variable as unset.
func clearEnv(t *testing.T) {
	t.Helper()
	t.Setenv("HYBRID_LOG_LEVEL", "")
	t.Setenv("HYBRID_LOG_FORMAT", "")
}

// parseOK parses src as file and fails the test on any error.
func parseOK(t *testing.T, file, src string) *Config {
	t.Helper()
	cfg, err := Parse(file, []byte(src))
	if err != nil {
		t.Fatalf("Parse: unexpected errors:\n%v", err)
	}
	return cfg
}

// The DESIGN.md example, with real keys.
const designExample = `log:
  level: info            # trace|debug|info|warn|error — live-reloadable
  format: text           # text|json

relay:
  namespace: relay.example.com       # the host inside token resource URIs: sb://<namespace>/<hc>
                                     # (default: the host of listen.control)
  listen:
    control: 127.0.0.1:5671          # native control channel
    data: 127.0.0.1:9352             # native data channel (one TCP connection per stream)
    http: 127.0.0.1:8080             # WebSocket fallback, /healthz, /metrics, status page (443 with tls in production)
  tls: { cert: relay.crt, key: relay.key }   # required for non-loopback listen addresses unless insecure: true
  connections:
    - name: postgres
      keys:
        - { name: apps,  rights: [send],   primary: "` + keyApps1 + `", secondary: "` + keyApps2 + `" }
        - { name: onprem, rights: [listen], primary: "` + keyOnprem + `" }

agent:
  relays:                            # every relay of the fleet; the agent attaches to each
    - relay.example.com              # a host alone: ports 5671 (control), 9352 (data), 443 (https/WebSocket)
    - { host: 127.0.0.1, control: 5671, data: 9352, http: 8080, tls: false, namespace: relay.example.com }
                                     # tls: default true, except for loopback hosts
                                     # namespace: host part of the token URIs this client mints; default: host
  transport: auto                    # auto | tcp | websocket
  allow: [127.0.0.1:5432]            # administrator's cap on what may ever be published (optional)
  audit: audit.jsonl                 # one JSON line per open, close and denial
  connections:
    - name: postgres
      endpoint: 127.0.0.1:5432
      key_name: onprem
      key: "` + keyOnprem + `"

proxy:
  relay: 127.0.0.1                   # same forms as agent.relays: one entry or a list
  transport: auto
  socks: 127.0.0.1:1080              # SOCKS5; targets are matched to connections by endpoint
  connections:
    - name: postgres
      endpoint: 127.0.0.1:5432       # what the app's connection string names (used for SOCKS matching)
      listen: 127.0.0.2:5432         # local port forward: same port, own loopback address
      key_name: apps
      key: "` + keyApps1 + `"
`

func TestParseDesignExample(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "hybrid.yaml")
	got := parseOK(t, file, designExample)

	want := &Config{
		File: file,
		Log:  Log{Level: "info", Format: "text"},
		Relay: &Relay{
			Namespace:    "relay.example.com",
			Listen:       RelayListen{Control: "127.0.0.1:5671", Data: "127.0.0.1:9352", HTTP: "127.0.0.1:8080"},
			TLS:          &TLS{Cert: filepath.Join(dir, "relay.crt"), Key: filepath.Join(dir, "relay.key")},
			MaxListeners: DefaultMaxListeners, MaxHTTPBody: DefaultMaxHTTPBody,
			Connections: []RelayConnection{{
				Name: "postgres",
				Keys: []Key{
					{Name: "apps", Rights: []string{"send"}, Primary: keyApps1, Secondary: keyApps2},
					{Name: "onprem", Rights: []string{"listen"}, Primary: keyOnprem},
				},
			}},
			Limits:        defaultLimits,
			RotationGrace: DefaultRotationGrace,
			JoinTimeout:   DefaultJoinTimeout,
			PingInterval:  DefaultPingInterval,
			DrainGrace:    DefaultDrainGrace,
			ReusePort:     true,
		},
		Agent: &Agent{
			Relays: []RelayEndpoint{
				{Host: "relay.example.com", Control: 5671, Data: 9352, HTTP: 443, TLS: true, Namespace: "relay.example.com"},
				{Host: "127.0.0.1", Control: 5671, Data: 9352, HTTP: 8080, TLS: false, Namespace: "relay.example.com"},
			},
			Transport: "auto",
			Allow:     []string{"127.0.0.1:5432"},
			Audit:     filepath.Join(dir, "audit.jsonl"),
			Connections: []AgentConnection{
				{Name: "postgres", Endpoint: "127.0.0.1:5432", KeyName: "onprem", Key: keyOnprem},
			},
			MaxStreams: DefaultAgentMaxStreams,
			ID:         hostname(),
			Pool:       DefaultPool,
		},
		Proxy: &Proxy{
			Relays:      []RelayEndpoint{{Host: "127.0.0.1", Control: 5671, Data: 9352, HTTP: 443, TLS: false, Namespace: "127.0.0.1"}},
			Transport:   "auto",
			RelayPolicy: RelayPolicySpread,
			Pool:        DefaultPool,
			Socks:       "127.0.0.1:1080",
			Connections: []ProxyConnection{
				{Name: "postgres", Endpoint: "127.0.0.1:5432", Listen: "127.0.0.2:5432", KeyName: "apps", Key: keyApps1},
			},
		},
	}
	assertConfig(t, got, want)

	// Lines are kept for runtime messages.
	for field, line := range map[string]int{
		"relay.connections[0].keys[1].rights[0]": 17,
		"proxy.connections[0].listen":            41,
		"agent.relays[1]":                        22,
		"agent.relays[1].http":                   22,
		"relay.listen":                           8,
		"relay.keys":                             5, // absent: falls back to relay
		"nosuch":                                 0,
	} {
		if l := got.Line(field); l != line {
			t.Errorf("Line(%q) = %d, want %d", field, l, line)
		}
	}
}

// assertConfig compares configs, ignoring the line table.
func assertConfig(t *testing.T, got, want *Config) {
	t.Helper()
	g := *got
	g.lines = nil
	if !reflect.DeepEqual(&g, want) {
		t.Errorf("config mismatch\n got: %s\nwant: %s", dump(&g), dump(want))
	}
}

func dump(c *Config) string {
	s := fmt.Sprintf("%s %+v", c.File, c.Log)
	if c.Relay != nil {
		s += fmt.Sprintf("\n  relay %+v", *c.Relay)
		if c.Relay.TLS != nil {
			s += fmt.Sprintf(" tls %+v", *c.Relay.TLS)
		}
	}
	if c.Agent != nil {
		s += fmt.Sprintf("\n  agent %+v", *c.Agent)
	}
	if c.Proxy != nil {
		s += fmt.Sprintf("\n  proxy %+v", *c.Proxy)
	}
	return s
}

func TestDefaults(t *testing.T) {
	clearEnv(t)
	const src = `relay:
  keys: [{name: root, rights: [manage], primary: "` + keySixteen + `"}]
agent:
  relays: [relay.example.com]
proxy:
  relay: relay.example.com
`
	got := parseOK(t, "hybrid.yaml", src)
	want := &Config{
		File: "hybrid.yaml",
		Log:  Log{Level: "info", Format: "text"},
		Relay: &Relay{
			Namespace:     "127.0.0.1",
			Listen:        RelayListen{Control: "127.0.0.1:5671", Data: "127.0.0.1:9352", HTTP: "127.0.0.1:8080"},
			Keys:          []Key{{Name: "root", Rights: []string{"manage"}, Primary: keySixteen}},
			Limits:        defaultLimits,
			RotationGrace: DefaultRotationGrace,
			JoinTimeout:   DefaultJoinTimeout,
			PingInterval:  DefaultPingInterval,
			DrainGrace:    DefaultDrainGrace,
			ReusePort:     true,
			MaxListeners:  DefaultMaxListeners, MaxHTTPBody: DefaultMaxHTTPBody,
		},
		Agent: &Agent{
			Relays:     []RelayEndpoint{{Host: "relay.example.com", Control: 5671, Data: 9352, HTTP: 443, TLS: true, Namespace: "relay.example.com"}},
			Transport:  "auto",
			MaxStreams: DefaultAgentMaxStreams,
			ID:         hostname(),
			Pool:       DefaultPool,
		},
		Proxy: &Proxy{
			Relays:      []RelayEndpoint{{Host: "relay.example.com", Control: 5671, Data: 9352, HTTP: 443, TLS: true, Namespace: "relay.example.com"}},
			Transport:   "auto",
			RelayPolicy: RelayPolicySpread,
			Pool:        DefaultPool,
		},
	}
	assertConfig(t, got, want)
	if got.Agent.Allow != nil {
		t.Errorf("Allow = %#v, want nil (no cap)", got.Agent.Allow)
	}
}

func TestValidVariants(t *testing.T) {
	clearEnv(t)
	tests := []struct {
		name  string
		src   string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "insecure allows public listeners without tls",
			src: `relay:
  namespace: Relay.Example.COM.
  insecure: true
  listen: {control: "0.0.0.0:5671", data: "[::]:9352", http: ":0"}
  keys: [{name: root, rights: [manage], primary: "` + keySixteen + `"}]
`,
			check: func(t *testing.T, c *Config) {
				want := RelayListen{Control: "0.0.0.0:5671", Data: "[::]:9352", HTTP: ":0"}
				if c.Relay.Listen != want || c.Relay.Namespace != "relay.example.com" || !c.Relay.Insecure {
					t.Errorf("relay = %+v", c.Relay)
				}
			},
		},
		{
			name: "tls allows public listeners",
			src: `relay:
  namespace: relay.example.com
  listen: {control: "0.0.0.0:5671", data: "0.0.0.0:9352", http: "0.0.0.0:443"}
  tls: {cert: /etc/hybrid/relay.crt, key: /etc/hybrid/../hybrid/relay.key}
  keys: [{name: root, rights: [manage], primary: "` + keySixteen + `"}]
`,
			check: func(t *testing.T, c *Config) {
				if *c.Relay.TLS != (TLS{Cert: "/etc/hybrid/relay.crt", Key: "/etc/hybrid/relay.key"}) {
					t.Errorf("tls = %+v", c.Relay.TLS)
				}
			},
		},
		{
			name: "port zero listeners do not conflict",
			src: `relay:
  listen: {control: "127.0.0.1:0", data: "127.0.0.1:0", http: "127.0.0.1:0"}
  keys: [{name: root, rights: [manage], primary: "` + keySixteen + `"}]
`,
			check: func(t *testing.T, c *Config) {
				if c.Relay.Namespace != "127.0.0.1" {
					t.Errorf("namespace = %q", c.Relay.Namespace)
				}
			},
		},
		{
			name: "aliases",
			src: `relay:
  keys:
    - &root {name: root, rights: [manage], primary: &k "` + keySixteen + `"}
  connections:
    - {name: a, keys: [*root]}
agent:
  relays: [relay.example.com]
  connections:
    - {name: a, endpoint: "db:1", key_name: root, key: *k}
`,
			check: func(t *testing.T, c *Config) {
				if c.Relay.Connections[0].Keys[0].Primary != keySixteen || c.Agent.Connections[0].Key != keySixteen {
					t.Errorf("aliases not followed: %+v %+v", c.Relay, c.Agent)
				}
			},
		},
		{
			name: "canonical endpoints and names with slashes",
			src: `agent:
  relays: [relay.example.com]
  allow: ["DB.Example.com.:5432", "[::FFFF:10.0.0.1]:22"]
  admin: "[::1]:9000"
  proxy_url: http://user:pw@proxy.corp:3128
  connections:
    - {name: team/db.main_1, endpoint: "db.example.COM:5432", key_name: k, key: "` + keySixteen + `"}
    - {name: ssh, endpoint: "10.0.0.1:22", key_name: k, key: "` + keySixteen + `"}
`,
			check: func(t *testing.T, c *Config) {
				a := c.Agent
				if !reflect.DeepEqual(a.Allow, []string{"db.example.com:5432", "10.0.0.1:22"}) ||
					a.Connections[0].Endpoint != "db.example.com:5432" || a.Connections[0].Name != "team/db.main_1" ||
					a.Admin != "[::1]:9000" || a.ProxyURL != "http://user:pw@proxy.corp:3128" {
					t.Errorf("agent = %+v", a)
				}
			},
		},
		{
			name: "empty allow is a cap that allows nothing",
			src: `agent:
  relays: [relay.example.com]
  allow: []
`,
			check: func(t *testing.T, c *Config) {
				if c.Agent.Allow == nil || len(c.Agent.Allow) != 0 {
					t.Errorf("allow = %#v, want empty non-nil", c.Agent.Allow)
				}
			},
		},
		{
			name: "empty relay section is reported, not ignored; empty log section is fine",
			src: `log:
agent:
  relays: [relay.example.com]
  transport: websocket
`,
			check: func(t *testing.T, c *Config) {
				if c.Log != (Log{Level: "info", Format: "text"}) || c.Agent.Transport != "websocket" {
					t.Errorf("log = %+v, agent = %+v", c.Log, c.Agent)
				}
			},
		},
		{
			name: "proxy listen without endpoint and endpoint without listen",
			src: `proxy:
  relay: [relay.example.com]
  socks: 127.0.0.1:1080
  admin: 127.0.0.1:9001
  connections:
    - {name: a, listen: "127.0.0.2:5432", key_name: k, key: "` + keySixteen + `"}
    - {name: b, endpoint: "db:5432", key_name: k, key: "` + keySixteen + `"}
    - {name: c, listen: "localhost:0", key_name: k, key: "` + keySixteen + `"}
    - {name: d, listen: "127.0.0.1:0", key_name: k, key: "` + keySixteen + `"}
`,
			check: func(t *testing.T, c *Config) {
				p := c.Proxy
				if p.Connections[0].Endpoint != "" || p.Connections[1].Listen != "" || p.Connections[2].Listen != "localhost:0" {
					t.Errorf("proxy = %+v", p)
				}
			},
		},
		{
			name: "socks_auth as one mapping; hosts with defaults",
			src: `proxy:
  relay: relay.example.com
  socks: 127.0.0.1:1080
  socks_auth: {username: billing, password: "` + keySixteen + `"}
  hosts: {}
  connections:
    - {name: a, endpoint: "PG.Corp.Local.:5432", key_name: k, key: "` + keySixteen + `"}
    - {name: b, endpoint: "127.0.0.1:5432", listen: "0.0.0.0:5433", key_name: k, key: "` + keySixteen + `"}
    - {name: c, endpoint: "localhost:1433", listen: "0.0.0.0:1433", key_name: k, key: "` + keySixteen + `"}
`,
			check: func(t *testing.T, c *Config) {
				p := c.Proxy
				if !reflect.DeepEqual(p.SocksAuth, []SocksUser{{Username: "billing", Password: keySixteen}}) {
					t.Errorf("socks_auth = %+v", p.SocksAuth)
				}
				want := Hosts{File: "/etc/hosts", Range: netip.MustParsePrefix("127.77.0.0/16")}
				if p.Hosts == nil || *p.Hosts != want {
					t.Errorf("hosts = %+v, want %+v", p.Hosts, want)
				}
				if p.Connections[0].Endpoint != "pg.corp.local:5432" {
					t.Errorf("endpoint = %q", p.Connections[0].Endpoint)
				}
			},
		},
		{
			name: "socks_auth as a list; hosts file relative to the config",
			src: `proxy:
  relay: relay.example.com
  socks: 127.0.0.1:1080
  socks_auth:
    - {username: billing, password: "` + keySixteen + `"}
    - {username: reports.app-2, password: "` + keyApps1 + `"}
  hosts: {file: etc/hosts, range: 127.100.4.0/30}
`,
			check: func(t *testing.T, c *Config) {
				p := c.Proxy
				want := []SocksUser{{Username: "billing", Password: keySixteen}, {Username: "reports.app-2", Password: keyApps1}}
				if !reflect.DeepEqual(p.SocksAuth, want) {
					t.Errorf("socks_auth = %+v", p.SocksAuth)
				}
				abs, _ := filepath.Abs("etc/hosts")
				if p.Hosts.File != abs || p.Hosts.Range != netip.MustParsePrefix("127.100.4.0/30") {
					t.Errorf("hosts = %+v", p.Hosts)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, parseOK(t, "hybrid.yaml", tt.src))
		})
	}
}

func TestHostsRange(t *testing.T) {
	clearEnv(t)
	tests := []struct {
		in   string
		want string // error message after "proxy.hosts.range: "; "" when valid
	}{
		{"127.77.0.0/16", ""},
		{"127.128.0.0/9", ""},
		{"127.0.1.0/24", ""},
		{"127.1.2.4/30", ""},
		{"127.77.1.0/16", `invalid range "127.77.1.0/16": host bits set (did you mean 127.77.0.0/16?)`},
		{"127.0.0.0/8", `invalid range "127.0.0.0/8": contains 127.0.0.1, where this machine's own services listen (try 127.77.0.0/16)`},
		{"127.0.0.0/24", `invalid range "127.0.0.0/24": contains 127.0.0.1, where this machine's own services listen (try 127.77.0.0/16)`},
		{"127.1.2.4/31", `invalid range "127.1.2.4/31": too small (want /30 or larger)`},
		{"0.0.0.0/0", `invalid range "0.0.0.0/0": not inside 127.0.0.0/8 (hosts mode listens on loopback addresses)`},
		{"10.0.0.0/8", `invalid range "10.0.0.0/8": not inside 127.0.0.0/8 (hosts mode listens on loopback addresses)`},
		{"::1/128", `invalid range "::1/128": want an IPv4 prefix inside 127.0.0.0/8 (hosts mode listens on loopback addresses)`},
		{"127.77.0.0", `invalid range "127.77.0.0": want an IPv4 prefix such as 127.77.0.0/16`},
		{"127.77.0.0/16 ", `invalid range "127.77.0.0/16 ": want an IPv4 prefix such as 127.77.0.0/16`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			src := "proxy:\n  relay: r.example.com\n  hosts: {range: \"" + tt.in + "\"}\n"
			c, err := Parse("hybrid.yaml", []byte(src))
			if tt.want == "" {
				if err != nil || c.Proxy.Hosts.Range.String() != tt.in {
					t.Fatalf("got %v, %v; want %s", c, err, tt.in)
				}
				return
			}
			if want := "hybrid.yaml:3: proxy.hosts.range: " + tt.want; err == nil || err.Error() != want {
				t.Fatalf("got %v\nwant %s", err, want)
			}
		})
	}
}

func TestHostsMaps(t *testing.T) {
	var h *Hosts
	for ep, want := range map[string]bool{
		"pg.corp.local:5432": true, "intranet:80": true, "127.0.0.1:5432": false, "[::1]:5432": false,
		"localhost:5432": false, "db.localhost:5432": false, "localhost.corp:5432": true, "": false,
	} {
		name, port, ok := h.Maps(ep)
		if ok != want || ok && (name+":"+fmt.Sprint(port)) != ep {
			t.Errorf("Maps(%q) = %q, %d, %v; want %v", ep, name, port, ok, want)
		}
	}
}

func TestRelayEndpointForms(t *testing.T) {
	clearEnv(t)
	tests := []struct {
		name  string
		proxy string // the value of proxy.relay
		want  []RelayEndpoint
	}{
		{"single scalar", `relay.example.com`,
			[]RelayEndpoint{{Host: "relay.example.com", Control: 5671, Data: 9352, HTTP: 443, TLS: true, Namespace: "relay.example.com"}}},
		{"single mapping", `{host: relay.example.com, http: 8443, namespace: ns.example.com}`,
			[]RelayEndpoint{{Host: "relay.example.com", Control: 5671, Data: 9352, HTTP: 8443, TLS: true, Namespace: "ns.example.com"}}},
		{"list of both", `[a.example.com, {host: b.example.com, control: 1, data: 2, http: 3, tls: false}]`,
			[]RelayEndpoint{
				{Host: "a.example.com", Control: 5671, Data: 9352, HTTP: 443, TLS: true, Namespace: "a.example.com"},
				{Host: "b.example.com", Control: 1, Data: 2, HTTP: 3, TLS: false, Namespace: "b.example.com"},
			}},
		{"same host, other control port", `[a.example.com, {host: a.example.com, control: 15671}]`,
			[]RelayEndpoint{
				{Host: "a.example.com", Control: 5671, Data: 9352, HTTP: 443, TLS: true, Namespace: "a.example.com"},
				{Host: "a.example.com", Control: 15671, Data: 9352, HTTP: 443, TLS: true, Namespace: "a.example.com"},
			}},
		{"loopback v4 defaults to plain", `127.0.0.9`,
			[]RelayEndpoint{{Host: "127.0.0.9", Control: 5671, Data: 9352, HTTP: 443, TLS: false, Namespace: "127.0.0.9"}}},
		{"loopback v6 defaults to plain", `"::1"`,
			[]RelayEndpoint{{Host: "::1", Control: 5671, Data: 9352, HTTP: 443, TLS: false, Namespace: "::1"}}},
		{"bracketed v6", `"[::1]"`,
			[]RelayEndpoint{{Host: "::1", Control: 5671, Data: 9352, HTTP: 443, TLS: false, Namespace: "::1"}}},
		{"localhost defaults to plain", `LocalHost.`,
			[]RelayEndpoint{{Host: "localhost", Control: 5671, Data: 9352, HTTP: 443, TLS: false, Namespace: "localhost"}}},
		{"loopback with explicit tls", `{host: 127.0.0.1, tls: true}`,
			[]RelayEndpoint{{Host: "127.0.0.1", Control: 5671, Data: 9352, HTTP: 443, TLS: true, Namespace: "127.0.0.1"}}},
		{"private address defaults to tls", `10.1.2.3`,
			[]RelayEndpoint{{Host: "10.1.2.3", Control: 5671, Data: 9352, HTTP: 443, TLS: true, Namespace: "10.1.2.3"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := parseOK(t, "hybrid.yaml", "proxy:\n  relay: "+tt.proxy+"\n")
			if !reflect.DeepEqual(c.Proxy.Relays, tt.want) {
				t.Errorf("proxy relays = %+v\nwant %+v", c.Proxy.Relays, tt.want)
			}
			// agent.relays takes the same entries, but only as a list.
			src := "agent:\n  relays: " + tt.proxy + "\n"
			if !strings.HasPrefix(tt.proxy, "[") {
				src = "agent:\n  relays: [" + tt.proxy + "]\n"
			}
			c = parseOK(t, "hybrid.yaml", src)
			if !reflect.DeepEqual(c.Agent.Relays, tt.want) {
				t.Errorf("agent relays = %+v\nwant %+v", c.Agent.Relays, tt.want)
			}
		})
	}
}

func TestLogEnvOverride(t *testing.T) {
	tests := []struct {
		name          string
		src           string
		level, format string // environment
		want          Log
		wantErr       string
	}{
		{"no override", "log: {level: warn}\nproxy: {relay: r.example.com}\n", "", "", Log{"warn", "text"}, ""},
		{"level", "log: {level: warn}\nproxy: {relay: r.example.com}\n", "debug", "", Log{"debug", "text"}, ""},
		{"both without log section", "proxy: {relay: r.example.com}\n", "trace", "json", Log{"trace", "json"}, ""},
		{"bad level from env", "log: {level: info}\nproxy: {relay: r.example.com}\n", "warning", "", Log{}, `hybrid.yaml:1: log.level: unknown level "warning" from HYBRID_LOG_LEVEL (want trace, debug, info, warn or error)`},
		{"bad format from env, no log section", "proxy: {relay: r.example.com}\n", "", "JSON", Log{}, `hybrid.yaml: log.format: unknown format "JSON" from HYBRID_LOG_FORMAT (want text or json)`},
		{"env fixes nothing in a broken file", "log: {level: warning}\nproxy: {relay: r.example.com}\n", "", "", Log{}, `hybrid.yaml:1: log.level: unknown level "warning" (want trace, debug, info, warn or error)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("HYBRID_LOG_LEVEL", tt.level)
			t.Setenv("HYBRID_LOG_FORMAT", tt.format)
			c, err := Parse("hybrid.yaml", []byte(tt.src))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v\nwant %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Log != tt.want {
				t.Errorf("log = %+v, want %+v", c.Log, tt.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	t.Run("valid", func(t *testing.T) {
		file := filepath.Join(dir, "hybrid.yaml")
		if err := os.WriteFile(file, []byte(designExample), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(file)
		if err != nil {
			t.Fatal(err)
		}
		if c.File != file || c.Agent.Audit != filepath.Join(dir, "audit.jsonl") {
			t.Errorf("File = %q, Audit = %q", c.File, c.Agent.Audit)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		file := filepath.Join(dir, "nope.yaml")
		_, err := Load(file)
		var e Error
		if !errors.As(err, &e) || e.Line != 0 || e.File != file || !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("err = %#v", err)
		}
		if want := file + ": cannot read config: no such file or directory"; err.Error() != want {
			t.Errorf("err = %q, want %q", err, want)
		}
	})
	t.Run("problems are Errors", func(t *testing.T) {
		file := filepath.Join(dir, "bad.yaml")
		if err := os.WriteFile(file, []byte("proxy:\n  relay: r.example.com\n  trasnport: tcp\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(file)
		var es Errors
		if c != nil || !errors.As(err, &es) || len(es) != 1 || es[0].Line != 3 || es[0].Field != "proxy.trasnport" {
			t.Fatalf("c = %v, err = %#v", c, err)
		}
		var e Error
		if !errors.As(err, &e) || e.Line != 3 {
			t.Errorf("errors.As(Error) = %#v", e)
		}
	})
}

func TestKeyAllows(t *testing.T) {
	tests := []struct {
		rights               []string
		listen, send, manage bool
	}{
		{[]string{"listen"}, true, false, false},
		{[]string{"send"}, false, true, false},
		{[]string{"listen", "send"}, true, true, false},
		{[]string{"manage"}, true, true, true},
		{nil, false, false, false},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.rights, "+"), func(t *testing.T) {
			k := Key{Rights: tt.rights}
			if k.Allows(RightListen) != tt.listen || k.Allows(RightSend) != tt.send || k.Allows(RightManage) != tt.manage {
				t.Errorf("Allows: listen %v send %v manage %v", k.Allows(RightListen), k.Allows(RightSend), k.Allows(RightManage))
			}
		})
	}
}

func TestErrorFormat(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "h.yaml", Line: 12, Field: "a.b[0]", Msg: "bad"}, "h.yaml:12: a.b[0]: bad"},
		{Error{File: "h.yaml", Line: 3, Msg: "invalid YAML: x"}, "h.yaml:3: invalid YAML: x"},
		{Error{File: "h.yaml", Field: "log.level", Msg: "bad"}, "h.yaml: log.level: bad"},
		{Error{File: "h.yaml", Msg: "empty"}, "h.yaml: empty"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.e.Error(); got != tt.want {
				t.Errorf("got %q", got)
			}
		})
	}
	es := Errors{tests[0].e, tests[1].e}
	if got, want := es.Error(), "h.yaml:12: a.b[0]: bad\nh.yaml:3: invalid YAML: x"; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
}

// TestAllowIsACapNotAnError: an endpoint outside agent.allow is valid (so
// narrowing allow on a reload takes effect) and reported as a warning with
// its line.
func TestAllowIsACapNotAnError(t *testing.T) {
	src := `agent:
  relays: [r.example.com]
  allow: ["db.example.com:5432"]
  connections:
    - {name: a, endpoint: db.example.com:5432, key_name: k, key: 0123456789abcdef}
    - name: b
      endpoint: 10.0.0.2:22
      key_name: k
      key: 0123456789abcdef
`
	c, err := Parse("hybrid.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := `hybrid.yaml:7: agent.connections[1].endpoint: "10.0.0.2:22" is not in agent.allow: the agent will not serve it`
	if len(c.Warnings) != 1 || c.Warnings[0].Error() != want {
		t.Fatalf("warnings %v, want %q", c.Warnings, want)
	}
}

// TestParseSections: a process reads only the sections it runs, so a
// problem in another section (here an unset secret in the agent section) is
// not its business; the whole file is still judged by Parse (hybrid check).
func TestParseSections(t *testing.T) {
	t.Setenv("HYBRID_TEST_SEND_KEY", "0123456789abcdef0123")
	src := `relay:
  namespace: ns
  connections:
    - name: pg
      keys: [{name: apps, rights: [send], primary: "${HYBRID_TEST_SEND_KEY}"}]
agent:
  relays: [127.0.0.1]
  connections:
    - {name: pg, endpoint: "127.0.0.1:5432", key_name: onprem, key: "${HYBRID_TEST_UNSET_KEY}"}
`
	if _, err := Parse("hybrid.yaml", []byte(src)); err == nil || !strings.Contains(err.Error(), "hybrid.yaml:9: agent.connections[0].key") {
		t.Fatalf("Parse: %v, want the agent's unset key reported", err)
	}
	c, err := ParseSections("hybrid.yaml", []byte(src), "relay")
	if err != nil {
		t.Fatalf("relay only: %v", err)
	}
	if c.Relay == nil || c.Agent != nil || c.Proxy != nil {
		t.Fatalf("relay only: sections %v %v %v", c.Relay != nil, c.Agent != nil, c.Proxy != nil)
	}
	if _, err := ParseSections("hybrid.yaml", []byte(src), "agent"); err == nil || !strings.Contains(err.Error(), ":9: agent.connections[0].key") {
		t.Fatalf("agent only: %v, want its unset key reported", err)
	}
	if _, err := ParseSections("hybrid.yaml", []byte("relay: [\n"), "relay"); err == nil {
		t.Fatal("a syntax error was ignored")
	}
}

var defaultLimits = RelayLimits{Connections: DefaultLimitConnections, PerSource: DefaultLimitPerSource,
	Pending: DefaultLimitPending, PendingPerKey: DefaultLimitPendingPerKey}

// TestSecurityWarnings: valid but risky settings are warnings `hybrid check`
// prints (not errors): an open SOCKS port, plaintext towards a remote relay,
// an admin listener off loopback.
func TestSecurityWarnings(t *testing.T) {
	k := "0123456789abcdef0123"
	tests := []struct{ name, src, want string }{
		{"socks off loopback without auth",
			"proxy:\n  relay: 127.0.0.1\n  socks: 0.0.0.0:1080\n  connections: [{name: pg, endpoint: \"db:5432\", key_name: k, key: " + k + "}]\n",
			"hybrid.yaml:3: proxy.socks: \"0.0.0.0:1080\" is not a loopback address and socks_auth is not set"},
		{"plaintext towards a remote relay",
			"agent:\n  relays:\n    - {host: relay.example.com, tls: false}\n  connections: []\n",
			"hybrid.yaml:3: agent.relays[0].tls: false towards \"relay.example.com\", which is not a loopback host"},
		{"relay admin listener off loopback",
			"relay:\n  admin: 0.0.0.0:9100\n  keys: [{name: k, rights: [manage], primary: " + k + "}]\n",
			"hybrid.yaml:2: relay.admin: \"0.0.0.0:9100\" is not a loopback address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("hybrid.yaml", []byte(tt.src))
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Warnings) != 1 || !strings.HasPrefix(c.Warnings[0].Error(), tt.want) {
				t.Fatalf("warnings %v, want one starting %q", c.Warnings, tt.want)
			}
		})
	}
	// The safe forms warn about nothing.
	for _, src := range []string{
		"proxy:\n  relay: 127.0.0.1\n  socks: 127.0.0.1:1080\n  connections: [{name: pg, endpoint: \"db:5432\", key_name: k, key: " + k + "}]\n",
		"proxy:\n  relay: 127.0.0.1\n  socks: 0.0.0.0:1080\n  socks_auth: {username: u, password: " + k + "}\n  connections: [{name: pg, endpoint: \"db:5432\", key_name: k, key: " + k + "}]\n",
		"agent:\n  relays: [{host: 127.0.0.1, tls: false}, relay.example.com]\n  connections: []\n",
	} {
		c, err := Parse("hybrid.yaml", []byte(src))
		if err != nil || len(c.Warnings) != 0 {
			t.Fatalf("%s: err %v warnings %v", src, err, c.Warnings)
		}
	}
}

// TestFleetSection: relay.fleet is checked whole: a directory URL, a
// listen address, a credential, an address others reach it at.
func TestFleetSection(t *testing.T) {
	base := "relay:\n  keys: [{name: k, rights: [manage], primary: \"0123456789abcdef0123\"}]\n  fleet:\n"
	ok := base + "    redis: \"redis://127.0.0.1:6379/0\"\n    id: relay-a\n    listen: 127.0.0.1:9353\n    secret: \"fleet-secret-0123456789\"\n"
	c, err := Parse("hybrid.yaml", []byte(ok))
	if err != nil {
		t.Fatal(err)
	}
	if f := c.Relay.Fleet; f == nil || f.ID != "relay-a" || f.Advertise != "127.0.0.1:9353" || f.Secret == "" {
		t.Fatalf("fleet %+v", c.Relay.Fleet)
	}
	t.Setenv("HYBRID_TEST_ADVERTISE", "10.1.2.3:9353")
	for _, tt := range []struct{ body, want string }{
		{"    listen: 127.0.0.1:9353\n    secret: \"fleet-secret-0123456789\"\n", "relay.fleet.redis: required"},
		{"    redis: \"http://x\"\n    listen: 127.0.0.1:9353\n    secret: \"fleet-secret-0123456789\"\n", "want redis://"},
		{"    redis: \"redis://x:1\"\n    listen: 127.0.0.1:9353\n", "never open unauthenticated"},
		{"    redis: \"redis://x:1\"\n    listen: 0.0.0.0:9353\n    secret: \"fleet-secret-0123456789\"\n", "relay.fleet.advertise: required"},
		{"    redis: \"redis://x:1\"\n    secret: \"fleet-secret-0123456789\"\n", "relay.fleet.listen: required"},
		{"    redis: \"redis://x:1\"\n    listen: 127.0.0.1:9353\n    advertise: \"${HYBRID_TEST_UNSET_ADV}\"\n    secret: \"fleet-secret-0123456789\"\n", "HYBRID_TEST_UNSET_ADV is not set"},
	} {
		_, err := Parse("hybrid.yaml", []byte(base+tt.body))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: err %v, want %q", tt.body, err, tt.want)
		}
	}
	c, err = Parse("hybrid.yaml", []byte(strings.Replace(base, "relay:\n", "relay:\n  insecure: true\n", 1)+"    redis: \"redis-sentinel://a:26379,b:26379/master\"\n    listen: 0.0.0.0:9353\n    advertise: \"${HYBRID_TEST_ADVERTISE}\"\n    secret: \"fleet-secret-0123456789\"\n"))
	if err != nil || c.Relay.Fleet.Advertise != "10.1.2.3:9353" {
		t.Fatalf("advertise from the environment: %v %+v", err, c)
	}
}

// TestRelayDurations: the relay's durations take units, days, and a bare 0
// where zero is allowed; a bare number other than 0 is refused.
func TestRelayDurations(t *testing.T) {
	clearEnv(t)
	tests := []struct {
		field, value string
		want         time.Duration
		wantErr      string
	}{
		{"rotation_grace", "0", 0, ""},
		{"rotation_grace", "0s", 0, ""},
		{"rotation_grace", "7d", 7 * 24 * time.Hour, ""},
		{"drain_grace", "0", 0, ""},
		{"drain_grace", "90s", 90 * time.Second, ""},
		{"rotation_grace", "5", 0, "want a string"},
		{"join_timeout", "0", 0, "want a string"}, // below its minimum: zero is no timeout
	}
	for _, tt := range tests {
		t.Run(tt.field+"="+tt.value, func(t *testing.T) {
			src := "relay:\n  keys: [{name: root, rights: [manage], primary: \"" + keySixteen + "\"}]\n  " +
				tt.field + ": " + tt.value + "\n"
			cfg, err := Parse("hybrid.yaml", []byte(src))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]time.Duration{"rotation_grace": cfg.Relay.RotationGrace, "drain_grace": cfg.Relay.DrainGrace}[tt.field]
			if got != tt.want {
				t.Fatalf("%s = %v, want %v", tt.field, got, tt.want)
			}
		})
	}
}
