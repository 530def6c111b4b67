package rules

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// FlagsFile is the File of a Config built from command-line flags by
// OneOff.Config: relative paths (key_file) resolve against the working
// directory, and there is no file to watch.
const FlagsFile = "<command line>"

// OneOff is a one-off agent or proxy given on the command line instead of in
// a file, as ssh -L users expect:
//
//	hybrid proxy --relay relay.example.com --forward 127.0.0.2:5432=postgres --key-name apps --key-file apps.key
//	hybrid agent --relay relay.example.com --publish postgres=127.0.0.1:5432 --key-name onprem --key-file onprem.key
//
// Config builds from it the YAML tree the equivalent file would hold and
// decodes that with the same decoder, so a flag-built Config equals the
// file-built one and a bad value gets the same message, naming the flag.
type OneOff struct {
	// Role is "agent" or "proxy": the section built.
	Role string
	// Relays are the --relay values, each as an entry of agent.relays or
	// proxy.relay is written: a host ("relay.example.com"), or a YAML flow
	// mapping ("{host: 127.0.0.1, control: 5671, data: 9352, http: 8080}").
	// At least one.
	Relays []string
	// Connections are the --publish NAME=ENDPOINT values (agent) or the
	// --forward LISTEN=NAME values (proxy). At least one.
	Connections []string
	// KeyName is --key-name, the key (rule) every connection uses. Required.
	KeyName string
	// Key is --key, the key value: literal or "${ENV_VAR}", as key: in the
	// file. Exactly one of Key and KeyFile.
	Key string
	// KeyFile is --key-file, as key_file: in the file.
	KeyFile string
	// Transport is --transport (auto, tcp, websocket); "" leaves the default.
	Transport string
	// TLS is --tls (true) or --insecure (false): it sets tls: on every relay
	// entry. nil leaves each entry's default (on, except for loopback hosts).
	TLS *bool
	// Admin is --admin, the status/metrics listen address; "" means none.
	Admin string
	// ProxyURL is --proxy-url, an HTTP CONNECT proxy; "" means none (or
	// HTTPS_PROXY).
	ProxyURL string
}

// flagTree builds a YAML tree whose nodes carry, as their line, the
// 1-based index of the flag they came from in labels.
type flagTree struct {
	labels []string // labels[i-1] names flag i, e.g. `--forward 127.0.0.2:5432=pg`
}

// flag records the flag name with value (shown unless secret) and returns
// its line.
func (t *flagTree) flag(name, value string, secret bool) int {
	label := "--" + name
	if !secret {
		if value == "" || strings.ContainsAny(value, " \t\"'") {
			value = strconv.Quote(value)
		}
		label += " " + value
	}
	t.labels = append(t.labels, label)
	return len(t.labels)
}

func str(v string, line int) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v, Line: line, Column: 1}
}

func boolNode(b bool, line int) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(b), Line: line, Column: 1}
}

// mapping returns a mapping node of key/value pairs, each key on its value's
// line.
func mapping(line int, kv ...any) *yaml.Node {
	m := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: line, Column: 1}
	for i := 0; i+1 < len(kv); i += 2 {
		v := kv[i+1].(*yaml.Node)
		m.Content = append(m.Content, str(kv[i].(string), v.Line), v)
	}
	return m
}

// setLine gives n and everything below it line.
func setLine(n *yaml.Node, line int) {
	n.Line, n.Column = line, 1
	for _, c := range n.Content {
		setLine(c, line)
	}
}

// Config checks o and returns the Config with its one section (and log
// defaults, with HYBRID_LOG_LEVEL and HYBRID_LOG_FORMAT applied), File
// FlagsFile. Problems are returned as Errors whose File names the flag
// ("--forward 127.0.0.2:5432=pg: proxy.connections[0].listen: ..."); a key
// value is never shown.
func (o OneOff) Config() (*Config, error) {
	var usage []string
	connFlag := map[string]string{"agent": "--publish", "proxy": "--forward"}[o.Role]
	switch {
	case connFlag == "":
		return nil, fmt.Errorf("one-off %q: want agent or proxy", o.Role)
	case len(o.Relays) == 0:
		usage = append(usage, "--relay is required (the relay's host)")
	}
	if len(o.Connections) == 0 {
		usage = append(usage, connFlag+" is required")
	}
	if o.KeyName == "" {
		usage = append(usage, "--key-name is required")
	}
	if (o.Key == "") == (o.KeyFile == "") {
		usage = append(usage, "give one of --key-file and --key")
	}
	if len(usage) > 0 {
		return nil, errors.New(strings.Join(usage, "; "))
	}

	t := &flagTree{}
	var errs Errors
	relays := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	for _, r := range o.Relays {
		line := t.flag("relay", r, false)
		var doc yaml.Node
		if err := yaml.Unmarshal([]byte(r), &doc); err != nil || len(doc.Content) != 1 {
			errs = append(errs, Error{File: t.labels[line-1],
				Msg: "want a host, or a mapping such as {host: 127.0.0.1, control: 5671, data: 9352, http: 8080}"})
			continue
		}
		n := doc.Content[0]
		setLine(n, line)
		relays.Content = append(relays.Content, n)
	}
	if relays.Line = 1; len(errs) > 0 {
		return nil, errs
	}
	if o.TLS != nil {
		name := "tls"
		if !*o.TLS {
			name = "insecure"
		}
		line := t.flag(name, "", true)
		for i, n := range relays.Content {
			if n.Kind == yaml.ScalarNode {
				n = mapping(n.Line, "host", n)
				relays.Content[i] = n
			}
			if n.Kind == yaml.MappingNode {
				n.Content = append(n.Content, str("tls", line), boolNode(*o.TLS, line))
			}
		}
	}

	var key []any
	if o.Key != "" {
		key = []any{"key", str(o.Key, t.flag("key", "", true))}
	} else {
		key = []any{"key_file", str(o.KeyFile, t.flag("key-file", o.KeyFile, false))}
	}
	keyName := str(o.KeyName, t.flag("key-name", o.KeyName, false))
	conns := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Line: 1}
	for _, c := range o.Connections {
		line := t.flag(connFlag[2:], c, false)
		left, right, ok := strings.Cut(c, "=")
		if !ok {
			want := "NAME=ENDPOINT, as in postgres=127.0.0.1:5432"
			if o.Role == "proxy" {
				want = "LISTEN=NAME, as in 127.0.0.2:5432=postgres"
			}
			errs = append(errs, Error{File: t.labels[line-1], Msg: "want " + want})
			continue
		}
		kv := []any{"name", str(left, line), "endpoint", str(right, line)}
		if o.Role == "proxy" {
			kv = []any{"listen", str(left, line), "name", str(right, line)}
		}
		kv = append(kv, "key_name", keyName)
		conns.Content = append(conns.Content, mapping(line, append(kv, key...)...))
	}
	if len(errs) > 0 {
		return nil, errs
	}

	relayKey := "relay"
	if o.Role == "agent" {
		relayKey = "relays"
	}
	sec := mapping(1, relayKey, relays)
	for _, f := range []struct{ yaml, flag, v string }{
		{"transport", "transport", o.Transport},
		{"admin", "admin", o.Admin},
		{"proxy_url", "proxy-url", o.ProxyURL},
	} {
		if f.v != "" {
			v := str(f.v, t.flag(f.flag, f.v, false))
			sec.Content = append(sec.Content, str(f.yaml, v.Line), v)
		}
	}
	sec.Content = append(sec.Content, str("connections", 1), conns)

	d := newDecoder(FlagsFile, ".", nil)
	cfg, err := d.decode(mapping(1, o.Role, sec))
	if err != nil {
		var es Errors
		if errors.As(err, &es) {
			return nil, t.relabel(es)
		}
		return nil, err
	}
	cfg.Warnings = t.relabel(cfg.Warnings)
	return cfg, nil
}

var lineRef = regexp.MustCompile(`\bline (\d+)\b`)

// relabel turns the lines of es (flag indexes) into the flags' labels: the
// File of each Error, and "line N" in messages.
func (t *flagTree) relabel(es Errors) Errors {
	if len(es) == 0 {
		return es
	}
	out := make(Errors, 0, len(es))
	for _, e := range es {
		if e.Line > 0 && e.Line <= len(t.labels) {
			e.File, e.Line = t.labels[e.Line-1], 0
		}
		e.Msg = lineRef.ReplaceAllStringFunc(e.Msg, func(s string) string {
			n, _ := strconv.Atoi(s[len("line "):])
			if n > 0 && n <= len(t.labels) {
				return t.labels[n-1]
			}
			return s
		})
		out = append(out, e)
	}
	return out
}

// ReadKeyFile reads a key value from a file as key_file: does: a regular
// file of at most 64 KiB, trailing spaces, tabs, CR and LF stripped, not
// empty.
func ReadKeyFile(path string) (string, error) { return readKeyFile(path) }
