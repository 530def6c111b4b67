// Package integration holds the end-to-end tests of hybrid: they run the real
// built binary as separate processes against real servers (a throwaway
// PostgreSQL, byte sinks and sources) over loopback.
//
// This file and the other harness*_test.go / pg_test.go files are the harness:
//
//   - hybridBinary(t) builds ./cmd/hybrid once per test run (lazily, so tests
//     that don't need it, such as the harness's own, run without it) and
//     returns its path; hybridBin holds the same path once built.
//   - freePort, freeAddr, waitTCP: loopback ports and readiness polling.
//   - startProc / runCmd (harness_proc_test.go): child processes with captured
//     output, log files, WaitLog, graceful Stop and guaranteed cleanup.
//   - startPostgres, psql, pgbench (pg_test.go): a throwaway PostgreSQL.
//   - startSinkSource, uploadAndHash, downloadAndHash, echoAndHash
//     (harness_sinksource_test.go): a byte-stream resource for transfer tests.
//
// Nothing here synchronises by sleeping: every wait polls a condition against
// a generous deadline and fails with the evidence (output, last error).
//
// Environment knobs:
//
//	HYBRID_BIN          use this prebuilt binary instead of building ./cmd/hybrid
//	HYBRID_BUILDFLAGS   extra `go build` flags, split on spaces (e.g. "-race")
//	CI                  when set, missing PostgreSQL binaries fail instead of skip
package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	// hybridBin is the path of the built hybrid binary. It is empty until
	// hybridBinary has been called successfully; prefer calling hybridBinary(t).
	hybridBin string

	// binDir is the per-run temporary directory that TestMain creates and
	// removes; the binary is built into it.
	binDir string

	buildOnce sync.Once
	buildErr  error
)

// buildTimeout bounds the one `go build` of the run (a cold module cache may
// need to download dependencies through the module proxy).
const buildTimeout = 10 * time.Minute

// TestMain owns the per-run temporary directory the binary is built into and
// removes it when the tests are done. The build itself happens at most once,
// on first use, in hybridBinary.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hybrid-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: creating temp dir:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, "integration: removing temp dir:", err)
	}
	os.Exit(code)
}

// moduleRoot is the directory holding go.mod: the parent of this package.
func moduleRoot() (string, error) {
	root, err := filepath.Abs("..")
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("module root %s: %w", root, err)
	}
	return root, nil
}

// hybridBinary returns the path of the hybrid binary, building it on first use
// with `go build -o <tmpdir>/hybrid ./cmd/hybrid` from the module root. A
// failed build fails every test that asks for the binary, printing the
// compiler's output. HYBRID_BIN overrides the build with a prebuilt binary.
func hybridBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() { hybridBin, buildErr = buildHybrid() })
	if buildErr != nil {
		t.Fatalf("hybrid binary unavailable: %v", buildErr)
	}
	return hybridBin
}

func buildHybrid() (string, error) {
	if p := os.Getenv("HYBRID_BIN"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		if fi, err := os.Stat(abs); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("HYBRID_BIN=%s is not an executable file (%v)", p, err)
		}
		return abs, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir := binDir
	if dir == "" { // not run through TestMain (should not happen)
		return "", errors.New("binDir unset: TestMain did not run")
	}
	out := filepath.Join(dir, "hybrid")
	goTool := "go"
	if _, err := exec.LookPath(goTool); err != nil {
		// `go test` puts GOROOT/bin first on PATH; this is a last resort.
		goTool = "/usr/local/go/bin/go"
	}
	args := []string{"build", "-o", out}
	args = append(args, strings.Fields(os.Getenv("HYBRID_BUILDFLAGS"))...)
	args = append(args, "./cmd/hybrid")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = root
	start := time.Now()
	b, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s (in %s): %v\n%s", goTool, strings.Join(args, " "), root, err, b)
	}
	fmt.Fprintf(os.Stderr, "integration: built %s in %v\n", out, time.Since(start).Round(time.Millisecond))
	return out, nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago (the
// kernel picked it for a listener that was then closed). Another process may
// still grab it before the caller binds it; the kernel hands out ephemeral
// ports round-robin, so that is rare.
func freePort(t testing.TB) int {
	t.Helper()
	addr := freeAddr(t, "127.0.0.1")
	_, p, _ := net.SplitHostPort(addr)
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("freePort: %v", err)
	}
	return port
}

// freeAddr returns "host:port" with a port that was free on host a moment ago.
// host may be any local address, e.g. "127.0.0.2" (all of 127/8 is loopback
// on Linux) or "::1".
func freeAddr(t testing.TB, host string) string {
	t.Helper()
	for {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatalf("freeAddr(%q): %v", host, err)
		}
		addr := l.Addr().String()
		if err := l.Close(); err != nil {
			t.Fatalf("freeAddr(%q): close: %v", host, err)
		}
		// The kernel may hand the same free port out twice in a row: a
		// port given out in this run is not given again (two listeners of
		// one config would conflict).
		_, port, _ := net.SplitHostPort(addr)
		givenMu.Lock()
		seen := given[port]
		given[port] = true
		givenMu.Unlock()
		if !seen {
			return addr
		}
	}
}

var (
	givenMu sync.Mutex
	given   = map[string]bool{} // ports freeAddr returned in this run
)

// pollInterval is how often the wait helpers re-check their condition.
const pollInterval = 25 * time.Millisecond

// waitTCP polls until a TCP connection to addr succeeds (and closes it), or
// fails the test after timeout with the last dial error.
func waitTCP(t testing.TB, addr string, timeout time.Duration) {
	t.Helper()
	if err := waitTCPErr(addr, timeout); err != nil {
		t.Fatal(err)
	}
}

func waitTCPErr(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waitTCP %s: not reachable after %v: %v", addr, timeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// waitFor polls cond until it returns true or fails the test after timeout,
// describing what it waited for with what.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(pollInterval)
	}
}

// writeFile writes content to dir/name (mode 0600, since configs hold keys)
// and returns the path.
func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatalf("writeFile: %v", err)
	}
	return p
}
