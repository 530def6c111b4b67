package rules

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// YAML syntax errors, made precise.
//
// yaml.v3 reports a parser error at the line *before* the collection it was
// parsing (its context mark is 0-based and, unlike for scanner errors, it
// adds no 1), not where the mistake is: an unclosed "[" on line 32 comes out
// as line 31, a mis-indented key on line 19 as the line above the mapping
// it breaks, an unclosed quote swallows lines until the next quote and fails
// there. So on a syntax error the source is scanned for the usual culprits,
// in file order, and the first one found is reported with its line and
// column: a tab in the indentation, a quote not closed on its line, a flow
// "[" or "{" never closed or closed by the wrong bracket, a line indented to
// no open level. When the scan finds nothing, yaml's message is kept, its
// line corrected for parser errors and a column added where one can be
// found.

// culprit is where a YAML syntax error must be fixed: a 1-based line and
// column (in characters) and what is wrong there.
type culprit struct {
	line, col int
	msg       string
}

// yamlLine matches yaml.v3's "yaml: line N: message".
var yamlLine = regexp.MustCompile(`(?s)^yaml: line (\d+): (.*)$`)

// syntaxError reports err, yaml.v3's error for data, at the line and column
// to fix.
func (d *decoder) syntaxError(err error, data []byte) {
	var multi errMultipleDocs
	if errors.As(err, &multi) {
		d.errorf(multi.line, "", "more than one YAML document (only one config per file)")
		return
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
		if parserError(msg) {
			line++ // see the comment at the top of this file
		}
	}
	if c, ok := findCulprit(data); ok {
		d.errs = append(d.errs, Error{File: d.file, Line: c.line, Column: c.col, Msg: "invalid YAML: " + c.msg})
		return
	}
	lines := strings.Split(string(data), "\n")
	col := 0
	if line > 0 && line <= len(lines) {
		col, msg = explain(strings.TrimSuffix(lines[line-1], "\r"), msg)
	}
	d.errs = append(d.errs, Error{File: d.file, Line: line, Column: col, Msg: "invalid YAML: " + msg})
}

// parserError reports whether yaml.v3's message comes from its parser (whose
// line is off by one) rather than its scanner. The parser's messages are the
// "did not find expected <token>" ones, but for a few from the scanner.
func parserError(msg string) bool {
	if !strings.HasPrefix(msg, "did not find expected ") {
		return false
	}
	switch strings.TrimPrefix(msg, "did not find expected ") {
	case "whitespace or line break", "whitespace", "tag URI", "hexdecimal number", "':'":
		return false // scanner
	}
	return true
}

// explain adds a column and plainer words to a yaml.v3 message about line
// s, for the cases the scan did not catch.
func explain(s, msg string) (col int, out string) {
	switch {
	case msg == "found character that cannot start any token":
		if i := firstTokenStart(s, "@`"); i >= 0 {
			return colOf(s, i), fmt.Sprintf("%q cannot start a plain value: quote the value", string(s[i]))
		}
		if i := strings.IndexByte(s, '\t'); i >= 0 {
			return colOf(s, i), "a tab here: YAML allows only spaces for indentation and between tokens"
		}
	case strings.Contains(msg, "tab character"):
		if i := strings.IndexByte(s, '\t'); i >= 0 {
			return colOf(s, i), "a tab in the indentation: YAML indents with spaces only"
		}
	case msg == "mapping values are not allowed in this context":
		if i := secondColon(s); i >= 0 {
			return colOf(s, i), msg + `: a second ": " on this line (quote the value if it contains ": ")`
		}
	}
	return 0, msg
}

// colOf returns the 1-based column, in characters, of byte offset i of s.
func colOf(s string, i int) int { return utf8.RuneCountInString(s[:i]) + 1 }

// firstTokenStart returns the offset of the first character of chars that
// starts a value on line s, or -1.
func firstTokenStart(s, chars string) int {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(chars, s[i]) >= 0 && tokenStart(s, i) {
			return i
		}
	}
	return -1
}

// secondColon returns the offset of the ":" of a second "key: " on line s
// (outside quotes), or -1.
func secondColon(s string) int {
	seen, at := 0, -1
	walkPlain(s, func(i int) bool {
		if s[i] == ':' && (i+1 == len(s) || s[i+1] == ' ') {
			if seen++; seen == 2 {
				at = i
				return false
			}
		}
		return true
	})
	return at
}

// walkPlain walks line s outside quoted values (quotes respected roughly:
// one that starts a value opens, the same character closes), calling visit,
// when not nil, with each offset. It returns where a comment starts, or the
// offset at which visit returned false, or len(s).
func walkPlain(s string, visit func(i int) bool) int {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case (c == '"' || c == '\'') && tokenStart(s, i):
			quote = c
		case c == '#' && (i == 0 || s[i-1] == ' '):
			return i
		case visit != nil && !visit(i):
			return i
		}
	}
	return len(s)
}

// tokenStart reports whether offset i of line s is where a value may start:
// the line's first non-blank character, or after ": ", "- ", "? ", "[", "{"
// or "," (spaces between).
func tokenStart(s string, i int) bool {
	j := i - 1
	for j >= 0 && (s[j] == ' ' || s[j] == '\t') {
		j--
	}
	if j < 0 {
		return true
	}
	switch s[j] {
	case '[', '{', ',':
		return true
	case ':', '-', '?':
		return j < i-1 // needs a space after it
	}
	return false
}

// flowOpen is an open "[" or "{".
type flowOpen struct {
	line, col int  // where it opened
	indent    int  // the indentation of its line
	ch        byte // '[' or '{'
}

// scanner holds the state of findCulprit across lines.
type scanner struct {
	levels      []int      // indentation of the open block levels, innermost last
	deeper      bool       // the previous line opened a block: the next may be indented more
	blockParent int        // inside a block scalar (| or >): its parent's indentation; -1 outside
	flows       []flowOpen // open flow collections, innermost last
}

// findCulprit scans YAML source for the first of the usual syntax mistakes
// (see the comment at the top of this file). It is a heuristic over lines,
// not a YAML parser: it is only asked once yaml.v3 has refused data.
func findCulprit(data []byte) (culprit, bool) {
	sc := &scanner{blockParent: -1}
	lines := strings.Split(string(data), "\n")
	for n, raw := range lines {
		if c, ok := sc.line(n+1, strings.TrimSuffix(raw, "\r")); ok {
			return c, true
		}
	}
	if len(sc.flows) > 0 {
		return sc.unclosed(), true
	}
	return culprit{}, false
}

// unclosed reports the outermost open flow collection.
func (sc *scanner) unclosed() culprit {
	f := sc.flows[0]
	closeCh := map[byte]string{'[': "]", '{': "}"}[f.ch]
	return culprit{f.line, f.col, fmt.Sprintf("this %q is never closed: add %q where the %s ends",
		string(f.ch), closeCh, map[byte]string{'[': "list", '{': "mapping"}[f.ch])}
}

// line scans line number n, s.
func (sc *scanner) line(n int, s string) (culprit, bool) {
	body := strings.TrimLeft(s, " \t")
	indentEnd := len(s) - len(body)
	blank := body == "" || body[0] == '#'

	if sc.blockParent >= 0 {
		if blank || indentEnd > sc.blockParent {
			return culprit{}, false // block scalar content
		}
		sc.blockParent = -1
	}
	if blank {
		return culprit{}, false
	}
	inFlow := len(sc.flows) > 0
	if inFlow {
		// A line back at or left of the open flow's own line, starting a
		// key or an item, means the flow was never closed.
		if f := sc.flows[0]; indentEnd <= f.indent && (strings.HasPrefix(body, "- ") || body == "-" || looksLikeKey(body)) {
			return sc.unclosed(), true
		}
	} else {
		if i := strings.IndexByte(s[:indentEnd], '\t'); i >= 0 {
			return culprit{n, colOf(s, i), "a tab in the indentation: YAML indents with spaces only (replace it with spaces)"}, true
		}
		if c, ok := sc.indentation(n, s, indentEnd); ok {
			return c, true
		}
	}
	return sc.tokens(n, s, indentEnd)
}

// looksLikeKey reports whether s (a line without its indentation) starts a
// block mapping entry: a plain key followed by ":" and a space or the end.
func looksLikeKey(s string) bool {
	i := strings.Index(s, ":")
	if i <= 0 || (i+1 < len(s) && s[i+1] != ' ') {
		return false
	}
	return !strings.ContainsAny(s[:i], "[]{},\"'#")
}

// indentation checks line n's indentation against the open block levels and
// records the levels the line opens.
func (sc *scanner) indentation(n int, s string, indent int) (culprit, bool) {
	for len(sc.levels) > 0 && sc.levels[len(sc.levels)-1] > indent {
		sc.levels = sc.levels[:len(sc.levels)-1]
	}
	top := -1
	if len(sc.levels) > 0 {
		top = sc.levels[len(sc.levels)-1]
	}
	if top < indent {
		if top >= 0 && !sc.deeper {
			return culprit{n, indent + 1, fmt.Sprintf("bad indentation: %d spaces, but the line above it is at %d "+
				"and opens nothing: align it with the key it belongs with", indent, top)}, true
		}
		sc.levels = append(sc.levels, indent)
	}
	// Items: "- " opens a level for the item's own content.
	rest, at := s[indent:], indent
	for rest == "-" || strings.HasPrefix(rest, "- ") {
		trimmed := strings.TrimLeft(rest[1:], " ")
		at += len(rest) - len(trimmed)
		rest = trimmed
		if rest != "" && rest[0] != '#' {
			sc.levels = append(sc.levels, at)
		}
	}
	content := stripComment(rest)
	sc.deeper = content == "" || strings.HasSuffix(content, ":")
	if blockScalarStart(content) {
		sc.blockParent = indent
		sc.deeper = false
	}
	return culprit{}, false
}

// stripComment returns s without a trailing comment and spaces.
func stripComment(s string) string { return strings.TrimRight(s[:walkPlain(s, nil)], " ") }

// blockScalarStart reports whether a line's content ends with a block
// scalar indicator: "key: |", "- >-", "key: |2+".
func blockScalarStart(content string) bool {
	i := strings.LastIndexAny(content, "|>")
	if i < 0 || !tokenStart(content, i) {
		return false
	}
	for _, c := range content[i+1:] {
		if !strings.ContainsRune("+-0123456789", c) {
			return false
		}
	}
	return true
}

// tokens scans line n (s, content from offset from) for quotes and flow
// brackets.
func (sc *scanner) tokens(n int, s string, from int) (culprit, bool) {
	for i := from; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '#' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t'):
			return culprit{}, false
		case (c == '"' || c == '\'') && tokenStart(s, i):
			end := closeQuote(s, i)
			if end < 0 {
				return culprit{n, colOf(s, i), fmt.Sprintf("this %s is not closed on its line: close the quoted value with %s", string(c), string(c))}, true
			}
			i = end
		case (c == '[' || c == '{') && (tokenStart(s, i) || len(sc.flows) > 0):
			sc.flows = append(sc.flows, flowOpen{line: n, col: colOf(s, i), indent: len(s) - len(strings.TrimLeft(s, " \t")), ch: c})
		case (c == ']' || c == '}') && len(sc.flows) > 0:
			open := sc.flows[len(sc.flows)-1]
			if want := map[byte]byte{'[': ']', '{': '}'}[open.ch]; c != want {
				where := fmt.Sprintf("line %d column %d", open.line, open.col)
				if open.line == n {
					where = fmt.Sprintf("column %d", open.col)
				}
				return culprit{n, colOf(s, i), fmt.Sprintf("%q does not close the %q at %s: want %q", string(c), string(open.ch), where, string(want))}, true
			}
			sc.flows = sc.flows[:len(sc.flows)-1]
			if len(sc.flows) == 0 {
				sc.deeper = false
			}
		}
	}
	return culprit{}, false
}

// closeQuote returns the offset of the quote closing the one at s[i], or -1
// when the line ends first. Double quotes take backslash escapes; single
// quotes are escaped by doubling.
func closeQuote(s string, i int) int {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch {
		case q == '"' && s[j] == '\\':
			j++
		case s[j] == q && q == '\'' && j+1 < len(s) && s[j+1] == '\'':
			j++
		case s[j] == q:
			return j
		}
	}
	return -1
}
