package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hybridconn/hybrid/internal/buildinfo"
	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/rules"
)

func checkCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Validate a config file; print every problem as file:line: field: message",
		Long: `Validate a config file with exactly the parser and checks the roles use.
Every problem is printed on its own line as "file:line: field: message".
Exit 0 when the file is valid, 1 otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				var errs rules.Errors
				if errors.As(err, &errs) {
					for _, e := range errs {
						fmt.Fprintln(cmd.OutOrStdout(), e.Error())
					}
				} else {
					fmt.Fprintln(cmd.OutOrStdout(), err)
				}
				return &exitError{exitConfig, errors.New("")}
			}
			var sections []string
			if cfg.Relay != nil {
				sections = append(sections, fmt.Sprintf("relay with %d connections", len(cfg.Relay.Connections)))
			}
			if cfg.Agent != nil {
				sections = append(sections, fmt.Sprintf("agent with %d connections", len(cfg.Agent.Connections)))
			}
			if cfg.Proxy != nil {
				sections = append(sections, fmt.Sprintf("proxy with %d connections", len(cfg.Proxy.Connections)))
			}
			for _, w := range cfg.Warnings {
				fmt.Fprintln(cmd.OutOrStdout(), "warning: "+w.Error())
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%s)\n", cfg.File, strings.Join(sections, "; "))
			return nil
		},
	}
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
	var uri, keyName, key string
	var ttl time.Duration
	tok := &cobra.Command{
		Use:   "token",
		Short: "Print a SAS token (Azure Service Bus format)",
		Long: `Print a SAS token for a resource URI, signed with a key, in the format Azure's
SDKs use: SharedAccessSignature sr=...&sig=...&se=...&skn=...
A token for sb://<namespace>/ covers every hybrid connection of the
namespace; one for sb://<namespace>/<name> covers that connection only.`,
		Example: "  hybrid keys token --uri sb://relay.example.com/postgres --key-name apps --key \"$KEY\" --ttl 1h",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case uri == "":
				return configErr(errors.New("keys token: --uri is required"))
			case keyName == "":
				return configErr(errors.New("keys token: --key-name is required"))
			case key == "":
				return configErr(errors.New("keys token: --key is required"))
			case ttl <= 0:
				return configErr(errors.New("keys token: --ttl must be positive"))
			}
			fmt.Fprintln(cmd.OutOrStdout(), sas.NewToken(uri, keyName, key, time.Now().Add(ttl)))
			return nil
		},
	}
	tok.Flags().StringVar(&uri, "uri", "", "resource URI, e.g. sb://relay.example.com/postgres")
	tok.Flags().StringVar(&keyName, "key-name", "", "name of the key (rule) at the relay")
	tok.Flags().StringVar(&key, "key", "", "the key value (as configured: the string, not its decoding)")
	tok.Flags().DurationVar(&ttl, "ttl", time.Hour, "lifetime of the token")
	keys.AddCommand(tok)
	return keys
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
