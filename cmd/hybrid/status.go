package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hybridconn/hybrid/agent"
	"github.com/hybridconn/hybrid/proxy"
	"github.com/hybridconn/hybrid/relay"
	"github.com/hybridconn/hybrid/rules"
)

func statusCommand() *cobra.Command {
	var urls []string
	var raw bool
	var token string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Ask running roles what they are doing (agents, connections, streams, reloads)",
		Long: `Ask running roles what they are doing. The addresses come from the config:
the relay's listen.http, and the admin: address of the agent and proxy
sections (set one to enable it). --url asks one endpoint directly.
Exit 0 when every endpoint answered, 2 otherwise.`,
		Example: "  hybrid status --config hybrid.yaml\n  hybrid status --url http://127.0.0.1:9100",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var targets []statusTarget
			for _, u := range urls {
				targets = append(targets, statusTarget{url: u, token: token})
			}
			if len(targets) == 0 {
				cfg, err := loadConfig(cmd)
				if err != nil {
					return configErr(err)
				}
				targets = statusTargets(cfg)
				if len(targets) == 0 {
					return configErr(fmt.Errorf("%s: nothing to ask: no relay section, and no admin: address in the agent or proxy section", cfg.File))
				}
			}
			var failed []error
			for _, t := range targets {
				if err := printStatus(cmd.Context(), cmd.OutOrStdout(), t, raw); err != nil {
					failed = append(failed, err)
					fmt.Fprintf(cmd.OutOrStdout(), "%s: %v\n\n", t.url, err)
				}
			}
			if len(failed) > 0 {
				return &exitError{exitRuntime, errors.Join(failed...)}
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&urls, "url", nil, "admin endpoint to ask (repeatable), e.g. http://127.0.0.1:9100")
	cmd.Flags().BoolVar(&raw, "json", false, "print the raw JSON documents")
	cmd.Flags().StringVar(&token, "token", os.Getenv("HYBRID_ADMIN_TOKEN"), "bearer token for a relay's public http port (relay.admin_token; default $HYBRID_ADMIN_TOKEN)")
	return cmd
}

// statusTarget is an admin endpoint and the bearer token it wants, if any.
type statusTarget struct {
	url, token string
}

// statusTargets returns the admin URLs a config names: the relay's admin
// listener, or its http listener with its admin token; the admin
// listeners of agent and proxy.
func statusTargets(cfg *rules.Config) []statusTarget {
	var out []statusTarget
	add := func(addr, token string) {
		if addr == "" {
			return
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		scheme := "http"
		if cfg.Relay != nil && cfg.Relay.TLS != nil && addr == cfg.Relay.Listen.HTTP {
			scheme = "https"
		}
		u := scheme + "://" + net.JoinHostPort(host, port)
		for _, x := range out {
			if x.url == u {
				return
			}
		}
		out = append(out, statusTarget{url: u, token: token})
	}
	if cfg.Relay != nil {
		if cfg.Relay.Admin != "" {
			add(cfg.Relay.Admin, "")
		} else {
			add(cfg.Relay.Listen.HTTP, cfg.Relay.AdminToken)
		}
	}
	if cfg.Agent != nil {
		add(cfg.Agent.Admin, "")
	}
	if cfg.Proxy != nil {
		add(cfg.Proxy.Admin, "")
	}
	return out
}

func printStatus(ctx context.Context, w io.Writer, t statusTarget, raw bool) error {
	base := t.url
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(base, "/")+"/status", nil)
	if err != nil {
		return err
	}
	if t.token != "" {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /status: %s", resp.Status)
	}
	if raw {
		fmt.Fprintf(w, "%s\n", body)
		return nil
	}
	var doc struct {
		Uptime int64           `json:"uptime_seconds"`
		Relay  *relay.Status   `json:"relay"`
		Agent  *agent.Status   `json:"agent"`
		Proxy  *proxy.Status   `json:"proxy"`
		Config *map[string]any `json:"config"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return fmt.Errorf("not a hybrid status document: %w", err)
	}
	fmt.Fprintf(w, "%s (up %s)\n", base, time.Duration(doc.Uptime)*time.Second)
	if r := doc.Relay; r != nil {
		fmt.Fprintf(w, "  relay %s: %d agents, %d streams active; opened %d, failed %d, auth failures %d\n",
			r.Namespace, len(r.Agents), r.StreamsActive, r.Counters["streams_opened"], r.Counters["streams_failed"], r.Counters["auth_failures"])
		for _, a := range r.Agents {
			fmt.Fprintf(w, "    agent %s (%s) listening for %s\n", a.Agent, a.Remote, strings.Join(a.Listening, ", "))
		}
	}
	if a := doc.Agent; a != nil {
		fmt.Fprintf(w, "  agent: %d streams active; opened %d, denied %d, unreachable %d, revoked %d\n", a.StreamsActive,
			a.Counters["streams_opened"], a.Counters["streams_denied"], a.Counters["streams_unreachable"], a.Counters["streams_revoked"])
		for _, r := range a.Relays {
			state := "connected"
			if !r.Connected {
				state = "NOT connected"
			}
			fmt.Fprintf(w, "    relay %s %s, listening for %s", r.Relay, state, strings.Join(r.Listening, ", "))
			if r.LastError != "" {
				fmt.Fprintf(w, " (last error: %s)", r.LastError)
			}
			fmt.Fprintln(w)
		}
	}
	if p := doc.Proxy; p != nil {
		fmt.Fprintf(w, "  proxy: %d streams active; opened %d, refused %d; relays %s\n", p.StreamsActive,
			p.Counters["streams_opened"], p.Counters["streams_refused"], strings.Join(p.Relays, ", "))
		for _, f := range p.Forwarding {
			fmt.Fprintf(w, "    %s -> %s\n", f.Listen, f.HC)
		}
		if p.Socks != "" {
			fmt.Fprintf(w, "    socks5 %s (%d failed handshakes)\n", p.Socks, p.Counters["socks_bad_handshakes"]+p.Counters["socks_busy"])
		}
		if p.HostsFile != "" {
			fmt.Fprintf(w, "    hosts mode in %s: %d names\n", p.HostsFile, len(p.Hosts))
		}
	}
	if c := doc.Config; c != nil {
		m := *c
		fmt.Fprintf(w, "  config %v: %v reloads applied, %v failed", m["file"], m["reloads_succeeded"], m["reloads_failed"])
		if e, _ := m["last_error"].(string); e != "" {
			fmt.Fprintf(w, "; last error: %s", strings.ReplaceAll(e, "\n", "; "))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	return nil
}
