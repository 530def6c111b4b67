package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
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
