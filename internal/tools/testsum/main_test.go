package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// events is a go test -json stream (abridged from a real run): a package
// that passes, one with a failing subtest, a skip, a build failure.
const events = `{"Action":"start","Package":"example/a"}
{"Action":"run","Package":"example/a","Test":"TestOK"}
{"Action":"output","Package":"example/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"output","Package":"example/a","Test":"TestOK","Output":"--- PASS: TestOK (0.00s)\n"}
{"Action":"pass","Package":"example/a","Test":"TestOK","Elapsed":0}
{"Action":"output","Package":"example/a","Output":"PASS\n"}
{"Action":"output","Package":"example/a","Output":"ok  \texample/a\t0.01s\n"}
{"Action":"pass","Package":"example/a","Elapsed":0.01}
{"Action":"run","Package":"example/b","Test":"TestT"}
{"Action":"run","Package":"example/b","Test":"TestT/sub"}
{"Action":"output","Package":"example/b","Test":"TestT/sub","Output":"    b_test.go:9: got 1, want 2\n"}
{"Action":"output","Package":"example/b","Test":"TestT/sub","Output":"    --- FAIL: TestT/sub (0.00s)\n"}
{"Action":"fail","Package":"example/b","Test":"TestT/sub","Elapsed":0}
{"Action":"output","Package":"example/b","Test":"TestT","Output":"--- FAIL: TestT (0.00s)\n"}
{"Action":"fail","Package":"example/b","Test":"TestT","Elapsed":0}
{"Action":"run","Package":"example/b","Test":"TestSkip"}
{"Action":"output","Package":"example/b","Test":"TestSkip","Output":"=== RUN   TestSkip\n"}
{"Action":"output","Package":"example/b","Test":"TestSkip","Output":"    b_test.go:20: psql missing\n"}
{"Action":"output","Package":"example/b","Test":"TestSkip","Output":"--- SKIP: TestSkip (0.00s)\n"}
{"Action":"skip","Package":"example/b","Test":"TestSkip","Elapsed":0}
{"Action":"output","Package":"example/b","Output":"FAIL\n"}
{"Action":"output","Package":"example/b","Output":"FAIL\texample/b\t0.02s\n"}
{"Action":"fail","Package":"example/b","Elapsed":0.02}
{"ImportPath":"example/c","Action":"build-output","Output":"c.go:3:1: syntax error\n"}
{"ImportPath":"example/c","Action":"build-fail"}
{"Action":"output","Package":"example/c","Output":"FAIL\texample/c [build failed]\n"}
{"Action":"fail","Package":"example/c","Elapsed":0}
go: warning: not an event
`

func TestSummarize(t *testing.T) {
	var out strings.Builder
	s, err := summarize(strings.NewReader(events), &out)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.String(), "1 passed, 2 failed, 1 skipped (tests and subtests); 1 packages ok, 2 failed"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
	text := out.String()
	for _, want := range []string{
		"ok  \texample/a\t0.01s\n",
		"    b_test.go:9: got 1, want 2\n    --- FAIL: TestT/sub (0.00s)\n",
		"--- FAIL: TestT (0.00s)\n",
		"--- SKIP: TestSkip (example/b): b_test.go:20: psql missing\n",
		"FAIL\texample/b\t0.02s\n",
		"c.go:3:1: syntax error\n",
		"FAIL\texample/c [build failed]\n",
		"go: warning: not an event\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	for _, unwanted := range []string{"=== RUN   TestOK", "--- PASS: TestOK", "PASS\n\n"} {
		if strings.Contains(text, unwanted) {
			t.Errorf("output has %q (a passing test's noise):\n%s", unwanted, text)
		}
	}
}

// TestExitStatus builds testsum and runs it on a small module of its own:
// the exit status is go test's, and a skip under CI=true is a failure.
func TestExitStatus(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "testsum")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	mod := filepath.Join(dir, "m")
	os.MkdirAll(mod, 0o755)
	os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module m\n\ngo 1.22\n"), 0o644)
	os.WriteFile(filepath.Join(mod, "m_test.go"), []byte(`package m

import (
	"os"
	"testing"
)

func TestPass(t *testing.T) {}

func TestMaybe(t *testing.T) {
	switch os.Getenv("WHAT") {
	case "fail":
		t.Fatal("asked to fail")
	case "skip":
		t.Skip("asked to skip")
	}
}
`), 0o644)
	tests := []struct {
		what, ci string
		code     int
		summary  string
	}{
		{"pass", "", 0, "2 passed, 0 failed, 0 skipped"},
		{"fail", "", 1, "1 passed, 1 failed, 0 skipped"},
		{"skip", "", 0, "1 passed, 0 failed, 1 skipped"},
		{"skip", "true", 1, "in CI a skip is a failure"},
	}
	for _, tt := range tests {
		t.Run(tt.what+" CI="+tt.ci, func(t *testing.T) {
			cmd := exec.Command(bin, "-count=1", "./...")
			cmd.Dir = mod
			cmd.Env = append(os.Environ(), "WHAT="+tt.what, "CI="+tt.ci, "GOFLAGS=-mod=mod")
			out, _ := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != tt.code || !strings.Contains(string(out), tt.summary) {
				t.Fatalf("exit %d, want %d and %q:\n%s", code, tt.code, tt.summary, out)
			}
		})
	}
}
