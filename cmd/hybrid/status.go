package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hybridconn/hybrid/agent"
	"github.com/hybridconn/hybrid/proxy"
	"github.com/hybridconn/hybrid/relay"
	"github.com/hybridconn/hybrid/rules"
)

// statusHint follows a failed status request: the usual reason.
const statusHint = "hint: is a role running there? The relay answers on its admin: address, or else its listen.http one; " +
	"an agent or proxy only when its section sets admin: (e.g. admin: 127.0.0.1:9100)"

func statusCommand() *cobra.Command {
	var urls []string
	var raw bool
	var token string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Ask running roles what they are doing (agents, connections, streams, reloads)",
		Long: `Ask running roles what they are doing. The addresses come from the config:
the relay's admin: address (or its listen.http, with relay.admin_token), and
the admin: address of the agent and proxy sections (set one to enable it).
--url asks one endpoint directly: a URL or just host:port, with --token when
it wants one.

With --json, each endpoint's status document is printed on one line; an
endpoint that did not answer gives {"url": ..., "error": ...} instead.

Config sections read (without --url): relay, agent and proxy, for their
addresses. Exit 0 when every endpoint answered, 1 for a bad config or
--url, 2 when an endpoint did not answer.`,
		Example: "  hybrid status --config hybrid.yaml\n  hybrid status --url 127.0.0.1:9100\n  hybrid status --url https://relay.example.com --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			targets, err := statusTargetsOf(cmd, urls, token)
			if err != nil {
				if raw {
					printJSONError(out, "", err)
				}
				return configErr(err)
			}
			failed := 0
			for _, t := range targets {
				u := t.url
				body, err := fetchStatus(cmd.Context(), t)
				switch {
				case err == nil && raw:
					body, err = compactJSON(body)
				case err == nil:
					err = printStatus(out, u, body)
				}
				switch {
				case err != nil && raw:
					printJSONError(out, u, err)
				case err != nil:
					fmt.Fprintf(errOut, "hybrid: status: %s: %v\n", u, err)
				case raw:
					fmt.Fprintf(out, "%s\n", body)
				}
				if err != nil {
					failed++
				}
			}
			if failed == 0 {
				return nil
			}
			if !raw {
				fmt.Fprintln(errOut, statusHint)
			}
			return &exitError{exitRuntime, errors.New("")} // each failure is printed above
		},
	}
	addConfigFlag(cmd)
	cmd.Flags().StringSliceVar(&urls, "url", nil, "admin endpoint to ask (repeatable): http://127.0.0.1:9100, or 127.0.0.1:9100")
	cmd.Flags().BoolVar(&raw, "json", false, "print the raw JSON documents (and JSON errors)")
	cmd.Flags().StringVar(&token, "token", os.Getenv("HYBRID_ADMIN_TOKEN"), "bearer token for a relay's public http port (relay.admin_token; default $HYBRID_ADMIN_TOKEN)")
	return cmd
}

// statusTargetsOf returns the endpoints to ask: --url, normalised, with
// --token, or those the config names.
func statusTargetsOf(cmd *cobra.Command, urls []string, token string) ([]statusTarget, error) {
	if len(urls) > 0 {
		out := make([]statusTarget, 0, len(urls))
		for _, u := range urls {
			n, err := normalizeURL(u)
			if err != nil {
				return nil, err
			}
			out = append(out, statusTarget{url: n, token: token})
		}
		return out, nil
	}
	cfg, err := loadConfig(cmd)
	if err != nil {
		return nil, err
	}
	targets := statusTargets(cfg)
	if len(targets) == 0 {
		return nil, fmt.Errorf("%s: nothing to ask: no relay section, and no admin: address in the agent or proxy section", cfg.File)
	}
	return targets, nil
}

// normalizeURL turns --url into a base URL: http:// is added to a bare
// host:port; the scheme must be http or https.
func normalizeURL(s string) (string, error) {
	in := s
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "", fmt.Errorf("--url %q: %w", in, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("--url %q: scheme %q: want http or https", in, u.Scheme)
	case u.Hostname() == "":
		return "", fmt.Errorf("--url %q: no host: want host:port or http://host:port", in)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return "", fmt.Errorf("--url %q: want no user, query or fragment", in)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// compactJSON returns the JSON document b on one line.
func compactJSON(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return nil, fmt.Errorf("answered, but not with JSON: %w", err)
	}
	return buf.Bytes(), nil
}

// printJSONError prints {"url": u, "error": err} (no url when u is "") on
// one line.
func printJSONError(w io.Writer, u string, err error) {
	doc := map[string]string{"error": err.Error()}
	if u != "" {
		doc["url"] = u
	}
	b, _ := json.Marshal(doc)
	fmt.Fprintf(w, "%s\n", b)
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

// statusTimeout bounds one status request: a role answers at once or not
// at all.
const statusTimeout = 10 * time.Second

// fetchStatus GETs the target's /status and returns the body, with an
// error that says in words what went wrong.
func fetchStatus(ctx context.Context, t statusTarget) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(t.url, "/")+"/status", nil)
	if err != nil {
		return nil, err
	}
	if t.token != "" {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, dialProblem(err, statusTimeout)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the answer: %w", dialProblem(err, statusTimeout))
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized, http.StatusForbidden:
		return nil, fmt.Errorf("GET /status answered %s: give the relay's admin_token (--token or HYBRID_ADMIN_TOKEN), or ask from loopback", resp.Status)
	default:
		return nil, fmt.Errorf("GET /status answered %s: not a hybrid admin endpoint, or not open to this address", resp.Status)
	}
	return body, nil
}

// dialProblem says in words why a request or connection failed: refused,
// timed out (after d), unknown host; otherwise the error without Go's
// `Get "url":` wrapping.
func dialProblem(err error, d time.Duration) error {
	var dns *net.DNSError
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return errors.New("connection refused")
	case errors.As(err, &dns):
		return fmt.Errorf("unknown host %s", dns.Name)
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("no answer within %s", d)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// printStatus prints a role's status document, as text.
func printStatus(w io.Writer, base string, body []byte) error {
	var doc struct {
		Uptime int64           `json:"uptime_seconds"`
		Relay  *relay.Status   `json:"relay"`
		Agent  *agent.Status   `json:"agent"`
		Proxy  *proxy.Status   `json:"proxy"`
		Config *map[string]any `json:"config"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return fmt.Errorf("answered, but not with a hybrid status document: %w", err)
	}
	fmt.Fprintf(w, "%s (up %s)\n", base, time.Duration(doc.Uptime)*time.Second)
	if r := doc.Relay; r != nil {
		fmt.Fprintf(w, "  relay %s: %s, %s active; opened %d, failed %d, auth failures %d\n",
			r.Namespace, plural(len(r.Agents), "agent"), plural(r.StreamsActive, "stream"),
			r.Counters["streams_opened"], r.Counters["streams_failed"], r.Counters["auth_failures"])
		for _, c := range r.Connections {
			agents := "NO agent listening"
			if len(c.Agents) > 0 {
				agents = "agents " + strings.Join(c.Agents, ", ")
			}
			fmt.Fprintf(w, "    connection %s: %s; %s active\n", c.Name, agents, plural(c.StreamsActive, "stream"))
		}
		for _, a := range r.Agents {
			fmt.Fprintf(w, "    agent %s (%s) listening for %s\n", a.Agent, a.Remote, strings.Join(a.Listening, ", "))
		}
	}
	if a := doc.Agent; a != nil {
		fmt.Fprintf(w, "  agent: %s active; opened %d, denied %d, unreachable %d, revoked %d\n", plural(a.StreamsActive, "stream"),
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
		fmt.Fprintf(w, "  proxy: %s active; opened %d, refused %d; relays %s\n", plural(p.StreamsActive, "stream"),
			p.Counters["streams_opened"], p.Counters["streams_refused"], strings.Join(p.Relays, ", "))
		for _, f := range p.Forwarding {
			fmt.Fprintf(w, "    %s -> %s\n", f.Listen, f.HC)
		}
		if p.Socks != "" {
			fmt.Fprintf(w, "    socks5 %s (%s)\n", p.Socks, plural(int(p.Counters["socks_bad_handshakes"]+p.Counters["socks_busy"]), "failed handshake"))
		}
		if p.HostsFile != "" {
			fmt.Fprintf(w, "    hosts mode in %s: %s\n", p.HostsFile, plural(len(p.Hosts), "name"))
		}
	}
	if c := doc.Config; c != nil {
		m := *c
		n := func(k string) int { f, _ := m[k].(float64); return int(f) }
		fmt.Fprintf(w, "  config %v: %s applied, %d failed", m["file"], plural(n("reloads_succeeded"), "reload"), n("reloads_failed"))
		if e, _ := m["last_error"].(string); e != "" {
			fmt.Fprintf(w, "; last error: %s", strings.ReplaceAll(e, "\n", "; "))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	return nil
}
