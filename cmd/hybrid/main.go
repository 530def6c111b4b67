// Command hybrid is the one binary of hybrid: relay, agent and proxy, plus
// the tools around them. Run "hybrid --help".
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/hybridconn/hybrid/internal/buildinfo"
)

// Exit codes, part of the contract: scripts rely on them.
const (
	exitOK      = 0
	exitConfig  = 1 // bad configuration or usage
	exitRuntime = 2 // the role failed while running
)

// exitError carries an exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func configErr(err error) error  { return &exitError{exitConfig, err} }
func runtimeErr(err error) error { return &exitError{exitRuntime, err} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line args and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintln(stderr, "hybrid:", ee.err)
		}
		return ee.code
	}
	// Errors from cobra itself: unknown command or flag, bad arguments.
	fmt.Fprintln(stderr, "hybrid:", err)
	fmt.Fprintln(stderr, "Run 'hybrid --help' for usage.")
	return exitConfig
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "hybrid",
		Short: "Reach an on-premises TCP resource from a cloud app without opening an inbound port",
		Long: `hybrid connects a cloud app to one on-premises resource (PostgreSQL, MySQL,
SQL Server, an HTTP API) without opening any inbound port and without changing
the app's connection string.

  relay   the public rendezvous; agents and proxies both dial out to it
  agent   on-premises; serves named hybrid connections, dials only what it publishes
  proxy   beside the app; maps local ports to hybrid connections

One YAML file may hold every section (see docs/configuration.md); each role
reads only its own. Exit codes: 0 ok, 1 bad config or usage, 2 runtime failure.`,
		Version:       buildinfo.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// --version prints what `hybrid version` prints.
	root.SetVersionTemplate(buildinfo.String() + "\n")
	root.PersistentFlags().StringP("config", "c", defaultConfigPath,
		"config file (default ./hybrid.yaml; without it, the built-in demo config)")
	root.AddCommand(
		roleCommand("relay", "Run the relay: the public rendezvous", "relay"),
		roleCommand("agent", "Run the agent: serve hybrid connections from on-premises", "agent"),
		roleCommand("proxy", "Run the proxy: local ports beside the app", "proxy"),
		roleCommand("up", "Run every section present in the config in one process", ""),
		checkCommand(),
		keysCommand(),
		diagnoseCommand(),
		statusCommand(),
		versionCommand(),
	)
	return root
}
