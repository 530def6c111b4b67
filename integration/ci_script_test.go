package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCIScript guards what .ci/run must keep doing: every apt-get waits for
// the dpkg lock (through the APT array) and is retried; node and npm are
// installed when missing (the hyco-ws interop test needs them, and under CI
// it fails rather than skips); make bench BENCH=tiny and make examples run
// after make test.
func TestCIScript(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	script := string(b)
	var code []string // the lines that are not comments
	for _, l := range strings.Split(script, "\n") {
		if s := strings.TrimSpace(l); s != "" && !strings.HasPrefix(s, "#") {
			code = append(code, l)
		}
	}
	if !regexp.MustCompile(`(?m)^APT=\(apt-get -o DPkg::Lock::Timeout=\d+\)$`).MatchString(script) {
		t.Errorf(".ci/run: no APT=(apt-get -o DPkg::Lock::Timeout=N) array")
	}
	apt := 0
	for _, l := range code {
		switch {
		case strings.HasPrefix(strings.TrimSpace(l), "APT=("):
		case strings.Contains(l, "apt-get"):
			t.Errorf(".ci/run: apt-get without the lock timeout (use \"${APT[@]}\"): %s", strings.TrimSpace(l))
		case strings.Contains(l, `"${APT[@]}"`):
			apt++
			if !strings.HasPrefix(strings.TrimSpace(l), "retry ") {
				t.Errorf(".ci/run: apt without retry: %s", strings.TrimSpace(l))
			}
		}
	}
	if apt < 2 {
		t.Errorf(".ci/run: %d apt commands through APT, want update and install", apt)
	}
	for _, want := range []string{"packages+=(nodejs npm)", "make test\n", "make examples"} {
		if !strings.Contains(script, want) {
			t.Errorf(".ci/run lacks %q", want)
		}
	}
	if strings.Index(script, "\nmake examples") < strings.Index(script, "\nmake test") {
		t.Errorf(".ci/run: make examples must run after make test")
	}
	// make bench on its tiny setting, so that the benchmark cannot rot.
	if i := strings.Index(script, "\nmake bench BENCH=tiny\n"); i < 0 || i < strings.Index(script, "\nmake test") {
		t.Errorf(".ci/run: make bench BENCH=tiny must run after make test")
	}
}
