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
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes the command line args and returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetIn(stdin)
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

// addConfigFlag gives cmd the --config flag; only commands that read a
// config have it. Its default is empty so that help does not print one twice:
// loadConfig turns "" into ./hybrid.yaml.
func addConfigFlag(cmd *cobra.Command) {
	cmd.Flags().StringP("config", "c", "", "config file (default ./hybrid.yaml; without it, the built-in demo config)")
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
		Example: `  hybrid up                                  # the demo: relay, agent and proxy on loopback
  hybrid check --config hybrid.yaml          # validate a config
  hybrid relay --config relay.yaml           # one role per machine in production
  hybrid proxy --relay relay.example.com --forward 127.0.0.2:5432=postgres \
      --key-name apps --key-file apps.key    # a one-off forward, no config file
  hybrid completion bash > /etc/bash_completion.d/hybrid`,
		Version:       buildinfo.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// --version prints what `hybrid version` prints.
	root.SetVersionTemplate(buildinfo.String() + "\n")
	root.AddCommand(
		roleCommand("relay"),
		roleCommand("agent"),
		roleCommand("proxy"),
		roleCommand("up"),
		checkCommand(),
		keysCommand(),
		diagnoseCommand(),
		statusCommand(),
		versionCommand(),
	)
	return root
}
