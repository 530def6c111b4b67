package rules

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const editBlock = `# the relay
relay:
  namespace: relay.test   # public name

  connections:
    - name: pg
      keys:
        # apps rotate monthly
        - name: apps
          rights: [send]
          primary: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="   # current
          secondary: BBBBBBBBBBBBBBBBBBBBBBBBBBBBBB==
        - name: onprem
          rights: [listen]
          primary: 'CCCCCCCCCCCCCCCCCCCCCCCCCCCCCC=='
    - name: other
      keys:
        - { name: apps, rights: [send], primary: "DDDDDDDDDDDDDDDDDDDDDDDDDDDDDD==" }
        - {name: solo, rights: [send], primary: EEEEEEEEEEEEEEEEEEEEEEEEEEEEEE==, revoke: true}
  keys:
    - { name: root, rights: [manage], primary: "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFF==", secondary: "GGGGGGGGGGGGGGGGGGGGGGGGGGGGGG==" }
`

const newKey = "NNNNNNNNNNNNNNNNNNNNNNNNNNNNNN=="

func keysOf(t *testing.T, src []byte, conn, rule string) (Key, bool) {
	t.Helper()
	cfg, err := Parse("hybrid.yaml", src)
	if err != nil {
		t.Fatalf("edited file does not parse: %v\n%s", err, src)
	}
	list := cfg.Relay.Keys
	if conn != "" {
		for _, c := range cfg.Relay.Connections {
			if c.Name == conn {
				list = c.Keys
			}
		}
	}
	for _, k := range list {
		if k.Name == rule {
			return k, true
		}
	}
	return Key{}, false
}

// sameElsewhere checks that only lines mentioning want differ.
func sameElsewhere(t *testing.T, before, after []byte, changed ...string) {
	t.Helper()
	keep := func(s []byte) []string {
		var out []string
		for _, l := range strings.Split(string(s), "\n") {
			skip := false
			for _, c := range changed {
				if strings.Contains(l, c) {
					skip = true
				}
			}
			if !skip {
				out = append(out, l)
			}
		}
		return out
	}
	b, a := keep(before), keep(after)
	if strings.Join(b, "\n") != strings.Join(a, "\n") {
		t.Fatalf("lines other than the edited ones changed:\n%s", after)
	}
}

func TestRotateKey(t *testing.T) {
	tests := []struct {
		name      string
		ref       KeyRef
		slot      string
		primary   string
		secondary string
		changed   []string
	}{
		{"block primary", KeyRef{"pg", "apps"}, "primary", newKey, "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBB==", []string{"AAAA", "NNNN"}},
		{"block secondary", KeyRef{"pg", "apps"}, "secondary", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", newKey, []string{"BBBB", "NNNN"}},
		{"single-quoted primary", KeyRef{"pg", "onprem"}, "primary", newKey, "", []string{"CCCC", "NNNN"}},
		{"block secondary added", KeyRef{"pg", "onprem"}, "secondary", "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCC==", newKey, []string{"NNNN"}},
		{"flow primary", KeyRef{"other", "apps"}, "primary", newKey, "", []string{"DDDD", "NNNN"}},
		{"flow secondary added", KeyRef{"other", "apps"}, "secondary", "DDDDDDDDDDDDDDDDDDDDDDDDDDDDDD==", newKey, []string{"DDDD"}},
		{"namespace rule", KeyRef{"", "root"}, "secondary", "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFF==", newKey, []string{"FFFF"}},
		{"revoke flag reset", KeyRef{"other", "solo"}, "primary", newKey, "", []string{"EEEE", "solo"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, res, err := RotateKey([]byte(editBlock), t.TempDir(), tt.ref, tt.slot, newKey)
			if err != nil {
				t.Fatal(err)
			}
			k, ok := keysOf(t, out, tt.ref.Connection, tt.ref.Rule)
			if !ok || k.Primary != tt.primary || k.Secondary != tt.secondary || k.Revoke {
				t.Fatalf("key now %+v (field %s)\n%s", k, res.Field, out)
			}
			sameElsewhere(t, []byte(editBlock), out, tt.changed...)
			if !strings.Contains(string(out), "# apps rotate monthly") || !strings.Contains(string(out), "# current") {
				t.Fatal("comments lost")
			}
		})
	}
}

func TestRotateKeyRefusals(t *testing.T) {
	for _, tt := range []struct {
		src  string
		ref  KeyRef
		slot string
		want string
	}{
		{editBlock, KeyRef{"nope", "apps"}, "primary", `no connection "nope"`},
		{editBlock, KeyRef{"pg", "nope"}, "primary", `no key rule named "nope"`},
		{editBlock, KeyRef{"pg", "apps"}, "tertiary", "slot must be"},
		{"relay:\n  keys:\n    - {name: k, rights: [send], primary: \"${APPS_KEY}\"}\n", KeyRef{"", "k"}, "primary", "environment"},
		{"agent:\n  relays: [a]\n", KeyRef{"", "k"}, "primary", "no relay section"},
	} {
		if _, _, err := RotateKey([]byte(tt.src), "", tt.ref, tt.slot, newKey); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v %s: err %v, want %q", tt.ref, tt.slot, err, tt.want)
		}
	}
}

func TestRotateKeyFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "apps.key"), []byte("OLDOLDOLDOLDOLDOLDOLDOLD\n"), 0o600)
	src := "relay:\n  keys:\n    - {name: k, rights: [send], primary_file: apps.key}\n"
	out, res, err := RotateKey([]byte(src), dir, KeyRef{"", "k"}, "primary", newKey)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != src || res.File != filepath.Join(dir, "apps.key") {
		t.Fatalf("yaml changed or wrong file: %q %+v", out, res)
	}
	if b, _ := os.ReadFile(res.File); strings.TrimSpace(string(b)) != newKey {
		t.Fatalf("key file holds %q", b)
	}
}

func TestRevokeKey(t *testing.T) {
	tests := []struct {
		name      string
		ref       KeyRef
		slot      string
		gone      bool
		primary   string
		secondary string
	}{
		{"block secondary", KeyRef{"pg", "apps"}, "secondary", false, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", ""},
		{"block primary promotes secondary", KeyRef{"pg", "apps"}, "primary", false, "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBB==", ""},
		{"only value removes the rule", KeyRef{"pg", "onprem"}, "primary", true, "", ""},
		{"whole block rule", KeyRef{"pg", "apps"}, "", true, "", ""},
		{"whole flow rule", KeyRef{"other", "apps"}, "", true, "", ""},
		{"last flow rule", KeyRef{"other", "solo"}, "", true, "", ""},
		{"namespace secondary", KeyRef{"", "root"}, "secondary", false, "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFF==", ""},
		{"namespace primary", KeyRef{"", "root"}, "primary", false, "GGGGGGGGGGGGGGGGGGGGGGGGGGGGGG==", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := RevokeKey([]byte(editBlock), tt.ref, tt.slot)
			if err != nil {
				t.Fatal(err)
			}
			k, ok := keysOf(t, out, tt.ref.Connection, tt.ref.Rule)
			if ok == tt.gone {
				t.Fatalf("rule present=%v, want gone=%v\n%s", ok, tt.gone, out)
			}
			if !tt.gone && (k.Primary != tt.primary || k.Secondary != tt.secondary || !k.Revoke) {
				t.Fatalf("key now %+v\n%s", k, out)
			}
			if !strings.Contains(string(out), "# apps rotate monthly") && tt.ref.Rule != "apps" {
				t.Fatal("comments lost")
			}
		})
	}
}
