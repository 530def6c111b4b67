package testenv

import "testing"

func TestCI(t *testing.T) {
	for v, want := range map[string]bool{"": false, "0": false, "false": false, "true": true, "1": true, "yes": true} {
		t.Setenv("CI", v)
		if got := CI(); got != want {
			t.Errorf("CI=%q: CI() = %v, want %v", v, got, want)
		}
	}
}

// recorder is a testing.TB that records Skip and Fatal instead of acting.
type recorder struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (r *recorder) Helper()                        {}
func (r *recorder) Skip(args ...any)               { r.skipped, r.msg = true, args[0].(string) }
func (r *recorder) Fatalf(format string, a ...any) { r.failed = true }

func TestSkipOrFail(t *testing.T) {
	for _, ci := range []string{"", "true"} {
		t.Setenv("CI", ci)
		r := &recorder{TB: t}
		SkipOrFail(r, "psql %s", "missing")
		if r.failed != (ci == "true") || r.skipped != (ci == "") {
			t.Errorf("CI=%q: failed %v, skipped %v", ci, r.failed, r.skipped)
		}
		if r.skipped && r.msg != "psql missing" {
			t.Errorf("skip message %q", r.msg)
		}
	}
}
