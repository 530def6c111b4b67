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
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/hybridconn/hybrid/agent"
	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/rules"
)

// diagnoseTimeout bounds each probe: a filtered port must not stall the table.
const diagnoseTimeout = 5 * time.Second

func diagnoseCommand() *cobra.Command {
	cmd := &cobra.Command{
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

Prints one row per probe, in at most 100 columns (a long error is shortened
in its row and printed in full below the table); key rows say "skipped:
relay unreachable" when the relay's ports did not answer. Exit 0 when every
probe passed, 1 otherwise.

Config sections read: agent and proxy (the relay section is not used).`,
		Example: "  hybrid diagnose --config agent.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return configErr(err)
			}
			if cfg.Agent == nil && cfg.Proxy == nil {
				return configErr(fmt.Errorf("%s: nothing to diagnose: no agent or proxy section", cfg.File))
			}
			rows := diagnose(cmd.Context(), cfg)
			failed, skipped := printRows(cmd.OutOrStdout(), rows)
			if failed > 0 {
				msg := fmt.Sprintf("%d of %s failed", failed, plural(len(rows), "check"))
				if skipped > 0 {
					msg += fmt.Sprintf(", %d skipped", skipped)
				}
				return &exitError{exitConfig, errors.New(msg)}
			}
			return nil
		},
	}
	addConfigFlag(cmd)
	return cmd
}

// probe is one row of the diagnosis.
type probe struct {
	role, check, target string
	err                 error
	skipped             string // why the probe did not run; "" when it ran
	took                time.Duration
}

func diagnose(ctx context.Context, cfg *rules.Config) []probe {
	var rows []probe
	run := func(role, check, target string, f func(context.Context) error) error {
		pctx, cancel := context.WithTimeout(ctx, diagnoseTimeout)
		defer cancel()
		start := time.Now()
		err := f(pctx)
		rows = append(rows, probe{role: role, check: check, target: target, err: err, took: time.Since(start)})
		return err
	}
	relays := func(role string, eps []rules.RelayEndpoint, proxyURL, transport string, right sas.Rights, conns []connKey) {
		for _, ep := range eps {
			var native error
			// With transport websocket the native ports are never used (and
			// an Azure Relay namespace answers 5671 with AMQP): skip them.
			for _, port := range []struct {
				name string
				n    int
			}{{"relay control port", ep.Control}, {"relay data port", ep.Data}} {
				if transport == rules.TransportWebSocket {
					break
				}
				addr := net.JoinHostPort(ep.Host, strconv.Itoa(port.n))
				native = errors.Join(native, run(role, port.name, addr, func(ctx context.Context) error { return dialRelay(ctx, ep, addr) }))
			}
			web := net.JoinHostPort(ep.Host, strconv.Itoa(ep.HTTP))
			webErr := run(role, "relay http port", web, func(ctx context.Context) error {
				return healthz(ctx, ep, web, transport == rules.TransportWebSocket)
			})
			reachable := map[string]bool{
				rules.TransportTCP:       native == nil,
				rules.TransportWebSocket: webErr == nil,
				rules.TransportAuto:      native == nil || webErr == nil,
			}[transport]
			c := relayclient.New(ep.ClientEndpoint(), relayclient.WithProxy(proxyURL), relayclient.WithTransport(transport))
			for _, k := range conns {
				target := fmt.Sprintf("%s at %s (key %s)", k.hc, ep.Host, k.keyName)
				if !reachable {
					rows = append(rows, probe{role: role, check: right.String() + " key", target: target, skipped: "relay unreachable"})
					continue
				}
				err := run(role, right.String()+" key", target, func(ctx context.Context) error {
					tok := sas.NewToken(sas.ResourceURI(ep.Namespace, k.hc), k.keyName, k.key, time.Now().Add(time.Minute))
					return c.Check(ctx, k.hc, tok, right)
				})
				if errors.Is(err, relayclient.ErrNotCheckable) {
					// Azure Relay cannot check a send key without a stream:
					// not a failure of this machine or this key.
					last := &rows[len(rows)-1]
					last.err, last.skipped = nil, "needs a stream to check"
				}
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

// healthz asks the relay's http port for /healthz. With anyAnswer, any
// HTTP answer will do: a relay that is not hybrid's (Azure Relay) has no
// /healthz, and the key rows tell whether it speaks the protocol.
func healthz(ctx context.Context, ep rules.RelayEndpoint, addr string, anyAnswer bool) error {
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
	if resp.StatusCode != http.StatusOK && !anyAnswer {
		return errors.New(resp.Status)
	}
	return nil
}

// tableWidth is what a diagnose row may take: a terminal, or a log viewer.
const tableWidth = 100

// printRows writes the table, each row at most tableWidth columns, then the
// full text of each error its row had to shorten; it returns how many
// probes failed and how many were skipped.
func printRows(w io.Writer, rows []probe) (failed, skipped int) {
	cells := [][]string{{"ROLE", "CHECK", "TARGET", "RESULT", "TIME"}}
	full := map[int]string{} // row -> the error text in full
	for i, r := range rows {
		res, took := "ok", r.took.Round(time.Millisecond).String()
		switch {
		case r.skipped != "":
			skipped++
			res, took = "skipped: "+r.skipped, "-"
		case r.err != nil:
			failed++
			res = "FAIL: " + oneLine(dialProblem(r.err, diagnoseTimeout).Error())
			full[i+1] = oneLine(r.err.Error())
		}
		cells = append(cells, []string{r.role, r.check, r.target, res, took})
	}
	width := make([]int, 5)
	for _, row := range cells {
		for c, s := range row {
			width[c] = max(width[c], utf8.RuneCountInString(s))
		}
	}
	// The target and the result share what the other columns leave; when
	// both do not fit, the result keeps two fifths of it, and at least
	// "skipped: relay unreachable" (a shortened error is printed in full
	// below the table).
	const gap = 2
	room := tableWidth - width[0] - width[1] - width[4] - 4*gap
	minResult := max(len("skipped: relay unreachable"), room*2/5)
	width[2] = min(width[2], max(room-width[3], room-minResult))
	width[3] = min(width[3], room-width[2])

	var notes []string
	for i, row := range cells {
		var b strings.Builder
		for c, s := range row {
			if c == 3 && utf8.RuneCountInString(s) > width[3] && full[i] != "" {
				notes = append(notes, full[i])
				s = fmt.Sprintf("%s [%d]", s, len(notes))
			}
			s = fit(s, width[c])
			b.WriteString(s)
			if c < len(row)-1 {
				b.WriteString(strings.Repeat(" ", width[c]-utf8.RuneCountInString(s)+gap))
			}
		}
		fmt.Fprintln(w, b.String())
	}
	for i, n := range notes {
		fmt.Fprintln(w)
		for _, l := range wrap(fmt.Sprintf("[%d] %s", i+1, n), tableWidth, "    ") {
			fmt.Fprintln(w, l)
		}
	}
	return failed, skipped
}

// oneLine joins the lines of s with "; ".
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }

// fit returns s cut to n characters, ending in "…" when cut; a trailing
// " [k]" note mark is kept.
func fit(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	mark := ""
	if i := strings.LastIndex(s, " ["); i > 0 && strings.HasSuffix(s, "]") {
		s, mark = s[:i], s[i:]
	}
	r := []rune(s)
	keep := max(n-utf8.RuneCountInString(mark)-1, 0)
	return string(r[:min(keep, len(r))]) + "…" + mark
}

// wrap breaks s into lines of at most width characters at spaces, indenting
// every line but the first; a word longer than a line stays whole.
func wrap(s string, width int, indent string) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(s) {
		switch {
		case line == "":
			line = word
		case utf8.RuneCountInString(line)+1+utf8.RuneCountInString(word) > width:
			lines = append(lines, line)
			line = indent + word
		default:
			line += " " + word
		}
	}
	return append(lines, line)
}
