package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/hybridconn/hybrid"
	"github.com/hybridconn/hybrid/agent"
	"github.com/hybridconn/hybrid/internal/admin"
	"github.com/hybridconn/hybrid/internal/events"
	"github.com/hybridconn/hybrid/internal/logging"
	"github.com/hybridconn/hybrid/internal/statuspage"
	"github.com/hybridconn/hybrid/proxy"
	"github.com/hybridconn/hybrid/relay"
	"github.com/hybridconn/hybrid/relay/fleet"
	"github.com/hybridconn/hybrid/rules"
)

const defaultConfigPath = "hybrid.yaml"

// loadConfig reads --config. When the flag was not given and ./hybrid.yaml
// does not exist, the embedded default (the repo's hybrid.yaml) is used.
func loadConfig(cmd *cobra.Command, sections ...string) (*rules.Config, error) {
	path, _ := cmd.Flags().GetString("config")
	if path == "" {
		path = defaultConfigPath
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return rules.ParseSections(rules.EmbeddedFile, hybrid.DefaultConfig, sections...)
		}
	}
	return rules.LoadSections(path, sections...)
}

// sectionsOf lists what a role command reads: its own section, or every
// section for "up".
func sectionsOf(section string) []string {
	if section == "" {
		return nil
	}
	return []string{section}
}

// role is one runnable section.
type role struct {
	name    string
	run     func(context.Context) error
	apply   func(*rules.Config) error // takes a reloaded configuration
	refresh func() error              // SIGHUP: re-read what lives outside the config (certificates); may be nil
}

// roleDoc is the help of one role command.
type roleDoc struct{ short, long, example string }

// reloadHelp ends every role's long help.
const reloadHelp = `

The file is watched while the role runs: a valid change applies at once, an
invalid one is logged (file:line: field: message) and changes nothing. SIGHUP
re-reads it now. SIGINT or SIGTERM stop the role cleanly: live streams get
10 s to finish (at the relay, relay.drain_grace: 10 min by default).`

// docOf returns the help of the role command use.
func docOf(use string) roleDoc {
	switch use {
	case "relay":
		return roleDoc{
			short: "Run the relay: the public rendezvous agents and proxies dial out to",
			long: `Run the relay: the public rendezvous. Agents and proxies both dial out to
it; it checks their SAS tokens, pairs each app's stream with a listening
agent, and then only moves bytes.

Config sections read: relay (listen addresses, tls, keys, connections) and
log. Other sections of the same file are ignored, so one file can serve
every role. TLS certificates are re-read on SIGHUP.` + reloadHelp,
			example: `  hybrid relay --config relay.yaml

  # relay.yaml
  relay:
    namespace: relay.example.com
    listen: { control: 0.0.0.0:5671, data: 0.0.0.0:9352, http: 0.0.0.0:443 }
    tls: { cert: relay.crt, key: relay.key }
    connections:
      - name: postgres
        keys:
          - { name: apps,   rights: [send],   primary: "${APPS_KEY}" }
          - { name: onprem, rights: [listen], primary: "${ONPREM_KEY}" }`,
		}
	case "agent":
		return roleDoc{
			short: "Run the agent: serve hybrid connections from on-premises",
			long: `Run the agent, on-premises: it dials out to every relay, listens for its
hybrid connections, and dials only the host:port each one publishes (and only
inside agent.allow, when set).

Config sections read: agent (relays, transport, allow, audit, admin,
proxy_url, connections) and log. Other sections of the same file are
ignored.

Without a config file, --relay and --publish (with --key-name and --key-file
or --key) run a one-off agent; they build the same agent section the YAML
would, checked the same way. --config and these flags exclude each other.` + reloadHelp,
			example: `  hybrid agent --config agent.yaml

  # agent.yaml
  agent:
    relays: [relay.example.com]
    allow: [127.0.0.1:5432]
    connections:
      - { name: postgres, endpoint: 127.0.0.1:5432, key_name: onprem, key_file: onprem.key }

  # the same without a file
  hybrid agent --relay relay.example.com --publish postgres=127.0.0.1:5432 \
      --key-name onprem --key-file onprem.key`,
		}
	case "proxy":
		return roleDoc{
			short: "Run the proxy: local ports beside the app",
			long: `Run the proxy, beside the app: each local listen address forwards to a hybrid
connection, so the app's connection string only changes its host (or, with
socks: or hosts:, not at all).

Config sections read: proxy (relay, transport, socks, socks_auth, hosts,
admin, proxy_url, connections) and log. Other sections of the same file are
ignored.

Without a config file, --relay and --forward (with --key-name and --key-file
or --key) run a one-off forward, as ssh -L does; they build the same proxy
section the YAML would, checked the same way. --config and these flags
exclude each other.` + reloadHelp,
			example: `  hybrid proxy --config proxy.yaml

  # proxy.yaml
  proxy:
    relay: relay.example.com
    connections:
      - { name: postgres, listen: 127.0.0.2:5432, key_name: apps, key_file: apps.key }

  # the same without a file
  hybrid proxy --relay relay.example.com --forward 127.0.0.2:5432=postgres \
      --key-name apps --key-file apps.key`,
		}
	default: // up
		return roleDoc{
			short: "Run every section present in the config in one process",
			long: `Run every section (relay, agent, proxy) present in the config in one
process: the demo and the tests' default. In production each role runs on its
own machine with "hybrid relay", "hybrid agent" and "hybrid proxy".

Config sections read: all of them (log, relay, agent, proxy). Without
--config and without ./hybrid.yaml, the built-in demo config runs: loopback
only, with public demo keys.` + reloadHelp,
			example: `  hybrid up                          # the built-in demo (make run)
  hybrid up --config hybrid.yaml`,
		}
	}
}

// roleCommand is "hybrid relay|agent|proxy|up".
func roleCommand(use string) *cobra.Command {
	section := use
	if use == "up" {
		section = ""
	}
	doc := docOf(use)
	var oneOff *oneOffFlags
	cmd := &cobra.Command{
		Use:     use,
		Short:   doc.short,
		Long:    doc.long,
		Example: doc.example,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := roleConfig(cmd, section, oneOff)
			if err != nil {
				return configErr(err)
			}
			log, err := logging.New(cmd.ErrOrStderr(), cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return configErr(fmt.Errorf("%s: log: %w", cfg.File, err))
			}
			if cfg.File == rules.EmbeddedFile {
				log.Warn(demoWarning)
			}
			for _, w := range cfg.Warnings {
				log.Warn(w.Error())
			}
			ad := admin.New()
			ad.SetPage(statuspage.New(ad))
			roles, err := buildRoles(cfg, section, log, ad)
			if err != nil {
				return err
			}
			return runRoles(cmd.Context(), cfg, sectionsOf(section), roles, log, ad)
		},
	}
	addConfigFlag(cmd)
	if use == "agent" || use == "proxy" {
		oneOff = addOneOffFlags(cmd, use)
	}
	return cmd
}

// demoWarning is logged when a role runs the embedded demo config.
const demoWarning = "no --config and no ./hybrid.yaml: running the built-in DEMO config, whose keys are " +
	"public (they are in the repository); it listens on loopback only. For anything but a local demo, " +
	"write a config (docs/configuration.md) and pass --config"

// roleConfig loads what a role command runs: --config (or the embedded
// demo), or the one-off flags of agent and proxy.
func roleConfig(cmd *cobra.Command, section string, oneOff *oneOffFlags) (*rules.Config, error) {
	if oneOff != nil && oneOff.given(cmd) {
		if cmd.Flags().Changed("config") {
			return nil, fmt.Errorf("--config and %s exclude each other: give a config file, or the flags alone", strings.Join(oneOff.names(cmd), ", "))
		}
		return oneOff.config()
	}
	cfg, err := loadConfig(cmd, sectionsOf(section)...)
	if err != nil {
		return nil, err
	}
	if cfg.File == rules.EmbeddedFile {
		if err := demoGuard(cfg); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// demoGuard refuses an embedded config that listens off loopback: its keys
// are public, so it must never be reachable from another machine (a build
// from an edited hybrid.yaml could otherwise expose it).
func demoGuard(cfg *rules.Config) error {
	type listen struct{ field, addr string }
	var ls []listen
	if r := cfg.Relay; r != nil {
		ls = append(ls, listen{"relay.listen.control", r.Listen.Control}, listen{"relay.listen.data", r.Listen.Data},
			listen{"relay.listen.http", r.Listen.HTTP})
	}
	if a := cfg.Agent; a != nil {
		ls = append(ls, listen{"agent.admin", a.Admin})
	}
	if p := cfg.Proxy; p != nil {
		ls = append(ls, listen{"proxy.socks", p.Socks}, listen{"proxy.admin", p.Admin})
		for i, c := range p.Connections {
			ls = append(ls, listen{fmt.Sprintf("proxy.connections[%d].listen", i), c.Listen})
		}
	}
	for _, l := range ls {
		if l.addr != "" && !loopbackAddr(l.addr) {
			return fmt.Errorf("%s:%d: %s: %q is not a loopback address: the built-in demo config has public keys "+
				"and only listens on loopback; pass --config with your own file and keys", cfg.File, cfg.Line(l.field), l.field, l.addr)
		}
	}
	return nil
}

// loopbackAddr reports whether the listen address host:port is on
// loopback only (an empty host means every interface).
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// buildRoles prepares the roles of section ("" = every section present).
// Each role publishes its metrics and status on ad; the admin endpoints of
// the agent and proxy sections (admin:) become roles of their own.
func buildRoles(cfg *rules.Config, section string, log hclog.Logger, ad *admin.Admin) ([]role, error) {
	var roles []role
	adminAddrs := map[string]bool{}
	missing := func(name string) error {
		return configErr(fmt.Errorf("%s: no %s section", cfg.File, name))
	}
	if section == "" || section == "relay" {
		if cfg.Relay != nil {
			s, err := relay.New(cfg.Relay, log.Named("relay"))
			if err != nil {
				return nil, configErr(err)
			}
			s.Register(ad)
			run := s.Run
			if cfg.Relay.Fleet != nil {
				f, err := fleet.New(cfg.Relay.Fleet, s.TLSConfig(), s, log.Named("fleet"))
				if err != nil {
					return nil, configErr(err)
				}
				s.SetFleet(f, f.Prefix())
				run = func(ctx context.Context) error { return runFleet(ctx, s, f) }
			}
			roles = append(roles, role{"relay", run, func(c *rules.Config) error { return s.Apply(c.Relay) }, s.ReloadCertificate})
		} else if section != "" {
			return nil, missing(section)
		}
	}
	if section == "" || section == "agent" {
		if cfg.Agent != nil {
			a, err := agent.New(cfg.Agent, log.Named("agent"))
			if err != nil {
				return nil, runtimeErr(err)
			}
			a.Register(ad)
			roles = append(roles, role{"agent", a.Run, func(c *rules.Config) error { return a.Apply(c.Agent) }, nil})
			if cfg.Agent.Admin != "" {
				adminAddrs[cfg.Agent.Admin] = true
			}
		} else if section != "" {
			return nil, missing(section)
		}
	}
	if section == "" || section == "proxy" {
		if cfg.Proxy != nil {
			p, err := proxy.New(cfg.Proxy, log.Named("proxy"))
			if err != nil {
				return nil, configErr(err)
			}
			p.Register(ad)
			roles = append(roles, role{"proxy", p.Run, func(c *rules.Config) error { return p.Apply(c.Proxy) }, nil})
			if cfg.Proxy.Admin != "" {
				adminAddrs[cfg.Proxy.Admin] = true
			}
		} else if section != "" {
			return nil, missing(section)
		}
	}
	if len(roles) == 0 {
		return nil, configErr(fmt.Errorf("%s: no relay, agent or proxy section", cfg.File))
	}
	for addr := range adminAddrs {
		roles = append(roles, role{name: "admin",
			run:   func(ctx context.Context) error { return admin.Serve(ctx, addr, ad.Handler(), log.Named("admin")) },
			apply: func(*rules.Config) error { return nil }, // a new admin address needs a restart
		})
	}
	return roles, nil
}

// runRoles runs roles until ctx is done or one fails; a failure stops the
// others. While they run, the config file is watched (and re-read on
// SIGHUP); each valid new version is applied to every role.
func runRoles(ctx context.Context, cfg *rules.Config, sections []string, roles []role, log *logging.Root, ad *admin.Admin) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if cfg.File != rules.EmbeddedFile && cfg.File != rules.FlagsFile {
		w := rules.NewWatcher(cfg.File, cfg, func(next *rules.Config) error {
			return applyAll(next, roles, log)
		}, rules.WatchOptions{Logger: log.Named("config"), Sections: sections, OnFailure: func(msg string) {
			ad.Events().Add(events.Event{Kind: events.ReloadError, Source: "config", Msg: msg})
		}})
		registerWatcher(ad, w)
		wg.Add(2)
		go func() {
			defer wg.Done()
			w.Run(ctx)
		}()
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		go func() {
			defer wg.Done()
			defer signal.Stop(hup)
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					log.Info("SIGHUP: reloading configuration", "file", cfg.File)
					w.Reload()
					for _, r := range roles {
						if r.refresh == nil {
							continue
						}
						if err := r.refresh(); err != nil {
							log.Error("SIGHUP: refresh failed; keeping what runs", "role", r.name, "error", err)
						}
					}
				}
			}
		}()
	}
	var mu sync.Mutex
	var errs []string
	var roleWG sync.WaitGroup
	for _, r := range roles {
		wg.Add(1)
		roleWG.Add(1)
		go func() {
			defer wg.Done()
			defer roleWG.Done()
			if err := r.run(ctx); err != nil {
				log.Error("role failed", "role", r.name, "error", err)
				mu.Lock()
				errs = append(errs, roleError(r.name, err).Error())
				mu.Unlock()
				cancel()
			}
		}()
	}
	go func() {
		// The watcher and the SIGHUP loop end with ctx: when every role has
		// returned, end them too.
		roleWG.Wait()
		cancel()
	}()
	wg.Wait()
	if len(errs) > 0 {
		return runtimeErr(errors.New(strings.Join(errs, "; ")))
	}
	return nil
}

// roleError prefixes err's text with the role's name, unless it starts with
// it already (the roles' own errors do: "proxy: listen for ...").
func roleError(name string, err error) error {
	if strings.HasPrefix(err.Error(), name+": ") {
		return err
	}
	return fmt.Errorf("%s: %w", name, err)
}

// applyAll hands a reloaded configuration to every role. A section that a
// running role needs may not disappear; the log settings apply first.
func applyAll(next *rules.Config, roles []role, log *logging.Root) error {
	for _, r := range roles {
		present, ok := map[string]bool{"relay": next.Relay != nil, "agent": next.Agent != nil, "proxy": next.Proxy != nil}[r.name]
		if ok && !present {
			return fmt.Errorf("%s: the %s section is gone: a running role keeps its last good configuration (restart to stop it)", next.File, r.name)
		}
	}
	if err := log.Set(next.Log.Level, next.Log.Format); err != nil {
		return err
	}
	for _, w := range next.Warnings {
		log.Warn(w.Error())
	}
	var errs []error
	for _, r := range roles {
		if err := r.apply(next); err != nil {
			errs = append(errs, roleError(r.name, err))
		}
	}
	return errors.Join(errs...)
}

// registerWatcher publishes reload counts and the last reload error.
func registerWatcher(ad *admin.Admin, w *rules.Watcher) {
	for result, f := range map[string]func(rules.WatchStats) int64{
		"success": func(s rules.WatchStats) int64 { return s.Succeeded },
		"failure": func(s rules.WatchStats) int64 { return s.Failed },
	} {
		ad.Counter("hybrid_config_reloads_total", "Config reloads by result; a failed one keeps the last good config.",
			map[string]string{"result": result}, func() float64 { return float64(f(w.Stats())) })
	}
	ad.AddStatus("config", func() any {
		st := w.Stats()
		return map[string]any{"file": w.Current().File, "reloads_succeeded": st.Succeeded, "reloads_failed": st.Failed,
			"last_error": st.LastError, "last_error_time": st.LastErrorTime, "last_success_time": st.LastSuccessTime}
	})
}

// runFleet runs a relay and its fleet membership together: the fleet
// starts first (peers and the directory) and stops once the relay has.
func runFleet(ctx context.Context, s *relay.Server, f *fleet.Fleet) error {
	fctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(fctx) }()
	err := s.Run(ctx)
	stop()
	if ferr := <-done; err == nil {
		err = ferr
	}
	return err
}
