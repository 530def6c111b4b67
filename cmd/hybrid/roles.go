package main

import (
	"context"
	"errors"
	"fmt"
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
	"github.com/hybridconn/hybrid/internal/logging"
	"github.com/hybridconn/hybrid/proxy"
	"github.com/hybridconn/hybrid/relay"
	"github.com/hybridconn/hybrid/rules"
)

const defaultConfigPath = "hybrid.yaml"

// loadConfig reads --config. When the flag was not given and ./hybrid.yaml
// does not exist, the embedded default (the repo's hybrid.yaml) is used.
func loadConfig(cmd *cobra.Command, sections ...string) (*rules.Config, error) {
	path, _ := cmd.Flags().GetString("config")
	if !cmd.Flags().Changed("config") {
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

func roleCommand(use, short, section string) *cobra.Command {
	long := short + "."
	if section == "" {
		long = `Run every section (relay, agent, proxy) present in the config in one
process: the demo and the tests' default. In production each role runs on its
own machine with "hybrid relay", "hybrid agent" and "hybrid proxy".`
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, sectionsOf(section)...)
			if err != nil {
				return configErr(err)
			}
			log, err := logging.New(cmd.ErrOrStderr(), cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return configErr(fmt.Errorf("%s: log: %w", cfg.File, err))
			}
			for _, w := range cfg.Warnings {
				log.Warn(w.Error())
			}
			ad := admin.New()
			roles, err := buildRoles(cfg, section, log, ad)
			if err != nil {
				return err
			}
			return runRoles(cmd.Context(), cfg, sectionsOf(section), roles, log, ad)
		},
	}
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
			roles = append(roles, role{"relay", s.Run, func(c *rules.Config) error { return s.Apply(c.Relay) }, s.ReloadCertificate})
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
	if cfg.File != rules.EmbeddedFile {
		w := rules.NewWatcher(cfg.File, cfg, func(next *rules.Config) error {
			return applyAll(next, roles, log)
		}, rules.WatchOptions{Logger: log.Named("config"), Sections: sections})
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
				errs = append(errs, r.name+": "+err.Error())
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
			errs = append(errs, fmt.Errorf("%s: %w", r.name, err))
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
