package rules

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOneOffEqualsYAML: the flags build exactly the Config the equivalent
// file does.
func TestOneOffEqualsYAML(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile(filepath.Join(dir, "apps.key"), []byte(keySixteen+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("APPS_KEY", keySixteen+"xyz")
	yes, no := true, false
	tests := []struct {
		name string
		o    OneOff
		yaml string
	}{
		{
			name: "proxy, the README's line",
			o: OneOff{Role: "proxy", Relays: []string{"relay.example.com"}, Connections: []string{"127.0.0.2:5432=postgres"},
				KeyName: "apps", KeyFile: "apps.key"},
			yaml: `proxy:
  relay: relay.example.com
  connections:
    - { listen: 127.0.0.2:5432, name: postgres, key_name: apps, key_file: apps.key }
`,
		},
		{
			name: "proxy, every flag",
			o: OneOff{Role: "proxy", Relays: []string{"{host: 127.0.0.1, control: 15671, data: 19352, http: 18080, namespace: relay.example.com}", "relay-b.example.com"},
				Connections: []string{"127.0.0.2:5432=postgres", "127.0.0.2:3306=db/mysql"}, KeyName: "apps", Key: "${APPS_KEY}",
				Transport: "websocket", TLS: &yes, Admin: "127.0.0.1:9101", ProxyURL: "http://proxy.corp.local:3128"},
			yaml: `proxy:
  relay:
    - { host: 127.0.0.1, control: 15671, data: 19352, http: 18080, namespace: relay.example.com, tls: true }
    - { host: relay-b.example.com, tls: true }
  transport: websocket
  admin: 127.0.0.1:9101
  proxy_url: http://proxy.corp.local:3128
  connections:
    - { listen: 127.0.0.2:5432, name: postgres, key_name: apps, key: "${APPS_KEY}" }
    - { listen: 127.0.0.2:3306, name: db/mysql, key_name: apps, key: "${APPS_KEY}" }
`,
		},
		{
			name: "agent, the README's line",
			o: OneOff{Role: "agent", Relays: []string{"relay.example.com"}, Connections: []string{"postgres=127.0.0.1:5432"},
				KeyName: "onprem", KeyFile: "apps.key"},
			yaml: `agent:
  relays: [relay.example.com]
  connections:
    - { name: postgres, endpoint: 127.0.0.1:5432, key_name: onprem, key_file: apps.key }
`,
		},
		{
			name: "agent, insecure, two connections",
			o: OneOff{Role: "agent", Relays: []string{"relay.example.com"}, Connections: []string{"postgres=PG.corp.local.:5432", "web=127.0.0.1:8081"},
				KeyName: "onprem", Key: keySixteen, TLS: &no, Transport: "tcp"},
			yaml: `agent:
  relays: [{host: relay.example.com, tls: false}]
  transport: tcp
  connections:
    - { name: postgres, endpoint: PG.corp.local.:5432, key_name: onprem, key: "` + keySixteen + `" }
    - { name: web, endpoint: 127.0.0.1:8081, key_name: onprem, key: "` + keySixteen + `" }
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := Parse(FlagsFile, []byte(tt.yaml))
			if err != nil {
				t.Fatalf("yaml: %v", err)
			}
			got, err := tt.o.Config()
			if err != nil {
				t.Fatalf("flags: %v", err)
			}
			// The same warnings, each naming the flag instead of file:line.
			if len(got.Warnings) != len(want.Warnings) {
				t.Fatalf("warnings %v, want %v", got.Warnings, want.Warnings)
			}
			for i, w := range want.Warnings {
				if g := got.Warnings[i]; g.Field != w.Field || g.Msg != w.Msg || g.Line != 0 || !strings.HasPrefix(g.File, "--") {
					t.Errorf("warning %q, want %q naming a flag", g, w)
				}
			}
			got.Warnings, want.Warnings, want.lines = nil, nil, nil
			assertConfig(t, got, want)
		})
	}
}

// TestOneOffErrors: bad flag values get the YAML's own messages, naming the
// flag; a key value is never shown.
func TestOneOffErrors(t *testing.T) {
	clearEnv(t)
	t.Chdir(t.TempDir())
	proxy := func(mod func(*OneOff)) OneOff {
		o := OneOff{Role: "proxy", Relays: []string{"relay.example.com"}, Connections: []string{"127.0.0.2:5432=postgres"},
			KeyName: "apps", Key: keySixteen}
		mod(&o)
		return o
	}
	tests := []struct {
		name string
		o    OneOff
		want []string // Error() lines
	}{
		{"nothing", OneOff{Role: "proxy"}, []string{
			"--relay is required (the relay's host); --forward is required; --key-name is required; give one of --key-file and --key"}},
		{"agent without --publish", OneOff{Role: "agent", Relays: []string{"r"}, KeyName: "k", KeyFile: "f"}, []string{"--publish is required"}},
		{"both keys", proxy(func(o *OneOff) { o.KeyFile = "apps.key" }), []string{"give one of --key-file and --key"}},
		{"forward without =", proxy(func(o *OneOff) { o.Connections = []string{"127.0.0.2:5432"} }), []string{
			"--forward 127.0.0.2:5432: want LISTEN=NAME, as in 127.0.0.2:5432=postgres"}},
		{"publish without =", OneOff{Role: "agent", Relays: []string{"r"}, Connections: []string{"pg"}, KeyName: "k", Key: keySixteen}, []string{
			"--publish pg: want NAME=ENDPOINT, as in postgres=127.0.0.1:5432"}},
		{"bad listen address", proxy(func(o *OneOff) { o.Connections = []string{"127.0.0.2:99999=postgres"} }), []string{
			`--forward 127.0.0.2:99999=postgres: proxy.connections[0].listen: invalid listen address "127.0.0.2:99999": port must be a number 0-65535`}},
		{"bad name", proxy(func(o *OneOff) { o.Connections = []string{"127.0.0.2:5432=a//b"} }), []string{
			`--forward 127.0.0.2:5432=a//b: proxy.connections[0].name: invalid name "a//b": empty segment`}},
		{"duplicate names", proxy(func(o *OneOff) { o.Connections = []string{"127.0.0.2:1=pg", "127.0.0.2:2=PG"} }), []string{
			`--forward 127.0.0.2:2=PG: proxy.connections[1].name: duplicate name "PG" (first at --forward 127.0.0.2:1=pg; names are compared ignoring case)`}},
		{"bad relay", proxy(func(o *OneOff) { o.Relays = []string{"{host: r, control: x}"} }), []string{
			`--relay "{host: r, control: x}": proxy.relay[0].control: want an integer, got a string`}},
		{"relay not YAML", proxy(func(o *OneOff) { o.Relays = []string{"{host: r"} }), []string{
			`--relay "{host: r": want a host, or a mapping such as {host: 127.0.0.1, control: 5671, data: 9352, http: 8080}`}},
		{"bad transport", proxy(func(o *OneOff) { o.Transport = "udp" }), []string{
			`--transport udp: proxy.transport: unknown transport "udp" (want auto, tcp or websocket)`}},
		{"short key, value not shown", proxy(func(o *OneOff) { o.Key = "secret" }), []string{
			"--key: proxy.connections[0].key: key too short: 6 characters, want at least 16 (hybrid keys new makes one)"}},
		{"missing key file", proxy(func(o *OneOff) { o.Key, o.KeyFile = "", "nope.key" }), []string{
			"--key-file nope.key: proxy.connections[0].key_file: cannot read key file: "}},
		{"bad key name", proxy(func(o *OneOff) { o.KeyName = "a b" }), []string{
			`--key-name "a b": proxy.connections[0].key_name: invalid key name "a b"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := tt.o.Config()
			if err == nil {
				t.Fatalf("no error; config %s", dump(cfg))
			}
			var lines []string
			var es Errors
			if errors.As(err, &es) {
				for _, e := range es {
					lines = append(lines, e.Error())
				}
			} else {
				lines = []string{err.Error()}
			}
			if len(lines) != len(tt.want) {
				t.Fatalf("got %q, want %q", lines, tt.want)
			}
			for i := range lines {
				if !strings.HasPrefix(lines[i], tt.want[i]) {
					t.Errorf("got  %q\nwant %q...", lines[i], tt.want[i])
				}
				if strings.Contains(lines[i], "secret") {
					t.Errorf("%q shows the key value", lines[i])
				}
			}
		})
	}
}
