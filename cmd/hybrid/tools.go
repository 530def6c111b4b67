package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hybridconn/hybrid/internal/buildinfo"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/rules"
)

func checkCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Validate a config file; print every problem as file:line: field: message",
		Long: `Validate a config file with exactly the parser and checks the roles use.
Every problem is printed on stderr, on its own line, as
"file:line: field: message" (a YAML syntax error as "file:line:column:
message"); warnings too, as "warning: ...". When the file is valid, one
summary line goes to stdout. Exit 0 when the file is valid, 1 otherwise.

Config sections read: all of them (log, relay, agent, proxy).`,
		Example: "  hybrid check --config hybrid.yaml\n  hybrid check -c /etc/hybrid/agent.yaml && systemctl reload hybrid-agent",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				var errs rules.Errors
				if errors.As(err, &errs) {
					for _, e := range errs {
						fmt.Fprintln(cmd.ErrOrStderr(), e.Error())
					}
				} else {
					fmt.Fprintln(cmd.ErrOrStderr(), err)
				}
				return &exitError{exitConfig, errors.New("")}
			}
			var sections []string
			if cfg.Relay != nil {
				sections = append(sections, "relay with "+plural(len(cfg.Relay.Connections), "connection"))
			}
			if cfg.Agent != nil {
				sections = append(sections, "agent with "+plural(len(cfg.Agent.Connections), "connection"))
			}
			if cfg.Proxy != nil {
				sections = append(sections, "proxy with "+plural(len(cfg.Proxy.Connections), "connection"))
			}
			for _, w := range cfg.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning: "+w.Error())
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%s)\n", cfg.File, strings.Join(sections, "; "))
			return nil
		},
	}
	addConfigFlag(cmd)
	return cmd
}

// plural returns "1 connection", "2 connections": n and noun, with an s
// unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

func keysCommand() *cobra.Command {
	keys := &cobra.Command{
		Use:   "keys",
		Short: "Make keys and SAS tokens",
	}
	keys.AddCommand(&cobra.Command{
		Use:   "new",
		Short: "Print a fresh random 256-bit key (base64)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var b [32]byte
			if _, err := rand.Read(b[:]); err != nil {
				return runtimeErr(err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(b[:]))
			return nil
		},
	})
	keys.AddCommand(tokenCommand(), keysRotateCommand(), keysRevokeCommand())
	return keys
}

// tokenCommand is "hybrid keys token".
func tokenCommand() *cobra.Command {
	var uri, keyName, key, keyFile string
	ttl := ttlValue(time.Hour)
	tok := &cobra.Command{
		Use:   "token",
		Short: "Print a SAS token (Azure Service Bus format) for clients other than hybrid's own",
		Long: `Print a SAS token for a resource URI, signed with a key, in the format Azure's
SDKs use: SharedAccessSignature sr=...&sig=...&se=...&skn=...
A token for sb://<namespace>/ covers every hybrid connection of the
namespace; one for sb://<namespace>/<name> covers that connection only.

Who uses one: hybrid's own agent and proxy mint their tokens from the key in
their config and never need this command. It is for other clients of a hybrid
relay (or of Azure Relay): Microsoft's Azure Relay clients (the hyco-ws npm
package, the .NET Microsoft.Azure.Relay SDK, azbridge) send it in the
ServiceBusAuthorization header, or the sb-hc-token query parameter, of their
WebSocket request to the relay's http port; and for trying a relay by hand.

The key: --key-file FILE, or --key - to read it from stdin. --key VALUE
works too, but shows the key to every user of the machine (ps).
--ttl takes days (1d, 30d, 1d12h) and Go durations (90m, 12h).`,
		Example: `  hybrid keys token --uri sb://relay.example.com/postgres --key-name apps --key-file apps.key --ttl 1h
  echo "$APPS_KEY" | hybrid keys token --uri sb://relay.example.com/ --key-name apps --key - --ttl 7d`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var problems []string
			if uri == "" {
				problems = append(problems, "--uri is required")
			} else if err := checkResourceURI(uri); err != nil {
				problems = append(problems, err.Error())
			}
			if keyName == "" {
				problems = append(problems, "--key-name is required")
			}
			if (key == "") == (keyFile == "") {
				problems = append(problems, "give one of --key-file and --key (--key - reads stdin)")
			}
			if len(problems) > 0 {
				return configErr(fmt.Errorf("keys token: %s", strings.Join(problems, "; ")))
			}
			k, err := readKey(cmd.InOrStdin(), key, keyFile)
			if err != nil {
				return configErr(fmt.Errorf("keys token: %w", err))
			}
			fmt.Fprintln(cmd.OutOrStdout(), sas.NewToken(uri, keyName, k, time.Now().Add(time.Duration(ttl))))
			return nil
		},
	}
	f := tok.Flags()
	f.StringVar(&uri, "uri", "", "resource URI: sb://<namespace>/<connection> (or http, https, ws, wss), or sb://<namespace>/ for all")
	f.StringVar(&keyName, "key-name", "", "name of the key (rule) at the relay")
	f.StringVar(&keyFile, "key-file", "", "file holding the key value (as configured: the string, not its decoding)")
	f.StringVar(&key, "key", "", `the key value, or "-" to read it from stdin (a value here is visible in ps)`)
	f.Var(&ttl, "ttl", "lifetime of the token: 1d, 12h, 90m (default 1h)")
	return tok
}

// maxKeyInput bounds a key read from stdin, as rules bounds a key file.
const maxKeyInput = 64 << 10

// readKey returns the key from --key (a value, or "-" for stdin) or
// --key-file, without trailing white space.
func readKey(stdin io.Reader, key, keyFile string) (string, error) {
	switch {
	case keyFile != "":
		return rules.ReadKeyFile(keyFile)
	case key == "-":
		b, err := io.ReadAll(io.LimitReader(stdin, maxKeyInput+1))
		if err != nil {
			return "", fmt.Errorf("read the key from stdin: %w", err)
		}
		if len(b) > maxKeyInput {
			return "", fmt.Errorf("the key on stdin is over %d bytes", maxKeyInput)
		}
		k := strings.TrimRight(string(b), " \t\r\n")
		if k == "" {
			return "", errors.New("no key on stdin")
		}
		return k, nil
	}
	return key, nil
}

// checkResourceURI checks a token's resource URI as the relay will read it:
// scheme sb, http, https, ws or wss, a host, no user, query or fragment.
func checkResourceURI(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("--uri %q: %w", s, err)
	}
	switch {
	case u.Scheme == "":
		return fmt.Errorf("--uri %q: want sb://<namespace>/<connection>, as in sb://relay.example.com/postgres", s)
	case !slices.Contains([]string{"sb", "http", "https", "ws", "wss"}, u.Scheme):
		return fmt.Errorf("--uri %q: scheme %q: want sb, http, https, ws or wss", s, u.Scheme)
	case u.Opaque != "" || u.Hostname() == "":
		return fmt.Errorf("--uri %q: no host: want sb://<namespace>/<connection>", s)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("--uri %q: want no user, query or fragment", s)
	}
	return nil
}

// ttlValue is a token lifetime flag: a Go duration, or days ("1d", "1d12h").
type ttlValue time.Duration

// maxTTLDays bounds --ttl: far beyond any sane token, far below overflow.
const maxTTLDays = 36500

func (v *ttlValue) String() string { return time.Duration(*v).String() }

// Type names the value in help.
func (v *ttlValue) Type() string { return "duration" }

// Set parses "12h", "90m", "1d", "30d", "1d12h".
func (v *ttlValue) Set(s string) error {
	d, err := parseTTL(s)
	if err != nil {
		return err
	}
	*v = ttlValue(d)
	return nil
}

// parseTTL parses a positive Go duration, optionally preceded by whole days
// ("7d", "1d12h").
func parseTTL(s string) (time.Duration, error) {
	bad := fmt.Errorf("%q: want a duration such as 1d, 12h or 90m", s)
	var d time.Duration
	rest := s
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		days, err := strconv.Atoi(s[:i])
		if err != nil || days < 0 || s[:i] != strconv.Itoa(days) {
			return 0, bad
		}
		if days > maxTTLDays {
			return 0, fmt.Errorf("%q: more than %d days", s, maxTTLDays)
		}
		d, rest = time.Duration(days)*24*time.Hour, s[i+1:]
	}
	if rest != "" {
		x, err := time.ParseDuration(rest)
		if err != nil {
			return 0, bad
		}
		d += x
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q: must be positive", s)
	}
	return d, nil
}

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version, commit and Go version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), buildinfo.String())
		},
	}
}
