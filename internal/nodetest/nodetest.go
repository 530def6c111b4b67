// Package nodetest installs Microsoft's Azure Relay npm clients (hyco-ws,
// hyco-https) for interop tests, once per machine, into a cache directory,
// and runs Node scripts against them. It is for tests only.
//
// Under CI=true a missing node or npm, or a failed install, fails the test
// (.ci/run installs nodejs and npm, and the npm registry is reachable in
// CI); elsewhere it skips. HYBRID_NPM_CACHE overrides the cache directory
// (default: the user cache directory's hybrid-interop).
package nodetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/testenv"
)

// Package is one of Microsoft's npm clients, with the dependencies it really
// needs: both list Node's core modules ("http": "latest", ...) as
// dependencies, which the registry does not have under those names, so they
// are unpacked by hand (npm pack) beside their real dependencies.
type Package struct {
	Name, Version string
	Deps          []string
}

// The clients the interop tests use: the only versions on the registry.
var (
	HycoWS    = Package{"hyco-ws", "1.0.5", []string{"ws@1.1.5", "moment@2"}}
	HycoHTTPS = Package{"hyco-https", "1.4.5", []string{"ws@6", "moment@2"}}
)

// installTimeout bounds one npm command (a cold cache downloads).
const installTimeout = 3 * time.Minute

func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	testenv.SkipOrFail(t, format, args...)
}

// Install makes p available and returns the node binary and the
// node_modules directory to put in NODE_PATH.
func Install(t testing.TB, p Package) (node, modules string) {
	t.Helper()
	if testing.Short() {
		unavailable(t, "interop tests install npm packages (not with -short)")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		unavailable(t, "node not installed")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		unavailable(t, "npm not installed")
	}
	root := os.Getenv("HYBRID_NPM_CACHE")
	if root == "" {
		c, err := os.UserCacheDir()
		if err != nil {
			c = os.TempDir()
		}
		root = filepath.Join(c, "hybrid-interop")
	}
	dir := filepath.Join(root, p.Name+"-"+p.Version)
	modules = filepath.Join(dir, "node_modules")
	if _, err := os.Stat(filepath.Join(dir, "READY")); err == nil {
		return node, modules
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		unavailable(t, "npm cache dir: %v", err)
	}
	// Built aside, then renamed into place: concurrent test binaries (the
	// relay's and the integration tests) may install at once; one wins,
	// the others use its copy.
	tmp, err := os.MkdirTemp(root, p.Name+"-tmp-")
	if err != nil {
		unavailable(t, "npm cache dir: %v", err)
	}
	defer os.RemoveAll(tmp)
	run := func(name string, args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = tmp
		cmd.Env = append(os.Environ(), "npm_config_update_notifier=false", "npm_config_fund=false", "npm_config_audit=false")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return nil
	}
	steps := [][]string{
		append([]string{npm, "install", "--no-save", "--no-package-lock", "--prefix", tmp}, p.Deps...),
		{npm, "pack", p.Name + "@" + p.Version, "--pack-destination", tmp},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			unavailable(t, "installing %s@%s: %v", p.Name, p.Version, err)
		}
	}
	mod := filepath.Join(tmp, "node_modules", p.Name)
	if err := os.MkdirAll(mod, 0o755); err != nil {
		unavailable(t, "%v", err)
	}
	if err := run("tar", "xzf", p.Name+"-"+p.Version+".tgz", "-C", mod, "--strip-components=1"); err != nil {
		unavailable(t, "unpacking %s: %v", p.Name, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "READY"), nil, 0o644); err != nil {
		unavailable(t, "%v", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(filepath.Join(dir, "READY")); serr != nil {
			// Not another installer's finished copy: a stale half one.
			os.RemoveAll(dir)
			if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, os.ErrExist) {
				unavailable(t, "npm cache dir: %v", err)
			}
		}
	}
	return node, modules
}

// Command returns a node command running script (a path) with args, its
// modules on NODE_PATH. ctx bounds it.
func Command(ctx context.Context, node, modules, script string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, node, append([]string{script}, args...)...)
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}
