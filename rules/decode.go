package rules

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// maxNodes bounds the values one file may expand to. Aliases let a small file
// name the same subtree many times over ("billion laughs"); a real config has
// a few hundred values.
const maxNodes = 100_000

// decoder walks a yaml.Node tree against the schema, collecting every problem.
// It is used once, by one goroutine.
type decoder struct {
	file  string          // as given, for messages
	dir   string          // absolute directory for relative paths
	errs  Errors          // problems found so far
	warns Errors          // valid but worth saying (Config.Warnings)
	skip  map[string]bool // top-level sections left undecoded (ParseSections)
	lines map[string]int  // field path -> line of its key (or list item)
	nodes int             // values visited, against maxNodes
	// errAt and errUnder hold the fields with an error, and those with an
	// error at or below them, so checks can skip what is already reported.
	errAt, errUnder map[string]bool
}

// fields maps the keys of a mapping to what decodes their value; each func is
// given the value's field path and node.
type fields map[string]func(path string, v *yaml.Node)

func (d *decoder) errorf(line int, field, format string, args ...any) {
	d.errs = append(d.errs, Error{File: d.file, Line: line, Field: field, Msg: clipQuoted(fmt.Sprintf(format, args...))})
	if d.errAt == nil {
		d.errAt, d.errUnder = map[string]bool{}, map[string]bool{}
	}
	d.errAt[field] = true
	for f := field; f != "" && !d.errUnder[f]; f = parentPath(f) {
		d.errUnder[f] = true
	}
}

// quoted matches a Go-quoted string (%q) in a message.
var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// maxQuoted is the longest quoted value a message repeats whole; longer
// ones (a pasted certificate, a runaway line) are cut to a prefix.
const maxQuoted = 64

// clipQuoted shortens every quoted value in msg to a short prefix, so that a
// bad value of any size gives a readable one-line message.
func clipQuoted(msg string) string {
	return quoted.ReplaceAllStringFunc(msg, func(q string) string {
		if len(q) <= maxQuoted {
			return q
		}
		v, err := strconv.Unquote(q)
		if err != nil {
			return q[:maxQuoted/2] + `…"`
		}
		r := []rune(v)
		if len(r) > maxQuoted/2 {
			r = r[:maxQuoted/2]
		}
		return fmt.Sprintf("%s… (%d bytes)", strconv.Quote(string(r)), len(v))
	})
}

// bad reports whether an error was reported at field.
func (d *decoder) bad(field string) bool { return d.errAt[field] }

// badUnder reports whether an error was reported at or below field.
func (d *decoder) badUnder(field string) bool { return d.errUnder[field] }

// fieldErr reports a problem at field's own line, or its nearest ancestor's.
// fieldWarn records something valid but likely unintended about field.
func (d *decoder) fieldWarn(field, format string, args ...any) {
	d.warns = append(d.warns, Error{File: d.file, Line: d.line(field), Field: field, Msg: clipQuoted(fmt.Sprintf(format, args...))})
}

// firstSeen records key at field in seen and reports true; when seen holds
// it already, it reports field as a duplicate, "<what> (first at line
// N<suffix>", and returns false. suffix closes the parenthesis.
func (d *decoder) firstSeen(seen map[string]int, key, field, what, suffix string) bool {
	if l, dup := seen[key]; dup {
		d.fieldErr(field, "%s (first at line %d%s", what, l, suffix)
		return false
	}
	seen[key] = d.line(field)
	return true
}

func (d *decoder) fieldErr(field, format string, args ...any) {
	d.errorf(d.line(field), field, format, args...)
}

func (d *decoder) line(field string) int { return lineOf(d.lines, field) }

// lineOf returns the line of path or of its nearest ancestor present in lines.
func lineOf(lines map[string]int, path string) int {
	for path != "" {
		if l, ok := lines[path]; ok {
			return l
		}
		path = parentPath(path)
	}
	return 0
}

// parentPath strips the last ".name" or "[i]" from path.
func parentPath(path string) string {
	if strings.HasSuffix(path, "]") {
		if i := strings.LastIndexByte(path, '['); i >= 0 {
			return path[:i]
		}
	}
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		return path[:i]
	}
	return ""
}

func child(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// visit resolves aliases and counts n against maxNodes; it returns nil (after
// reporting once) when the budget is spent.
func (d *decoder) visit(n *yaml.Node) *yaml.Node {
	if n = deref(n); n == nil {
		return nil
	}
	d.nodes++
	if d.nodes == maxNodes+1 {
		d.errorf(n.Line, "", "too many values (more than %d, counting what aliases expand to)", maxNodes)
	}
	if d.nodes > maxNodes {
		return nil
	}
	return n
}

// deref follows aliases to the node they name; nil if there is none.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	if n == nil || n.Kind == yaml.AliasNode {
		return nil
	}
	return n
}

// describe names what n is, for "want X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch t := n.ShortTag(); t {
		case "!!str":
			return "a string"
		case "!!int":
			return "an integer"
		case "!!bool":
			return "a boolean"
		case "!!float":
			return "a number"
		case "!!null":
			return "nothing"
		case "!!timestamp":
			return "a timestamp"
		case "!!binary":
			return "binary data"
		default:
			return "a value tagged " + strconv.Quote(t)
		}
	}
	return "an unsupported node"
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// typeErr reports that path holds n where want was expected.
func (d *decoder) typeErr(path string, n *yaml.Node, want string) {
	hint := ""
	if n.Kind == yaml.ScalarNode {
		tag := n.ShortTag()
		switch {
		case want == "a string" && tag != "!!null":
			hint = " (quote it)"
		case want == "an integer" && tag == "!!str" && isDecimal(n.Value):
			hint = " (remove the quotes)"
		case want == "true or false" && tag == "!!str" && (n.Value == "true" || n.Value == "false"):
			hint = " (remove the quotes)"
		case want == "a list" && tag == "!!null":
			hint = " (write [] for an empty list)"
		}
	}
	line := d.line(path)
	if line == 0 {
		line = n.Line
	}
	d.errorf(line, path, "want %s, got %s%s", want, describe(n), hint)
}

func isDecimal(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// mergeKey marks, in the seen set of a mapping, that it held an unsupported
// merge key or a non-scalar key, so fields it may have meant to provide are
// not reported as missing on top of that.
const mergeKey = "<<"

// mapping walks n as a mapping whose keys must be among fs, calling each
// field's func in document order. It reports unknown keys (with a
// suggestion), duplicate keys and merge keys, and returns the keys present.
// ok is false when n is not a mapping at all.
func (d *decoder) mapping(path string, n *yaml.Node, fs fields) (seen map[string]bool, ok bool) {
	if n = d.visit(n); n == nil {
		return nil, false
	}
	if n.Kind != yaml.MappingNode {
		d.typeErr(path, n, "a mapping")
		return nil, false
	}
	seen = make(map[string]bool, len(n.Content)/2)
	first := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := d.visit(n.Content[i]), n.Content[i+1]
		if k == nil {
			return seen, true
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!merge" {
			what := "merge keys (<<) are not supported"
			if k.Kind != yaml.ScalarNode {
				what = "keys must be plain names, not " + describe(k)
			}
			d.errorf(k.Line, path, "%s", what)
			seen[mergeKey] = true // what it would have brought is not missing
			continue
		}
		name := k.Value
		fp := child(path, displayKey(name))
		if l, dup := first[name]; dup {
			d.errorf(k.Line, fp, "duplicate key (first at line %d)", l)
			continue
		}
		first[name] = k.Line
		fn, known := fs[name]
		if !known {
			d.errorf(k.Line, fp, "unknown field %q%s", name, suggest(name, fs))
			continue
		}
		seen[name] = true
		d.lines[fp] = k.Line
		fn(fp, v)
	}
	return seen, true
}

// displayKey quotes a key that would not read well in a field path.
func displayKey(k string) string {
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return strconv.Quote(k)
		}
	}
	if k == "" {
		return `""`
	}
	return k
}

// suggest returns ` (did you mean "x"?)` for the known key closest to name.
func suggest(name string, fs fields) string {
	names := make([]string, 0, len(fs))
	for k := range fs {
		names = append(names, k)
	}
	slices.Sort(names)
	best, bestDist := "", 3
	lower := strings.ToLower(name)
	for _, k := range names {
		if dist := editDistance(lower, k); dist < bestDist && dist < len(k) {
			best, bestDist = k, dist
		}
	}
	if best == "" {
		return " (want " + listOr(names) + ")"
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// listOr formats names as "a, b or c".
func listOr(names []string) string {
	switch len(names) {
	case 0:
		return ""
	case 1:
		return names[0]
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// editDistance is the Levenshtein distance between short strings (bounded
// work: long keys are never typos of ours).
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// seq returns the items of n as a list, recording each item's line.
func (d *decoder) seq(path string, n *yaml.Node) ([]*yaml.Node, bool) {
	if n = d.visit(n); n == nil {
		return nil, false
	}
	if n.Kind != yaml.SequenceNode {
		d.typeErr(path, n, "a list")
		return nil, false
	}
	if d.nodes+len(n.Content) > maxNodes {
		d.nodes = maxNodes
		d.visit(n) // reports the budget error once
		return nil, false
	}
	for i, it := range n.Content {
		d.lines[index(path, i)] = it.Line
	}
	return n.Content, true
}

// str decodes a string; no other scalar type is converted to one.
func (d *decoder) str(path string, n *yaml.Node) (string, bool) {
	if n = d.visit(n); n == nil {
		return "", false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		d.typeErr(path, n, "a string")
		return "", false
	}
	return n.Value, true
}

// integer decodes an integer; a quoted number is a string, not an integer.
func (d *decoder) integer(path string, n *yaml.Node) (int, bool) {
	if n = d.visit(n); n == nil {
		return 0, false
	}
	var v int64
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&v) != nil {
		d.typeErr(path, n, "an integer")
		return 0, false
	}
	if v < math.MinInt32 || v > math.MaxInt32 {
		d.fieldErr(path, "%d is out of range", v)
		return 0, false
	}
	return int(v), true
}

// boolean decodes true or false; 1, "true" and yes are not booleans.
func (d *decoder) boolean(path string, n *yaml.Node) (bool, bool) {
	if n = d.visit(n); n == nil {
		return false, false
	}
	var v bool
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&v) != nil {
		d.typeErr(path, n, "true or false")
		return false, false
	}
	return v, true
}

// strings decodes a list of strings.
func (d *decoder) strList(path string, n *yaml.Node, each func(path, s string)) bool {
	items, ok := d.seq(path, n)
	if !ok {
		return false
	}
	for i, it := range items {
		ip := index(path, i)
		if s, ok := d.str(ip, it); ok {
			each(ip, s)
		}
	}
	return true
}
