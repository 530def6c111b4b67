package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/hybridconn/hybrid/rules"
)

// oneOffFlags are the flags of a one-off agent or proxy (no config file):
// see rules.OneOff, which turns them into the section the YAML would hold.
type oneOffFlags struct {
	role                                              string
	relays, conns                                     []string
	keyName, key, keyFile, transport, admin, proxyURL string
	tls, insecure                                     bool
}

// addOneOffFlags gives the agent or proxy command (role) its one-off flags.
func addOneOffFlags(cmd *cobra.Command, role string) *oneOffFlags {
	o := &oneOffFlags{role: role}
	f := cmd.Flags()
	f.StringArrayVar(&o.relays, "relay", nil,
		"one-off: the relay, as a host (relay.example.com: ports 5671, 9352, 443) or as a YAML mapping "+
			"'{host: H, control: N, data: N, http: N, namespace: NS}'; repeatable")
	if role == "proxy" {
		f.StringArrayVar(&o.conns, "forward", nil, "one-off: LISTEN=NAME, a local address forwarded to the hybrid connection NAME; repeatable")
	} else {
		f.StringArrayVar(&o.conns, "publish", nil, "one-off: NAME=ENDPOINT, publish ENDPOINT (host:port) as the hybrid connection NAME; repeatable")
	}
	f.StringVar(&o.keyName, "key-name", "", "one-off: the key (rule) name at the relay")
	f.StringVar(&o.keyFile, "key-file", "", "one-off: file holding the key value")
	f.StringVar(&o.key, "key", "", `one-off: the key value, or "${ENV_VAR}" naming it (a literal shows in ps: prefer --key-file)`)
	f.StringVar(&o.transport, "transport", "", "one-off: auto, tcp or websocket (default auto)")
	f.BoolVar(&o.tls, "tls", false, "one-off: use TLS to the relay (the default, except for loopback hosts)")
	f.BoolVar(&o.insecure, "insecure", false, "one-off: plain TCP to the relay, no TLS")
	f.StringVar(&o.admin, "admin", "", "one-off: listen address of the status and metrics endpoint")
	f.StringVar(&o.proxyURL, "proxy-url", "", "one-off: HTTP CONNECT proxy to reach the relay through (default: HTTPS_PROXY)")
	return o
}

// names returns the one-off flags given on cmd's command line.
func (o *oneOffFlags) names(cmd *cobra.Command) []string {
	var out []string
	for _, n := range []string{"relay", "forward", "publish", "key-name", "key", "key-file", "transport", "tls", "insecure", "admin", "proxy-url"} {
		if fl := cmd.Flags().Lookup(n); fl != nil && fl.Changed {
			out = append(out, "--"+n)
		}
	}
	return out
}

// given reports whether any one-off flag is on cmd's command line.
func (o *oneOffFlags) given(cmd *cobra.Command) bool { return len(o.names(cmd)) > 0 }

// config builds and checks the one-off configuration.
func (o *oneOffFlags) config() (*rules.Config, error) {
	oo := rules.OneOff{Role: o.role, Relays: o.relays, Connections: o.conns, KeyName: o.keyName, Key: o.key,
		KeyFile: o.keyFile, Transport: o.transport, Admin: o.admin, ProxyURL: o.proxyURL}
	switch {
	case o.tls && o.insecure:
		return nil, errors.New("--tls and --insecure exclude each other")
	case o.tls:
		oo.TLS = &o.tls
	case o.insecure:
		no := false
		oo.TLS = &no
	}
	return oo.Config() // its errors name the flags
}
