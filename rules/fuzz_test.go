package rules

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"
)

// FuzzParse checks that Parse never panics, and that what it returns is
// either a config or a sorted, non-empty Errors.
func FuzzParse(f *testing.F) {
	f.Setenv("HYBRID_LOG_LEVEL", "")
	f.Setenv("HYBRID_LOG_FORMAT", "")
	seeds := []string{
		designExample,
		"",
		"relay:\n",
		"agent: {relays: [r, {host: h, control: 1}], allow: [a:1], connections: [{name: a/b, endpoint: a:1, key_name: k, key: \"${HOME}\"}]}\n",
		"proxy: {relay: [127.0.0.1], socks: \":0\", connections: [{name: x, listen: \"[::1]:0\", key_name: k, key_file: k}]}\n",
		"relay: {listen: {control: \"0.0.0.0:1\"}, keys: [&k {name: k, rights: [manage], primary: x}], connections: [{name: a, keys: [*k, <<: *k]}]}\n",
		"a: &a [*a]\nrelay: *a\n",
		"relay: {}\n---\n",
		"- [\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	file := filepath.Join(f.TempDir(), "hybrid.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(file, data)
		if err == nil {
			if c == nil || c.Relay == nil && c.Agent == nil && c.Proxy == nil {
				t.Fatalf("nil error but config %v", c)
			}
			if !slices.Contains(levels, c.Log.Level) || (c.Log.Format != "text" && c.Log.Format != "json") {
				t.Fatalf("invalid log accepted: %+v", c.Log)
			}
			return
		}
		if c != nil {
			t.Fatalf("config returned with error %v", err)
		}
		var es Errors
		if !errors.As(err, &es) || len(es) == 0 {
			t.Fatalf("error %T %v is not a non-empty Errors", err, err)
		}
		for i, e := range es {
			if e.Line < 0 || i > 0 && e.Line < es[i-1].Line || e.File != file || e.Msg == "" {
				t.Fatalf("bad error %d: %#v", i, e)
			}
		}
		_ = err.Error()
	})
}
