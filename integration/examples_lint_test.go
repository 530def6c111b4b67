package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// earlyExit matches a pipeline stage that may stop reading before its input
// ends: head, grep -q / -m, sed -n Nq. Under `set -o pipefail` (every
// example's first line) the stage before it then dies of SIGPIPE whenever
// it had more to write, and the script fails at random (examples/mysql did,
// about half its runs).
var earlyExit = regexp.MustCompile(`\|\s*(head\b|grep\s+(-\w*[qm]|--quiet|--max-count)|sed\s+[^|]*\dq\b)`)

// TestExamplesNoSIGPIPE checks every shell script under examples/ for a
// pipe into a stage that exits early. Write `grep -m 2 PATTERN FILE`, or
// let the last stage read everything (`| grep PATTERN >/dev/null`).
func TestExamplesNoSIGPIPE(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	scripts, err := filepath.Glob(filepath.Join(root, "examples", "*.sh"))
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob(filepath.Join(root, "examples", "*", "*.sh"))
	scripts = append(scripts, more...)
	if len(scripts) < 5 {
		t.Fatalf("found only %d example scripts: %v", len(scripts), scripts)
	}
	for _, s := range scripts {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if code, _, _ := strings.Cut(line, " #"); !strings.HasPrefix(strings.TrimSpace(line), "#") && earlyExit.MatchString(code) {
				rel, _ := filepath.Rel(root, s)
				t.Errorf("%s:%d: a pipe into a stage that exits early fails under pipefail (SIGPIPE): %s", rel, i+1, strings.TrimSpace(line))
			}
		}
	}
}

func TestEarlyExitPattern(t *testing.T) {
	for line, want := range map[string]bool{
		`grep x f | head -n 2`:                true,
		`ss -H | grep -qF "$h" || return 1`:   true,
		`ps | grep -m1 x`:                     true,
		`cat f | sed -n 1q`:                   true,
		`grep -m 2 x f`:                       false,
		`ss -H | grep -F "$h" >/dev/null`:     false,
		`curl --version | sed -n 1p`:          false,
		`grep x f | tail -n 1`:                false,
		`keys new | tr -dc 'A-Za-z0-9'`:       false,
		`echo "$(head -n 1 "$tmp/curl.err")"`: false,
	} {
		if got := earlyExit.MatchString(line); got != want {
			t.Errorf("%q: match %v, want %v", line, got, want)
		}
	}
}
