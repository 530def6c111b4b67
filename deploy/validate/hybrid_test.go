package validate

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	sigsyaml "sigs.k8s.io/yaml"
)

// hybridBin is the hybrid binary the tests run `hybrid check` with:
// $HYBRID_BIN (make deploy-check passes bin/hybrid), or one built from the
// main module at ../.. by TestMain.
var hybridBin string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	hybridBin = os.Getenv("HYBRID_BIN")
	if hybridBin == "" {
		dir, err := os.MkdirTemp("", "hybrid-validate-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		defer os.RemoveAll(dir)
		hybridBin = filepath.Join(dir, "hybrid")
		goTool := os.Getenv("GO")
		if goTool == "" {
			goTool = "go"
		}
		cmd := exec.Command(goTool, "build", "-o", hybridBin, "./cmd/hybrid")
		cmd.Dir = filepath.Join("..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building hybrid from ../..: %v\n%s", err, out)
			return 2
		}
	}
	return m.Run()
}

// skipOrFail is internal/testenv.SkipOrFail of the main module, whose
// internal packages this module does not import (it depends on nothing of
// the main module, so that module's go.mod can change freely): a missing
// prerequisite skips the test on a developer's machine and fails it under
// CI=true.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	switch os.Getenv("CI") {
	case "", "0", "false":
		t.Skip(msg)
	}
	t.Fatalf("%s (CI is set, so this fails rather than skips; .ci/run installs what the tests need)", msg)
}

// pending names what these manifests need from hybrid's config that it
// does not do yet, field by field: `hybrid check` errors on exactly these
// fields are logged, not failed, and a pending entry that no longer fails
// anywhere fails the test, so that it is removed the day hybrid does it.
var pending = map[string]string{}

// pendingSeen records which pending fields some check ran into.
var pendingSeen = map[string]bool{}

// checkResult is what `hybrid check` said about one config.
type checkResult struct {
	summary  string   // stdout's one line when ok
	warnings []string // "warning: ..." lines
	errors   []string // file:line: field: message lines (and any other line)
}

// hybridCheck runs `hybrid check --config file` with exactly env (a role's
// environment as its container or unit would give it) and fails t on every
// error, but those on pending fields.
func hybridCheck(t *testing.T, file string, env []string) checkResult {
	t.Helper()
	cmd := exec.Command(hybridBin, "check", "--config", file)
	cmd.Env = append([]string{}, env...) // never nil: nil would pass on the test's own environment
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("hybrid check: %v", err)
	}
	var r checkResult
	r.summary = strings.TrimSpace(stdout.String())
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		switch {
		case line == "":
		case strings.HasPrefix(line, "warning: "):
			r.warnings = append(r.warnings, line)
		default:
			r.errors = append(r.errors, line)
		}
	}
	for _, w := range r.warnings {
		t.Logf("hybrid check: %s", w)
	}
	if err == nil {
		return r
	}
	if ee.ExitCode() != 1 || len(r.errors) == 0 {
		t.Fatalf("hybrid check exited %d (want 0, or 1 with errors)\nstdout: %s\nstderr: %s", ee.ExitCode(), stdout.String(), stderr.String())
	}
	var real []string
	for _, e := range r.errors {
		if f := errorField(e); pending[f] != "" {
			pendingSeen[f] = true
			t.Logf("PENDING (hybrid does not do this yet; see pending in hybrid_test.go): %s\n\t%s", e, pending[f])
			continue
		}
		real = append(real, e)
	}
	if len(real) > 0 {
		t.Errorf("hybrid check --config %s:\n\t%s", file, strings.Join(real, "\n\t"))
	}
	return r
}

// errorLine is hybrid check's "file:line: field: message".
var errorLine = regexp.MustCompile(`^.*?:\d+: ([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*): `)

func errorField(line string) string {
	if m := errorLine.FindStringSubmatch(line); m != nil {
		return m[1]
	}
	return ""
}

// checkPendingUsed fails t for each pending entry no check ran into.
func checkPendingUsed(t *testing.T) {
	var stale []string
	for f := range pending {
		if !pendingSeen[f] {
			stale = append(stale, f)
		}
	}
	sort.Strings(stale)
	for _, f := range stale {
		t.Errorf("pending %q: no config fails hybrid check on it any more; remove it from pending in hybrid_test.go", f)
	}
}

// hybridConfig is the part of a hybrid config file the cross-checks read:
// a generic tree (the strict schema is hybrid check's business).
type hybridConfig map[string]any

func parseHybridConfig(data []byte) (hybridConfig, error) {
	var c hybridConfig
	if err := sigsyaml.Unmarshal(data, &c); err != nil {
		return nil, err
	}
	return c, nil
}

// get walks dotted keys ("relay.listen.control", "proxy.connections.0.listen")
// and returns the value.
func (c hybridConfig) get(path string) (any, bool) {
	var cur any = map[string]any(c)
	for _, k := range strings.Split(path, ".") {
		switch v := cur.(type) {
		case map[string]any:
			var ok bool
			if cur, ok = v[k]; !ok {
				return nil, false
			}
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(v) {
				return nil, false
			}
			cur = v[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

func (c hybridConfig) str(path string) string {
	v, _ := c.get(path)
	s, _ := v.(string)
	return s
}

// files returns every file path the config names (*_file values, tls
// cert/key/ca), each with the dotted field that names it.
func (c hybridConfig) files() map[string]string {
	out := map[string]string{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				p := strings.TrimPrefix(path+"."+k, ".")
				if s, ok := x.(string); ok && (strings.HasSuffix(k, "_file") ||
					strings.HasSuffix(path, ".tls") && (k == "cert" || k == "key" || k == "ca")) {
					out[p] = s
					continue
				}
				walk(p, x)
			}
		case []any:
			for i, x := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), x)
			}
		}
	}
	walk("", map[string]any(c))
	return out
}

// port returns the port of a host:port listen address.
func port(addr string) (int, error) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return 0, fmt.Errorf("%q: no port", addr)
	}
	var p int
	if _, err := fmt.Sscanf(addr[i+1:], "%d", &p); err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("%q: bad port", addr)
	}
	return p, nil
}
