package rules

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// K is a valid key, for sources that need one.
const K = `"` + keySixteen + `"`

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		env  map[string]string // "" value: set but empty; absent from environment: see unset
		want []string          // exact Error() lines, in order
	}{
		{
			name: "empty file",
			src:  "",
			want: []string{"hybrid.yaml: no relay, agent or proxy section (the file is empty)"},
		},
		{
			name: "comments only",
			src:  "# nothing here\n\n",
			want: []string{"hybrid.yaml: no relay, agent or proxy section (the file is empty)"},
		},
		{
			name: "log section only",
			src:  "log: {level: info}\n",
			want: []string{"hybrid.yaml: no relay, agent or proxy section"},
		},
		{
			name: "root is a list",
			src:  "- relay\n",
			want: []string{"hybrid.yaml:1: want a mapping of log, relay, agent and proxy sections, got a list"},
		},
		{
			name: "syntax error",
			src:  "relay:\n  x: 1\n  y: : 2\n",
			want: []string{`hybrid.yaml:3:6: invalid YAML: mapping values are not allowed in this context: a second ": " on this line (quote the value if it contains ": ")`},
		},
		{
			name: "multiple documents",
			src:  "relay: {}\n---\nagent: {}\n",
			want: []string{"hybrid.yaml:2: more than one YAML document (only one config per file)"},
		},
		{
			name: "unknown top-level key",
			src:  "agnet:\n  relays: [r]\n",
			want: []string{
				"hybrid.yaml: no relay, agent or proxy section",
				`hybrid.yaml:1: agnet: unknown field "agnet" (did you mean "agent"?)`,
			},
		},
		{
			name: "unknown nested key",
			src: `proxy:
  relay: r.example.com
  conections: []
  colour: blue
`,
			want: []string{
				`hybrid.yaml:3: proxy.conections: unknown field "conections" (did you mean "connections"?)`,
				`hybrid.yaml:4: proxy.colour: unknown field "colour" (want admin, connections, hosts, pool, proxy_url, relay, relay_policy, socks, socks_auth or transport)`,
			},
		},
		{
			name: "agent relay instead of relays",
			src: `agent:
  relay: r.example.com
`,
			want: []string{
				"hybrid.yaml:1: agent.relays: required",
				`hybrid.yaml:2: agent.relay: unknown field "relay" (did you mean "relays"?)`,
			},
		},
		{
			name: "list where a mapping belongs",
			src: `relay:
  listen:
    - 127.0.0.1:1
  keys: [{name: k, rights: [manage], primary: ` + K + `}]
`,
			want: []string{"hybrid.yaml:2: relay.listen: want a mapping, got a list"},
		},
		{
			name: "wrong scalar types",
			src: `agent:
  relays:
    - {host: r.example.com, control: abc}
    - host: r2.example.com
      data: "9352"
      http: 0
      tls: 1
    - {host: r3.example.com, control: 65536, tls: "true", namespace: 7}
`,
			want: []string{
				"hybrid.yaml:3: agent.relays[0].control: want an integer, got a string",
				"hybrid.yaml:5: agent.relays[1].data: want an integer, got a string (remove the quotes)",
				"hybrid.yaml:6: agent.relays[1].http: port 0 out of range (want 1-65535)",
				"hybrid.yaml:7: agent.relays[1].tls: want true or false, got an integer",
				"hybrid.yaml:8: agent.relays[2].control: port 65536 out of range (want 1-65535)",
				"hybrid.yaml:8: agent.relays[2].tls: want true or false, got a string (remove the quotes)",
				"hybrid.yaml:8: agent.relays[2].namespace: want a string, got an integer (quote it)",
			},
		},
		{
			name: "number for a name",
			src: `agent:
  relays: [r.example.com]
  connections:
    - name: 5432
      endpoint: db:5432
      key_name: k
      key: ` + K + `
`,
			want: []string{"hybrid.yaml:4: agent.connections[0].name: want a string, got an integer (quote it)"},
		},
		{
			name: "null values",
			src: `agent:
  relays:
  allow:
`,
			want: []string{
				"hybrid.yaml:2: agent.relays: want a list of relays (a host, or a mapping {host, control, data, http, tls, namespace}), got nothing",
				"hybrid.yaml:3: agent.allow: want a list, got nothing (write [] for an empty list)",
			},
		},
		{
			name: "scalar where a list belongs",
			src: `agent:
  relays: r.example.com
relay:
  keys: [{name: k, rights: send, primary: ` + K + `}]
`,
			want: []string{
				"hybrid.yaml:2: agent.relays: want a list of relays (a host, or a mapping {host, control, data, http, tls, namespace}), got a string",
				"hybrid.yaml:4: relay.keys[0].rights: want a list, got a string",
			},
		},
		{
			name: "missing required fields",
			src: `agent:
  connections:
    - endpoint: db:5432
proxy:
  connections:
    - {name: pg}
relay:
  tls: {cert: a.crt}
  keys: [{rights: [send]}, {name: x}]
`,
			want: []string{
				"hybrid.yaml:1: agent.relays: required",
				"hybrid.yaml:3: agent.connections[0].name: required",
				"hybrid.yaml:3: agent.connections[0].key_name: required",
				"hybrid.yaml:3: agent.connections[0].key: required (or key_file)",
				"hybrid.yaml:4: proxy.relay: required",
				"hybrid.yaml:6: proxy.connections[0].key_name: required",
				"hybrid.yaml:6: proxy.connections[0]: needs listen (a local port forward), endpoint (for SOCKS), or both",
				"hybrid.yaml:6: proxy.connections[0].key: required (or key_file)",
				"hybrid.yaml:8: relay.tls.key: required",
				"hybrid.yaml:9: relay.keys[0].name: required",
				"hybrid.yaml:9: relay.keys[0].primary: required (or primary_file)",
				"hybrid.yaml:9: relay.keys[1].rights: required",
				"hybrid.yaml:9: relay.keys[1].primary: required (or primary_file)",
			},
		},
		{
			name: "invalid values",
			src: `log:
  level: warning
  format: xml
agent:
  relays: [r.example.com, "r.example.com:5671", "bad_host!", ""]
  transport: udp
  admin: localhost
  proxy_url: socks5://p:1080
  audit: ""
  connections:
    - {name: "a//b", endpoint: "db", key_name: "k k", key: ` + K + `}
    - {name: ../x, endpoint: "127.1:80", key_name: k, key: short}
    - {name: "` + strings.Repeat("x", 129) + `", endpoint: "db:0", key_name: k, key: ` + K + `}
`,
			want: []string{
				`hybrid.yaml:2: log.level: unknown level "warning" (want trace, debug, info, warn or error)`,
				`hybrid.yaml:3: log.format: unknown format "xml" (want text or json)`,
				`hybrid.yaml:5: agent.relays[1]: invalid host "r.example.com:5671": want a host name or IP address, without a port`,
				`hybrid.yaml:5: agent.relays[2]: invalid host "bad_host!": bad character '!' in host name`,
				`hybrid.yaml:5: agent.relays[3]: must not be empty`,
				`hybrid.yaml:6: agent.transport: unknown transport "udp" (want auto, tcp or websocket)`,
				`hybrid.yaml:7: agent.admin: invalid listen address "localhost": want host:port`,
				`hybrid.yaml:8: agent.proxy_url: invalid proxy URL: want http://host:port or https://host:port`,
				`hybrid.yaml:9: agent.audit: must not be empty (leave audit out for none)`,
				`hybrid.yaml:11: agent.connections[0].name: invalid name "a//b": empty segment`,
				`hybrid.yaml:11: agent.connections[0].endpoint: invalid endpoint "db": missing port`,
				`hybrid.yaml:11: agent.connections[0].key_name: invalid key name "k k": want A-Z a-z 0-9 . _ -`,
				`hybrid.yaml:12: agent.connections[1].name: invalid name "../x": "." and ".." segments are not allowed`,
				`hybrid.yaml:12: agent.connections[1].endpoint: invalid endpoint "127.1:80": not a canonical IPv4 address nor a host name`,
				`hybrid.yaml:12: agent.connections[1].key: key too short: 5 characters, want at least 16 (hybrid keys new makes one)`,
				`hybrid.yaml:13: agent.connections[2].name: invalid name "` + strings.Repeat("x", 32) + `"… (129 bytes): longer than 128 characters`,
				`hybrid.yaml:13: agent.connections[2].endpoint: invalid endpoint "db:0": port must be 1-65535 without leading zeros`,
			},
		},
		{
			name: "unknown right",
			src: `relay:
  connections:
    - name: postgres
      keys:
        - {name: apps, rights: [send], primary: ` + K + `}
        - {name: onprem, rights: [sned], primary: ` + K + `}
        - {name: other, rights: [], primary: ` + K + `}
`,
			want: []string{
				`hybrid.yaml:6: relay.connections[0].keys[1].rights[0]: unknown right "sned" (want listen, send or manage)`,
				`hybrid.yaml:7: relay.connections[0].keys[2].rights: want at least one of listen, send or manage`,
			},
		},
		{
			name: "duplicates",
			src: `relay:
  keys:
    - {name: ns, rights: [manage], primary: ` + K + `}
    - {name: ns, rights: [send, send], primary: ` + K + `}
  connections:
    - {name: pg}
    - name: PG
      name: x
`,
			want: []string{
				`hybrid.yaml:4: relay.keys[1].rights[1]: duplicate right "send" (first at line 4)`,
				`hybrid.yaml:4: relay.keys[1].name: duplicate key name "ns" (first at line 3)`,
				`hybrid.yaml:7: relay.connections[1].name: duplicate name "PG" (first at line 6; names are compared ignoring case)`,
				`hybrid.yaml:8: relay.connections[1].name: duplicate key (first at line 7)`,
			},
		},
		{
			name: "relay listen conflicts and tls",
			src: `relay:
  listen:
    control: 0.0.0.0:5671
    data: "[::]:5671"
    http: 10.0.0.1:http
  namespace: relay.example.com
  keys: [{name: k, rights: [manage], primary: ` + K + `}]
`,
			want: []string{
				`hybrid.yaml:3: relay.tls: required because relay.listen.control "0.0.0.0:5671" is not a loopback address: add tls: {cert: FILE, key: FILE}, or set insecure: true to serve plain TCP anyway`,
				`hybrid.yaml:4: relay.listen.data: "[::]:5671" conflicts with relay.listen.control "0.0.0.0:5671"`,
				`hybrid.yaml:5: relay.listen.http: invalid listen address "10.0.0.1:http": port must be a number 0-65535`,
			},
		},
		{
			name: "relay listen conflicts with a default",
			src: `relay:
  listen:
    http: 127.0.0.1:9352
  keys: [{name: k, rights: [manage], primary: ` + K + `}]
`,
			want: []string{
				`hybrid.yaml:2: relay.listen.data: "127.0.0.1:9352" conflicts with relay.listen.http "127.0.0.1:9352"`,
			},
		},
		{
			name: "relay namespace needed for a wildcard listener",
			src: `relay:
  listen: {control: ":5671", data: "nohost:1"}
  insecure: true
  keys: [{name: k, rights: [manage], primary: ` + K + `}]
`,
			want: []string{
				`hybrid.yaml:2: relay.listen.data: invalid listen address "nohost:1": host must be an IP address, localhost or empty (all interfaces)`,
				`hybrid.yaml:2: relay.namespace: required when listen.control ":5671" names no host: give the name clients use to reach this relay`,
			},
		},
		{
			name: "relay without rules",
			src: `log: {level: debug}
relay:
`,
			want: []string{"hybrid.yaml:2: relay: no connections and no namespace keys: add connections, or keys covering every connection"},
		},
		{
			name: "relay connection without keys",
			src: `relay:
  connections:
    - name: pg
      keys: []
    - name: ok
      keys: [{name: k, rights: [listen], primary: ` + K + `, secondary: ` + K + `}]
`,
			want: []string{"hybrid.yaml:3: relay.connections[0].keys: no keys here and none in relay.keys: nobody could use this connection"},
		},
		{
			name: "agent allow",
			src: `agent:
  relays: [r.example.com]
  allow: ["DB.example.com.:5432", "10.0.0.1:22", "db.example.com:5432", "x"]
  connections:
    - {name: a, endpoint: db.example.com:5432, key_name: k, key: ` + K + `}
    - name: b
      endpoint: 10.0.0.2:22
      key_name: k
      key: ` + K + `
`,
			want: []string{
				`hybrid.yaml:3: agent.allow[2]: duplicate endpoint "db.example.com:5432" (first at line 3)`,
				`hybrid.yaml:3: agent.allow[3]: invalid endpoint "x": missing port`,
			},
		},
		{
			name: "proxy duplicates and conflicts",
			src: `proxy:
  relay: [r1.example.com, {host: R1.example.com.}, {}]
  socks: 127.0.0.1:1080
  connections:
    - {name: a, endpoint: db:5432, listen: "127.0.0.2:5432", key_name: k, key: ` + K + `}
    - {name: b, endpoint: "DB:5432", listen: "localhost:1080", key_name: k, key: ` + K + `}
    - {name: c, key_name: k, key: ` + K + `}
    - {name: d, listen: "0.0.0.0:5432", key_name: k, key: ` + K + `}
`,
			want: []string{
				`hybrid.yaml:2: proxy.relay[1]: duplicate relay "r1.example.com" control port 5671 (same as proxy.relay[0])`,
				`hybrid.yaml:2: proxy.relay[2].host: required`,
				`hybrid.yaml:6: proxy.connections[1].endpoint: duplicate endpoint "db:5432" (first at line 5): SOCKS could not tell the connections apart`,
				`hybrid.yaml:6: proxy.connections[1].listen: "localhost:1080" conflicts with proxy.socks "127.0.0.1:1080"`,
				`hybrid.yaml:7: proxy.connections[2]: needs listen (a local port forward), endpoint (for SOCKS), or both`,
				`hybrid.yaml:8: proxy.connections[3].listen: "0.0.0.0:5432" conflicts with proxy.connections[0].listen "127.0.0.2:5432"`,
			},
		},
		{
			name: "proxy socks_auth",
			src: `proxy:
  relay: r.example.com
  socks: 127.0.0.1:1080
  socks_auth:
    - {username: billing, password: ` + K + `}
    - {username: billing, password: ` + K + `}
    - {username: "has space", password: short}
    - {password: ` + K + `, password_file: p.txt}
    - {username: ok, password: "${HYBRID_TEST_UNSET}"}
    - username: long
      password: "` + strings.Repeat("x", 256) + `"
`,
			want: []string{
				`hybrid.yaml:6: proxy.socks_auth[1].username: duplicate username "billing" (first at line 5)`,
				`hybrid.yaml:7: proxy.socks_auth[2].username: invalid username "has space": want A-Z a-z 0-9 . _ -`,
				`hybrid.yaml:7: proxy.socks_auth[2].password: key too short: 5 characters, want at least 16 (hybrid keys new makes one)`,
				`hybrid.yaml:8: proxy.socks_auth[3].username: required`,
				`hybrid.yaml:8: proxy.socks_auth[3].password_file: give either password or password_file, not both`,
				`hybrid.yaml:9: proxy.socks_auth[4].password: environment variable HYBRID_TEST_UNSET is not set`,
				`hybrid.yaml:11: proxy.socks_auth[5].password: password too long: 256 bytes, SOCKS5 carries at most 255`,
			},
		},
		{
			name: "proxy socks_auth without socks",
			src: `proxy:
  relay: r.example.com
  socks_auth: {username: a, password: ` + K + `}
`,
			want: []string{`hybrid.yaml:3: proxy.socks_auth: has no effect without socks: add socks (the SOCKS5 listen address) or remove socks_auth`},
		},
		{
			name: "proxy socks_auth empty list",
			src: `proxy:
  relay: r.example.com
  socks: 127.0.0.1:1080
  socks_auth: []
`,
			want: []string{`hybrid.yaml:4: proxy.socks_auth: want at least one user (leave socks_auth out for no authentication)`},
		},
		{
			name: "proxy socks_auth scalar",
			src: `proxy:
  relay: r.example.com
  socks: 127.0.0.1:1080
  socks_auth: billing
`,
			want: []string{`hybrid.yaml:4: proxy.socks_auth: want a mapping {username, password} or a list of them, got a string`},
		},
		{
			name: "proxy hosts bad values",
			src: `proxy:
  relay: r.example.com
  hosts:
    file: ""
    range: 10.0.0.0/16
    colour: blue
`,
			want: []string{
				`hybrid.yaml:4: proxy.hosts.file: must not be empty (leave file out for /etc/hosts)`,
				`hybrid.yaml:5: proxy.hosts.range: invalid range "10.0.0.0/16": not inside 127.0.0.0/8 (hosts mode listens on loopback addresses)`,
				`hybrid.yaml:6: proxy.hosts.colour: unknown field "colour" (want file or range)`,
			},
		},
		{
			name: "proxy hosts range too small for the names",
			src: `proxy:
  relay: r.example.com
  hosts: {range: 127.1.2.4/30}
  connections:
    - {name: a, endpoint: a.corp.local:1, key_name: k, key: ` + K + `}
    - {name: b, endpoint: b.corp.local:1, key_name: k, key: ` + K + `}
    - {name: b2, endpoint: b.corp.local:2, key_name: k, key: ` + K + `}
    - {name: c, endpoint: c.corp.local:1, key_name: k, key: ` + K + `}
    - {name: ip, endpoint: 10.0.0.1:1, key_name: k, key: ` + K + `}
`,
			want: []string{`hybrid.yaml:3: proxy.hosts.range: 127.1.2.4/30 has 2 usable addresses, fewer than the 3 host names hosts mode maps`},
		},
		{
			name: "proxy hosts null",
			src: `proxy:
  relay: r.example.com
  hosts:
`,
			want: []string{`hybrid.yaml:3: proxy.hosts: want a mapping, got nothing`},
		},
		{
			name: "proxy hosts listeners that would collide",
			src: `proxy:
  relay: r.example.com
  socks: 127.77.0.1:1080
  hosts: {range: 127.77.0.0/16}
  connections:
    - {name: a, endpoint: pg.corp.local:5432, key_name: k, key: ` + K + `}
    - {name: b, endpoint: 10.0.0.1:5433, listen: "0.0.0.0:5433", key_name: k, key: ` + K + `}
    - {name: c, endpoint: db.corp.local:1433, listen: "0.0.0.0:5432", key_name: k, key: ` + K + `}
    - {name: d, listen: "127.77.255.255:80", key_name: k, key: ` + K + `}
    - {name: e, endpoint: localhost:6543, listen: "0.0.0.0:6543", key_name: k, key: ` + K + `}
`,
			want: []string{
				`hybrid.yaml:3: proxy.socks: "127.77.0.1:1080" is inside proxy.hosts.range 127.77.0.0/16, whose addresses hosts mode hands out`,
				`hybrid.yaml:8: proxy.connections[2].listen: "0.0.0.0:5432" takes port 5432 on every address, which hosts mode needs for pg.corp.local:5432`,
				`hybrid.yaml:9: proxy.connections[3].listen: "127.77.255.255:80" is inside proxy.hosts.range 127.77.0.0/16, whose addresses hosts mode hands out`,
			},
		},
		{
			name: "proxy relay empty list",
			src:  "proxy:\n  relay: []\n",
			want: []string{"hybrid.yaml:2: proxy.relay: want at least one relay"},
		},
		{
			name: "secrets",
			src: `agent:
  relays: [r.example.com]
  connections:
    - {name: a, endpoint: db:1, key_name: k, key: "${HYBRID_TEST_UNSET}"}
    - {name: b, endpoint: db:2, key_name: k, key: "${HYBRID_TEST_EMPTY}"}
    - {name: c, endpoint: db:3, key_name: k, key: "pre${HYBRID_TEST_EMPTY}"}
    - {name: d, endpoint: db:4, key_name: k, key: ` + K + `, key_file: k.txt}
    - {name: e, endpoint: db:5, key_name: k, key_file: /nonexistent/hybrid-test-key}
    - {name: f, endpoint: db:6, key_name: k, key: "${HYBRID_TEST_SHORT}"}
    - {name: g, endpoint: db:7, key_name: k, key_file: ""}
    - {name: h, endpoint: db:8, key_name: k, key_file: /}
relay:
  keys:
    - {name: k, rights: [manage], primary: ` + K + `, primary_file: k.txt, secondary: "${HYBRID_TEST_UNSET}"}
`,
			env: map[string]string{"HYBRID_TEST_EMPTY": "", "HYBRID_TEST_SHORT": "short"},
			want: []string{
				`hybrid.yaml:4: agent.connections[0].key: environment variable HYBRID_TEST_UNSET is not set`,
				`hybrid.yaml:5: agent.connections[1].key: environment variable HYBRID_TEST_EMPTY is empty`,
				`hybrid.yaml:6: agent.connections[2].key: "${" is only allowed as the whole value, as in "${NAME}"`,
				`hybrid.yaml:7: agent.connections[3].key_file: give either key or key_file, not both`,
				`hybrid.yaml:8: agent.connections[4].key_file: cannot read key file: open /nonexistent/hybrid-test-key: no such file or directory`,
				`hybrid.yaml:9: agent.connections[5].key: key too short (from HYBRID_TEST_SHORT): 5 characters, want at least 16 (hybrid keys new makes one)`,
				`hybrid.yaml:10: agent.connections[6].key_file: must not be empty`,
				`hybrid.yaml:11: agent.connections[7].key_file: key file / is not a regular file`,
				`hybrid.yaml:14: relay.keys[0].primary_file: give either primary or primary_file, not both`,
				`hybrid.yaml:14: relay.keys[0].secondary: environment variable HYBRID_TEST_UNSET is not set`,
			},
		},
		{
			name: "merge keys and complex keys",
			src: `relay:
  keys:
    - &k {name: a, rights: [send], primary: ` + K + `}
    - <<: *k
      name: b
    - {[x]: 1, name: c, rights: [send], primary: ` + K + `}
`,
			want: []string{
				`hybrid.yaml:4: relay.keys[1]: merge keys (<<) are not supported`,
				`hybrid.yaml:6: relay.keys[2]: keys must be plain names, not a list`,
			},
		},
		{
			name: "several problems at once, sorted by line",
			src: `proxy:
  connections:
    - {name: a, listen: "127.0.0.1:99999", key_name: k, key: ` + K + `}
  socks: 127.0.0.1
  relay: {host: r.example.com, prot: 1}
log:
  level: Info
agent:
  relays: [r.example.com]
  allow: [db:1]
  connections:
    - {name: a, endpoint: "db:2", key_name: k, key: ` + K + `}
    - {name: A, endpoint: "db:1", key_name: k}
`,
			want: []string{
				`hybrid.yaml:3: proxy.connections[0].listen: invalid listen address "127.0.0.1:99999": port must be a number 0-65535`,
				`hybrid.yaml:4: proxy.socks: invalid listen address "127.0.0.1": want host:port`,
				`hybrid.yaml:5: proxy.relay.prot: unknown field "prot" (want control, data, host, http, namespace, rendezvous_hosts or tls)`,
				`hybrid.yaml:7: log.level: unknown level "Info" (want trace, debug, info, warn or error)`,
				`hybrid.yaml:13: agent.connections[1].key: required (or key_file)`,
				`hybrid.yaml:13: agent.connections[1].name: duplicate name "A" (first at line 12; names are compared ignoring case)`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("HYBRID_TEST_UNSET", "")
			os.Unsetenv("HYBRID_TEST_UNSET") // restored by t.Setenv's cleanup
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			c, err := Parse("hybrid.yaml", []byte(tt.src))
			if err == nil {
				t.Fatalf("no error; config %s", dump(c))
			}
			if c != nil {
				t.Errorf("config returned with errors")
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error is %T, want Errors", err)
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			for i, e := range es {
				if e.File != "hybrid.yaml" || i > 0 && e.Line < es[i-1].Line {
					t.Errorf("error %d: %#v out of order or wrong file", i, e)
				}
			}
		})
	}
}

func TestSecrets(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("keys/agent.key", keyOnprem+"\r\n\n")
	write("keys/primary.key", keyApps1+"\n")
	write("abs.key", keyApps2+"  \t\n")
	write("empty.key", " \n\n")
	t.Setenv("HYBRID_TEST_KEY", keyApps2)

	file := filepath.Join(dir, "hybrid.yaml")
	t.Run("resolved", func(t *testing.T) {
		src := `relay:
  keys:
    - {name: k, rights: [manage], primary_file: keys/primary.key, secondary: "${HYBRID_TEST_KEY}"}
    - {name: j, rights: [manage], primary: "${HYBRID_TEST_KEY}", secondary_file: ` + filepath.Join(dir, "abs.key") + `}
agent:
  relays: [r.example.com]
  connections:
    - {name: a, endpoint: "db:1", key_name: k, key_file: keys/agent.key}
proxy:
  relay: r.example.com
  connections:
    - {name: a, endpoint: "db:1", key_name: k, key: "${HYBRID_TEST_KEY}"}
`
		c := parseOK(t, file, src)
		want := []Key{
			{Name: "k", Rights: []string{"manage"}, Primary: keyApps1, Secondary: keyApps2},
			{Name: "j", Rights: []string{"manage"}, Primary: keyApps2, Secondary: keyApps2},
		}
		if !equalKeys(c.Relay.Keys, want) {
			t.Errorf("relay keys = %+v", c.Relay.Keys)
		}
		if c.Agent.Connections[0].Key != keyOnprem {
			t.Errorf("agent key = %q (trailing whitespace not trimmed?)", c.Agent.Connections[0].Key)
		}
		if c.Proxy.Connections[0].Key != keyApps2 {
			t.Errorf("proxy key = %q", c.Proxy.Connections[0].Key)
		}
	})
	t.Run("errors name the file, never the value", func(t *testing.T) {
		src := `agent:
  relays: [r.example.com]
  connections:
    - {name: a, endpoint: "db:1", key_name: k, key_file: empty.key}
    - {name: b, endpoint: "db:2", key_name: k, key_file: missing.key}
`
		_, err := Parse(file, []byte(src))
		want := file + `:4: agent.connections[0].key_file: key file ` + filepath.Join(dir, "empty.key") + ` is empty` + "\n" +
			file + `:5: agent.connections[1].key_file: cannot read key file: open ` + filepath.Join(dir, "missing.key") + `: no such file or directory`
		if err == nil || err.Error() != want {
			t.Errorf("err = %v\nwant %s", err, want)
		}
	})
	t.Run("short key from file", func(t *testing.T) {
		write("short.key", "abc\n")
		_, err := Parse(file, []byte("proxy:\n  relay: r.example.com\n  connections:\n    - {name: a, listen: \"127.0.0.1:0\", key_name: k, key_file: short.key}\n"))
		want := file + `:4: proxy.connections[0].key_file: key too short (in ` + filepath.Join(dir, "short.key") + `): 3 characters, want at least 16 (hybrid keys new makes one)`
		if err == nil || err.Error() != want {
			t.Errorf("err = %v\nwant %s", err, want)
		}
		if strings.Contains(err.Error(), "abc") {
			t.Errorf("error leaks the key")
		}
	})
}

func equalKeys(a, b []Key) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Primary != b[i].Primary || a[i].Secondary != b[i].Secondary ||
			strings.Join(a[i].Rights, ",") != strings.Join(b[i].Rights, ",") {
			return false
		}
	}
	return true
}

func TestAliasBomb(t *testing.T) {
	clearEnv(t)
	// 1000 connections x 100 keys x 1000 rights if aliases were expanded.
	rights := "[" + strings.Repeat("send, ", 999) + "send]"
	bomb := "relay:\n  keys:\n    - &k {name: k, rights: " + rights + ", primary: " + K + "}\n" +
		"  connections:\n    - &c {name: c, keys: [" + strings.Repeat("*k, ", 99) + "*k]}\n" +
		strings.Repeat("    - *c\n", 1000)
	_, err := Parse("hybrid.yaml", []byte(bomb))
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("err = %v", err)
	}
	if len(es) > maxNodes {
		t.Errorf("%d errors", len(es))
	}
	found := false
	for _, e := range es {
		found = found || strings.HasPrefix(e.Msg, "too many values")
	}
	if !found {
		t.Errorf("no budget error among %d errors", len(es))
	}
}

// TestLongValuesClipped: a bad value of any size is quoted as a short
// prefix, never whole.
func TestLongValuesClipped(t *testing.T) {
	long := strings.Repeat("x", 100000)
	for _, doc := range []string{
		"proxy:\n  relay: 127.0.0.1\n  transport: " + long + "\n  connections: []\n",
		"agent:\n  relays: [" + long + "]\n  connections: []\n",
		"log: {level: \"" + strings.Repeat("é\\x00", 5000) + "\"}\nproxy: {relay: 127.0.0.1, connections: []}\n",
	} {
		_, err := Parse("hybrid.yaml", []byte(doc))
		if err == nil {
			t.Fatal("want an error")
		}
		if len(err.Error()) > 400 {
			t.Fatalf("message of %d bytes:\n%.600s", len(err.Error()), err.Error())
		}
		if !strings.Contains(err.Error(), "bytes)") {
			t.Fatalf("no sign of a clipped value: %s", err)
		}
	}
}
