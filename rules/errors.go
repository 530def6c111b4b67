package rules

import (
	"sort"
	"strconv"
	"strings"
)

// Error is one problem in a config file.
//
// Line is 1-based; 0 means the problem has no line of its own (an unreadable
// file, an empty file, a value from the environment that replaced no line).
// Column is the 1-based column (in characters) to fix, for YAML syntax
// errors; 0 otherwise.
// Field is the dotted path of the offending field with [i] list indexes, such
// as "relay.connections[0].keys[1].rights[0]"; it is empty for problems that
// belong to no field (YAML syntax errors, I/O errors).
type Error struct {
	File   string
	Line   int
	Column int
	Field  string
	Msg    string

	err error // underlying cause, for errors.Is/As (I/O errors only)
}

// Error formats e as "file:line: field: message", leaving out the line when it
// is 0 and the field when it is empty; a syntax error with a column is
// "file:line:column: message", as compilers print it, so editors jump there.
func (e Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
		if e.Column > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Column))
		}
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the underlying cause, if any (for example the *fs.PathError
// of a config file that could not be read), so errors.Is(err, fs.ErrNotExist)
// works.
func (e Error) Unwrap() error { return e.err }

// Errors is every problem found in one config file, sorted by line (problems
// without a line first, then in the order they were found). Parse and Load
// return an Errors value, never an empty one.
type Errors []Error

// Error returns one formatted Error per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the individual errors, so errors.As can find an Error.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

func (es Errors) sort() {
	sort.SliceStable(es, func(i, j int) bool { return es[i].Line < es[j].Line })
}
