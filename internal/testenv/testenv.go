// Package testenv holds what the tests of several packages share about
// their environment. Its one rule: under CI (CI=true) a test never skips
// silently. A missing prerequisite (a program, a server, a privilege) skips
// the test on a developer's machine and fails it in CI, where .ci/run has
// installed everything.
package testenv

import (
	"fmt"
	"os"
	"testing"
)

// CI reports whether the tests run under CI: CI is set to anything but ""
// "0" or "false" (CI=true in .ci/run and in hosted CI systems).
func CI() bool {
	switch os.Getenv("CI") {
	case "", "0", "false":
		return false
	}
	return true
}

// SkipOrFail skips t with the message, or, under CI, fails it saying that a
// skip is not allowed there.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		t.Fatalf("%s (CI is set, so this fails rather than skips; .ci/run installs what the tests need)", msg)
		return
	}
	t.Skip(msg)
}
