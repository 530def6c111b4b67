// Command testsum runs go test -json and prints what a person needs: each
// package's result line, the full output of every failed test, one line per
// skipped test with its reason, and a summary line:
//
//	go run ./internal/tools/testsum -race -count=1 ./...
//	...
//	testsum: 812 passed, 0 failed, 0 skipped (tests and subtests); 24 packages ok, 0 failed; 3m12s
//
// Its arguments go to go test (the go command is $GO, default go). The exit
// status is go test's, and 1 when CI is set (CI=true) and any test skipped:
// CI must never skip silently.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/hybridconn/hybrid/internal/testenv"
)

func main() {
	goTool := os.Getenv("GO")
	if goTool == "" {
		goTool = "go"
	}
	start := time.Now()
	cmd := exec.Command(goTool, append([]string{"test", "-json"}, os.Args[1:]...)...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
	sum, readErr := summarize(stdout, os.Stdout)
	waitErr := cmd.Wait()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(waitErr, &ee):
		code = ee.ExitCode()
	case waitErr != nil:
		fmt.Fprintln(os.Stderr, "testsum:", waitErr)
		code = 2
	}
	if readErr != nil {
		fmt.Fprintln(os.Stderr, "testsum: reading go test -json:", readErr)
		code = max(code, 2)
	}
	fmt.Printf("\ntestsum: %s; %s\n", sum, time.Since(start).Round(time.Second))
	if code == 0 && sum.failed > 0 {
		code = 1 // go test said ok, the events said otherwise
	}
	if sum.skipped > 0 && testenv.CI() {
		fmt.Printf("testsum: FAIL: %d skipped under CI=%s: in CI a skip is a failure (see the SKIP lines above)\n", sum.skipped, os.Getenv("CI"))
		code = max(code, 1)
	}
	os.Exit(code)
}

// event is one line of go test -json (cmd/test2json), build events included.
type event struct {
	Action     string
	Package    string
	ImportPath string // build-output, build-fail
	Test       string
	Output     string
	Elapsed    float64
}

// summary counts results.
type summary struct {
	passed, failed, skipped int // tests and subtests
	pkgOK, pkgFailed        int // packages with tests
	skips                   []string
}

func (s summary) String() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped (tests and subtests); %d packages ok, %d failed",
		s.passed, s.failed, s.skipped, s.pkgOK, s.pkgFailed)
}

// summarize reads go test -json events from r and writes the readable
// report to w: package-level output (the ok/FAIL lines), build errors, the
// buffered output of each failed test when it fails, a line per skip.
func summarize(r io.Reader, w io.Writer) (summary, error) {
	var s summary
	outputs := map[string]*strings.Builder{} // package + test -> its output so far
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			fmt.Fprintf(w, "%s\n", line) // not an event: pass it through
			continue
		}
		key := e.Package + "\x00" + e.Test
		switch {
		case e.Action == "build-output":
			fmt.Fprint(w, e.Output)
		case e.Test == "" && e.Action == "output":
			if o := strings.TrimSpace(e.Output); o != "PASS" && o != "FAIL" {
				fmt.Fprint(w, e.Output)
			}
		case e.Test == "" && e.Action == "pass":
			s.pkgOK++
		case e.Test == "" && e.Action == "fail":
			s.pkgFailed++
		case e.Test == "":
		case e.Action == "output":
			b := outputs[key]
			if b == nil {
				b = &strings.Builder{}
				outputs[key] = b
			}
			b.WriteString(e.Output)
		case e.Action == "pass":
			s.passed++
			delete(outputs, key)
		case e.Action == "fail":
			s.failed++
			if b := outputs[key]; b != nil {
				fmt.Fprint(w, b.String())
			}
			delete(outputs, key)
		case e.Action == "skip":
			s.skipped++
			reason := skipReason(outputs[key])
			s.skips = append(s.skips, e.Package+" "+e.Test)
			fmt.Fprintf(w, "--- SKIP: %s (%s): %s\n", e.Test, e.Package, reason)
			delete(outputs, key)
		}
	}
	sort.Strings(s.skips)
	return s, sc.Err()
}

// skipReason returns the message of a skipped test's output: its lines
// without the === RUN / --- SKIP framing, joined.
func skipReason(b *strings.Builder) string {
	if b == nil {
		return "(no reason given)"
	}
	var parts []string
	for _, l := range strings.Split(b.String(), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- SKIP") {
			continue
		}
		parts = append(parts, l)
	}
	if len(parts) == 0 {
		return "(no reason given)"
	}
	return strings.Join(parts, " ")
}
