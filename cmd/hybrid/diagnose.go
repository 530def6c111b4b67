package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hybridconn/hybrid/agent"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/rules"
)

// diagnoseTimeout bounds each probe: a filtered port must not stall the table.
const diagnoseTimeout = 5 * time.Second

func diagnoseCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "diagnose",
		Short: "From this machine: reach each relay, check each key, reach each published endpoint",
		Long: `Probe, from this machine, everything the agent and proxy sections of the
config need:

  - each relay's control and data ports (native protocol, with TLS when
    configured) and its http port (/healthz);
  - each connection's key at each relay: a listen key for the agent, a send
    key for the proxy (the relay checks the token and opens nothing);
  - for the agent, each published endpoint (a TCP connect, then close), and
    whether it is inside agent.allow.

Prints one row per probe; exit 0 when every probe passed, 1 otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return configErr(err)
			}
			if cfg.Agent == nil && cfg.Proxy == nil {
				return configErr(fmt.Errorf("%s: nothing to diagnose: no agent or proxy section", cfg.File))
			}
			rows := diagnose(cmd.Context(), cfg)
			failed := printRows(cmd.OutOrStdout(), rows)
			if failed > 0 {
				return &exitError{exitConfig, fmt.Errorf("%d of %d checks failed", failed, len(rows))}
			}
			return nil
		},
	}
}

// probe is one row of the diagnosis.
type probe struct {
	role, check, target string
	err                 error
	took                time.Duration
}

func diagnose(ctx context.Context, cfg *rules.Config) []probe {
	var rows []probe
	run := func(role, check, target string, f func(context.Context) error) {
		pctx, cancel := context.WithTimeout(ctx, diagnoseTimeout)
		defer cancel()
		start := time.Now()
		err := f(pctx)
		rows = append(rows, probe{role, check, target, err, time.Since(start)})
	}
	relays := func(role string, eps []rules.RelayEndpoint, proxyURL, transport string, right sas.Rights, conns []connKey) {
		for _, ep := range eps {
			for _, port := range []struct {
				name string
				n    int
			}{{"relay control port", ep.Control}, {"relay data port", ep.Data}} {
				addr := net.JoinHostPort(ep.Host, strconv.Itoa(port.n))
				run(role, port.name, addr, func(ctx context.Context) error { return dialRelay(ctx, ep, addr) })
			}
			web := net.JoinHostPort(ep.Host, strconv.Itoa(ep.HTTP))
			run(role, "relay http port", web, func(ctx context.Context) error { return healthz(ctx, ep, web) })
			c := relayclient.New(ep.ClientEndpoint(), relayclient.WithProxy(proxyURL), relayclient.WithTransport(transport))
			for _, k := range conns {
				target := fmt.Sprintf("%s at %s (key %s)", k.hc, ep.Host, k.keyName)
				run(role, right.String()+" key", target, func(ctx context.Context) error {
					tok := sas.NewToken(sas.ResourceURI(ep.Namespace, k.hc), k.keyName, k.key, time.Now().Add(time.Minute))
					return c.Check(ctx, k.hc, tok, right)
				})
			}
		}
	}
	if a := cfg.Agent; a != nil {
		var ks []connKey
		for _, c := range a.Connections {
			ks = append(ks, connKey{c.Name, c.KeyName, c.Key})
		}
		relays("agent", a.Relays, a.ProxyURL, a.Transport, sas.Listen, ks)
		for _, c := range a.Connections {
			run("agent", "published endpoint", c.Name+" -> "+c.Endpoint, func(ctx context.Context) error {
				if _, err := agent.Authorize(a, c.Name, ""); err != nil {
					return err
				}
				var d net.Dialer
				conn, err := d.DialContext(ctx, "tcp", c.Endpoint)
				if err != nil {
					return err
				}
				return conn.Close()
			})
		}
	}
	if p := cfg.Proxy; p != nil {
		var ks []connKey
		for _, c := range p.Connections {
			ks = append(ks, connKey{c.Name, c.KeyName, c.Key})
		}
		relays("proxy", p.Relays, p.ProxyURL, p.Transport, sas.Send, ks)
	}
	return rows
}

type connKey struct{ hc, keyName, key string }

// dialRelay connects to a relay port, with the TLS handshake when the entry
// uses TLS, and closes.
func dialRelay(ctx context.Context, ep rules.RelayEndpoint, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if !ep.TLS {
		return nil
	}
	tc := tls.Client(conn, &tls.Config{ServerName: ep.Host, MinVersion: tls.VersionTLS12})
	return tc.HandshakeContext(ctx)
}

// healthz asks the relay's http port for /healthz.
func healthz(ctx context.Context, ep rules.RelayEndpoint, addr string) error {
	scheme := "http"
	if ep.TLS {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, "GET", scheme+"://"+addr+"/healthz", nil)
	if err != nil {
		return err
	}
	req.Host = ep.Host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

// printRows writes the table and returns how many probes failed.
func printRows(w io.Writer, rows []probe) int {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tCHECK\tTARGET\tRESULT\tTIME")
	failed := 0
	for _, r := range rows {
		res := "ok"
		if r.err != nil {
			failed++
			res = "FAIL: " + strings.ReplaceAll(r.err.Error(), "\n", "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.role, r.check, r.target, res, r.took.Round(time.Millisecond))
	}
	tw.Flush()
	return failed
}
