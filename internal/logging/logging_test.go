package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestRootFollowsSet(t *testing.T) {
	var buf bytes.Buffer
	root, err := New(&buf, "info", "text")
	if err != nil {
		t.Fatal(err)
	}
	l := root.Named("relay").With("hc", "pg")
	l.Debug("hidden")
	l.Info("shown", "n", 1)
	if s := buf.String(); strings.Contains(s, "hidden") || !strings.Contains(s, "[INFO]  relay: shown: hc=pg n=1") {
		t.Fatalf("text output %q", s)
	}
	buf.Reset()
	if err := root.Set("debug", "json"); err != nil {
		t.Fatal(err)
	}
	l.Debug("now shown")
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("not JSON after Set: %q", buf.String())
	}
	if m["@message"] != "now shown" || m["@module"] != "relay" || m["hc"] != "pg" {
		t.Fatalf("json output %v", m)
	}
	for _, bad := range [][2]string{{"warning", "text"}, {"INFO", "text"}, {"info", "xml"}} {
		if err := root.Set(bad[0], bad[1]); err == nil {
			t.Errorf("Set(%q, %q) accepted", bad[0], bad[1])
		}
	}
	buf.Reset()
	l.Debug("still debug after refused Set")
	if !strings.Contains(buf.String(), "still debug") {
		t.Fatalf("a refused Set changed the logger: %q", buf.String())
	}
}

// TestDurations: a time.Duration is written in human units in both formats,
// never as raw nanoseconds.
func TestDurations(t *testing.T) {
	tests := []struct {
		format string
		want   string
	}{
		{"text", "took=1.5s wait=250ms"},
		{"json", `"took":"1.5s"`},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			var buf bytes.Buffer
			root, err := New(&buf, "info", tt.format)
			if err != nil {
				t.Fatal(err)
			}
			root.Named("x").With("took", 1500*time.Millisecond).Info("done", "wait", 250*time.Millisecond)
			out := buf.String()
			if !strings.Contains(out, tt.want) || strings.Contains(out, "1500000000") || strings.Contains(out, "250000000") {
				t.Fatalf("output %q, want %q and no nanoseconds", out, tt.want)
			}
			if tt.format == "json" {
				var m map[string]any
				if err := json.Unmarshal(buf.Bytes(), &m); err != nil || m["wait"] != "250ms" {
					t.Fatalf("json %q: %v", out, err)
				}
			}
		})
	}
}
