package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/hybridconn/hybrid"
	"github.com/hybridconn/hybrid/agent"
	"github.com/hybridconn/hybrid/internal/logging"
	"github.com/hybridconn/hybrid/proxy"
	"github.com/hybridconn/hybrid/relay"
	"github.com/hybridconn/hybrid/rules"
)

const defaultConfigPath = "hybrid.yaml"

// loadConfig reads --config. When the flag was not given and ./hybrid.yaml
// does not exist, the embedded default (the repo's hybrid.yaml) is used.
func loadConfig(cmd *cobra.Command) (*rules.Config, error) {
	path, _ := cmd.Flags().GetString("config")
	if !cmd.Flags().Changed("config") {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return rules.Parse(rules.EmbeddedFile, hybrid.DefaultConfig)
		}
	}
	return rules.Load(path)
}

// role is one runnable section.
type role struct {
	name string
	run  func(context.Context) error
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
			cfg, err := loadConfig(cmd)
			if err != nil {
				return configErr(err)
			}
			log, err := logging.New(cmd.ErrOrStderr(), cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return configErr(fmt.Errorf("%s: log: %w", cfg.File, err))
			}
			roles, err := buildRoles(cfg, section, log)
			if err != nil {
				return err
			}
			return runRoles(cmd.Context(), roles, log)
		},
	}
}

// buildRoles prepares the roles of section ("" = every section present).
func buildRoles(cfg *rules.Config, section string, log hclog.Logger) ([]role, error) {
	var roles []role
	missing := func(name string) error {
		return configErr(fmt.Errorf("%s: no %s section", cfg.File, name))
	}
	if section == "" || section == "relay" {
		if cfg.Relay != nil {
			s, err := relay.New(cfg.Relay, log.Named("relay"))
			if err != nil {
				return nil, configErr(err)
			}
			roles = append(roles, role{"relay", s.Run})
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
			roles = append(roles, role{"agent", a.Run})
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
			roles = append(roles, role{"proxy", p.Run})
		} else if section != "" {
			return nil, missing(section)
		}
	}
	if len(roles) == 0 {
		return nil, configErr(fmt.Errorf("%s: no relay, agent or proxy section", cfg.File))
	}
	return roles, nil
}

// runRoles runs roles until ctx is done or one fails; a failure stops the others.
func runRoles(ctx context.Context, roles []role, log hclog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []string
	for _, r := range roles {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.run(ctx); err != nil {
				log.Error("role failed", "role", r.name, "error", err)
				mu.Lock()
				errs = append(errs, r.name+": "+err.Error())
				mu.Unlock()
				cancel()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return runtimeErr(errors.New(strings.Join(errs, "; ")))
	}
	return nil
}
