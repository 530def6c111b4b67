package status

import (
	"regexp"
	"testing"
)

func TestReason(t *testing.T) {
	tests := []struct {
		code Code
		want string
	}{
		{OK, "ok"}, {Unauthorized, "unauthorized"}, {Forbidden, "forbidden"}, {NotFound, "not_found"},
		{NoListener, "no_listener"}, {Refused, "refused"}, {Unreachable, "unreachable"}, {Timeout, "timeout"},
		{Busy, "busy"}, {ShuttingDown, "shutting_down"}, {Code(200), "internal"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.code.Reason(); got != tt.want {
				t.Errorf("%v.Reason() = %q, want %q", tt.code, got, tt.want)
			}
		})
	}
	// Every known code has a label-safe reason of its own.
	label := regexp.MustCompile(`^[a-z][a-z_]*$`)
	seen := map[string]Code{}
	for c := Code(0); c.Valid(); c++ {
		r := c.Reason()
		if !label.MatchString(r) {
			t.Errorf("%v.Reason() = %q: not a label value", c, r)
		}
		if prev, ok := seen[r]; ok {
			t.Errorf("%v and %v share the reason %q", prev, c, r)
		}
		seen[r] = c
	}
}
