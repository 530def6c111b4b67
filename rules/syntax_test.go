package rules

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

// TestSyntaxErrors: a YAML syntax error is reported at the line and column
// the user must fix, in words that name the mistake (tab, unclosed quote or
// bracket, indentation), not where yaml.v3's parser gave up.
func TestSyntaxErrors(t *testing.T) {
	// proxyLines is a valid proxy section of 12 lines, so that the mistakes
	// below sit deep in a file as they do in real ones.
	proxyLines := []string{
		"# hybrid.yaml",                     // 1
		"log:",                              // 2
		"  level: info",                     // 3
		"proxy:",                            // 4
		"  relay: relay.example.com",        // 5
		"  transport: auto",                 // 6
		"  connections:",                    // 7
		"    - name: postgres",              // 8
		"      listen: 127.0.0.2:5432",      // 9
		"      key_name: apps",              // 10
		`      key: "0123456789abcdef0123"`, // 11
		"    - name: mysql",                 // 12
	}
	with := func(extra ...string) string {
		return strings.Join(append(append([]string{}, proxyLines...), extra...), "\n") + "\n"
	}
	tests := []struct {
		name string
		src  string
		want string // the one Error() line
	}{
		{
			name: "unclosed [ (yaml.v3 says the line above)",
			src: with(
				"      listen: 127.0.0.2:3306", // 13
				"      key_name: [apps, ops",   // 14
				`      key: "0123456789abcdef0123"`,
			),
			want: `hybrid.yaml:14:17: invalid YAML: this "[" is never closed: add "]" where the list ends`,
		},
		{
			name: "unclosed [ at the end of the file",
			src:  with("      listen: [127.0.0.2:3306"),
			want: `hybrid.yaml:13:15: invalid YAML: this "[" is never closed: add "]" where the list ends`,
		},
		{
			name: "unclosed {",
			src:  "agent:\n  relays:\n    - { host: 127.0.0.1, control: 5671\n  transport: tcp\n",
			want: `hybrid.yaml:3:7: invalid YAML: this "{" is never closed: add "}" where the mapping ends`,
		},
		{
			name: "wrong closing bracket",
			src:  "relay:\n  connections:\n    - name: pg\n      keys:\n        - { name: apps, rights: [send, primary: \"x\" }\n",
			want: `hybrid.yaml:5:53: invalid YAML: "}" does not close the "[" at column 33: want "]"`,
		},
		{
			name: "unclosed quote, closed by a later one (yaml.v3 fails lines later)",
			src: with(
				`      listen: "127.0.0.2:3306`, // 13: the culprit
				"      key_name: apps",
				`      key: "0123456789abcdef0123"`,
				"    - name: redis",
				"      listen: 127.0.0.2:6379",
			),
			want: `hybrid.yaml:13:15: invalid YAML: this " is not closed on its line: close the quoted value with "`,
		},
		{
			name: "unclosed single quote at the end",
			src:  with("      listen: '127.0.0.2:3306"),
			want: `hybrid.yaml:13:15: invalid YAML: this ' is not closed on its line: close the quoted value with '`,
		},
		{
			name: "key indented one space too far (yaml.v3 says the mapping's start)",
			src: with(
				"      listen: 127.0.0.2:3306",
				"       key_name: apps", // 14
				`      key: "0123456789abcdef0123"`,
			),
			want: "hybrid.yaml:14:8: invalid YAML: bad indentation: 7 spaces, but the line above it is at 6 and opens nothing: align it with the key it belongs with",
		},
		{
			name: "key indented between two levels",
			src:  "proxy:\n  relay: r\n  connections:\n    - name: pg\n      listen: 127.0.0.2:1\n     key_name: apps\n",
			want: "hybrid.yaml:6:6: invalid YAML: bad indentation: 5 spaces, but the line above it is at 4 and opens nothing: align it with the key it belongs with",
		},
		{
			name: "tab in the indentation",
			src:  "proxy:\n\trelay: r\n",
			want: "hybrid.yaml:2:1: invalid YAML: a tab in the indentation: YAML indents with spaces only (replace it with spaces)",
		},
		{
			name: "tab after spaces in a list",
			src:  with("  \t  listen: 127.0.0.2:3306"),
			want: "hybrid.yaml:13:3: invalid YAML: a tab in the indentation: YAML indents with spaces only (replace it with spaces)",
		},
		{
			name: "@ cannot start a value",
			src:  "proxy:\n  relay: @relay\n",
			want: `hybrid.yaml:2:10: invalid YAML: "@" cannot start a plain value: quote the value`,
		},
		{
			name: "a second colon",
			src:  "proxy:\n  relay: r\n  transport: tcp: x\n",
			want: `hybrid.yaml:3:17: invalid YAML: mapping values are not allowed in this context: a second ": " on this line (quote the value if it contains ": ")`,
		},
		{
			name: "valid multi-line flow, block scalar and comments before the mistake",
			src:  "agent:\n  allow: [\n    127.0.0.1:5432,\n    127.0.0.1:8081\n  ]\n  note: |\n     free text: with [ and \" and\n     \tand a tab\n  # a comment\n  relays: [r]\n   transport: tcp\n",
			want: "hybrid.yaml:11:4: invalid YAML: bad indentation: 3 spaces, but the line above it is at 2 and opens nothing: align it with the key it belongs with",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("hybrid.yaml", []byte(tt.src))
			var es Errors
			if !errors.As(err, &es) || len(es) != 1 {
				t.Fatalf("got %v, want one error:\n%s", err, tt.want)
			}
			if got := es[0].Error(); got != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// TestSyntaxErrorFallback: when the scan finds no culprit, yaml.v3's message
// stays, with its parser line corrected (it is one short).
func TestSyntaxErrorFallback(t *testing.T) {
	tests := []struct {
		name string
		msg  string
		line int // yaml.v3's
		want int
	}{
		{"parser error", "did not find expected key", 14, 15},
		{"parser error, flow", "did not find expected ',' or ']'", 31, 32},
		{"scanner error", "mapping values are not allowed in this context", 7, 7},
		{"scanner error worded as not found", "did not find expected whitespace or line break", 7, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDecoder("h.yaml", ".", nil)
			d.syntaxError(errors.New("yaml: line "+itoa(tt.line)+": "+tt.msg), nil)
			if len(d.errs) != 1 || d.errs[0].Line != tt.want || !strings.Contains(d.errs[0].Msg, tt.msg) {
				t.Fatalf("got %v, want line %d and %q", d.errs, tt.want, tt.msg)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// FuzzFindCulprit: the scan never panics and reports lines inside the input.
func FuzzFindCulprit(f *testing.F) {
	for _, s := range []string{"a: [b\n", "a:\n\tb: 1\n", "a: \"x\n", "a:\n  b: 1\n   c: 2\n", "- - [a, {b: c}]\n  - |\n   x\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, ok := findCulprit(data)
		if ok && (c.line < 1 || c.line > strings.Count(string(data), "\n")+1 || c.col < 1) {
			t.Fatalf("culprit %+v outside the input", c)
		}
	})
}
