package rules

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/hybridconn/hybrid/internal/safefile"
)

// KeyRef names one key rule of a relay section: of the hybrid connection
// Connection, or of the namespace (relay.keys) when Connection is "".
type KeyRef struct {
	Connection string
	Rule       string
}

func (k KeyRef) String() string {
	if k.Connection == "" {
		return fmt.Sprintf("namespace rule %q", k.Rule)
	}
	return fmt.Sprintf("rule %q of connection %q", k.Rule, k.Connection)
}

// KeyEdit says what an edit of a key changed.
type KeyEdit struct {
	// Field is the YAML path of the value edited, e.g.
	// relay.connections[0].keys[1].primary.
	Field string
	// File is set when the value lives in a file (primary_file): the new
	// value was written there, and the YAML is unchanged.
	File string
	// Notes are things the user must know (revoke: true reset, the value
	// comes from the environment).
	Notes []string
}

// ErrFromEnv is returned when the value to rotate is ${VAR}: hybrid cannot
// change the environment; the user must.
var ErrFromEnv = errors.New("the value comes from the environment")

// RotateKey replaces the slot ("primary" or "secondary") of key ref in the
// relay section of the config file src with value, editing the text in
// place so that comments and layout are kept. A missing secondary is
// added. A value given as primary_file is written to that file instead
// (dir resolves it). revoke: true on the rule is turned off: a rotation
// keeps live streams for the rotation grace.
func RotateKey(src []byte, dir string, ref KeyRef, slot, value string) ([]byte, KeyEdit, error) {
	if slot != "primary" && slot != "secondary" {
		return nil, KeyEdit{}, fmt.Errorf("slot must be primary or secondary, not %q", slot)
	}
	ed, err := locateKey(src, ref)
	if err != nil {
		return nil, KeyEdit{}, err
	}
	res := KeyEdit{Field: ed.path + "." + slot}
	var out edits
	switch v, f := ed.value(slot), ed.value(slot+"_file"); {
	case f != nil:
		path := f.Value
		if !filepath.IsAbs(path) {
			path = filepath.Join(dir, path)
		}
		if err := writeSecretFile(path, value); err != nil {
			return nil, KeyEdit{}, err
		}
		res.File, res.Field = path, ed.path+"."+slot+"_file"
	case v != nil && envRef.MatchString(v.Value):
		return nil, res, fmt.Errorf("%s: %w (%s): set the new value there", res.Field, ErrFromEnv, v.Value)
	case v != nil:
		out = append(out, ed.replaceScalar(v, quote(value)))
	default:
		if slot == "primary" {
			return nil, res, fmt.Errorf("%s: no primary value to rotate", ed.path)
		}
		out = append(out, ed.addField(slot, quote(value)))
	}
	if r := ed.value("revoke"); r != nil && r.Value == "true" {
		out = append(out, ed.replaceScalar(r, "false"))
		res.Notes = append(res.Notes, "revoke: true on the rule was set to false: a rotation keeps live streams for relay.rotation_grace")
	}
	return out.apply(src), res, nil
}

// RevokeKey removes the slot ("primary" or "secondary") of key ref from the
// relay section of src and marks the rule revoke: true, so that the relay
// ends what the removed value authenticated at once. Revoking the primary
// promotes the secondary; revoking a rule's only value, or slot "" (the
// whole rule), removes the rule.
func RevokeKey(src []byte, ref KeyRef, slot string) ([]byte, KeyEdit, error) {
	ed, err := locateKey(src, ref)
	if err != nil {
		return nil, KeyEdit{}, err
	}
	if slot != "" && slot != "primary" && slot != "secondary" {
		return nil, KeyEdit{}, fmt.Errorf("slot must be primary, secondary or empty (the whole rule), not %q", slot)
	}
	primary := ed.value("primary")
	if primary == nil {
		primary = ed.value("primary_file")
	}
	secondary, secKey := ed.value("secondary"), "secondary"
	if secondary == nil {
		secondary, secKey = ed.value("secondary_file"), "secondary_file"
	}
	res := KeyEdit{Field: ed.path}
	var out edits
	switch {
	case slot == "" || slot == "primary" && secondary == nil:
		out = append(out, ed.removeItem())
		if slot != "" {
			res.Notes = append(res.Notes, "the rule had no secondary value: the whole rule was removed")
		}
	case slot == "secondary":
		if secondary == nil {
			return nil, res, fmt.Errorf("%s: no secondary value to revoke", ed.path)
		}
		res.Field = ed.path + "." + secKey
		out = append(out, ed.removeField(secKey))
		out = append(out, ed.setRevoke()...)
	default: // the primary, with a secondary to promote
		res.Field = ed.path + ".primary"
		pKey := "primary"
		if ed.value("primary") == nil {
			pKey = "primary_file"
		}
		out = append(out, ed.removeField(pKey), ed.renameKey(secKey, strings.Replace(secKey, "secondary", "primary", 1)))
		out = append(out, ed.setRevoke()...)
		res.Notes = append(res.Notes, "the secondary value is now the primary")
	}
	return out.apply(src), res, nil
}

// keyEditor is a located key rule: its mapping node in the parsed file.
type keyEditor struct {
	src  []byte
	path string
	seq  *yaml.Node // the list holding the rule
	item *yaml.Node // the rule's mapping
}

func locateKey(src []byte, ref KeyRef) (*keyEditor, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, fmt.Errorf("cannot parse the config: %v", err)
	}
	if len(doc.Content) == 0 {
		return nil, errors.New("empty config")
	}
	relay := mapValue(doc.Content[0], "relay")
	if relay == nil {
		return nil, errors.New("no relay section: keys are rotated in the relay's file")
	}
	path := "relay"
	var keys *yaml.Node
	if ref.Connection == "" {
		keys = mapValue(relay, "keys")
		path += ".keys"
	} else {
		conns := mapValue(relay, "connections")
		if conns == nil || conns.Kind != yaml.SequenceNode {
			return nil, fmt.Errorf("relay.connections: no connection %q", ref.Connection)
		}
		for i, c := range conns.Content {
			if n := mapValue(c, "name"); n != nil && n.Value == ref.Connection {
				keys = mapValue(c, "keys")
				path = fmt.Sprintf("relay.connections[%d].keys", i)
				break
			}
		}
		if keys == nil {
			return nil, fmt.Errorf("relay.connections: no connection %q with keys", ref.Connection)
		}
	}
	if keys == nil || keys.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%s: no key rules", path)
	}
	for i, k := range keys.Content {
		if n := mapValue(k, "name"); n != nil && n.Value == ref.Rule && k.Kind == yaml.MappingNode {
			return &keyEditor{src: src, path: fmt.Sprintf("%s[%d]", path, i), seq: keys, item: k}, nil
		}
	}
	return nil, fmt.Errorf("%s: no key rule named %q", path, ref.Rule)
}

// mapValue returns the value of key in mapping n, or nil.
func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func (e *keyEditor) value(key string) *yaml.Node { return mapValue(e.item, key) }

func (e *keyEditor) keyNode(key string) *yaml.Node {
	for i := 0; i+1 < len(e.item.Content); i += 2 {
		if e.item.Content[i].Value == key {
			return e.item.Content[i]
		}
	}
	return nil
}

// quote writes a value as a double-quoted YAML scalar.
func quote(v string) string { return fmt.Sprintf("%q", v) }

// offset returns the byte offset of a node's line and column.
func (e *keyEditor) offset(n *yaml.Node) int {
	return lineStart(e.src, n.Line) + n.Column - 1
}

func lineStart(src []byte, line int) int {
	off := 0
	for l := 1; l < line && off < len(src); l++ {
		i := bytes.IndexByte(src[off:], '\n')
		if i < 0 {
			return len(src)
		}
		off += i + 1
	}
	return off
}

// scalarEnd returns where the scalar starting at off ends (one line).
func scalarEnd(src []byte, off int) int {
	if off >= len(src) {
		return off
	}
	switch q := src[off]; q {
	case '"', '\'':
		for i := off + 1; i < len(src) && src[i] != '\n'; i++ {
			if q == '"' && src[i] == '\\' {
				i++
				continue
			}
			if src[i] == q {
				if q == '\'' && i+1 < len(src) && src[i+1] == '\'' {
					i++
					continue
				}
				return i + 1
			}
		}
	}
	i := off
	for i < len(src) && src[i] != '\n' && src[i] != ',' && src[i] != '}' && src[i] != ']' &&
		!(src[i] == '#' && i > off && (src[i-1] == ' ' || src[i-1] == '\t')) {
		i++
	}
	for i > off && (src[i-1] == ' ' || src[i-1] == '\t') {
		i--
	}
	return i
}

// edit replaces src[start:end] with text.
type edit struct {
	start, end int
	text       string
}

type edits []edit

// apply makes the edits, last first (they must not overlap).
func (es edits) apply(src []byte) []byte {
	out := append([]byte(nil), src...)
	for len(es) > 0 {
		last := 0
		for i, e := range es {
			if e.start > es[last].start {
				last = i
			}
		}
		e := es[last]
		out = append(out[:e.start], append([]byte(e.text), out[e.end:]...)...)
		es = append(es[:last], es[last+1:]...)
	}
	return out
}

func (e *keyEditor) replaceScalar(n *yaml.Node, text string) edit {
	off := e.offset(n)
	return edit{off, scalarEnd(e.src, off), text}
}

// fieldSpan returns the span of "key: value" in the rule, with the comma
// (flow style) or the whole line (block style) so that removing it leaves
// valid YAML.
func (e *keyEditor) fieldSpan(key string) (int, int) {
	k, v := e.keyNode(key), e.value(key)
	start, end := e.offset(k), scalarEnd(e.src, e.offset(v))
	if e.item.Style&yaml.FlowStyle != 0 {
		// Take the comma after, or else the one before.
		j := end
		for j < len(e.src) && (e.src[j] == ' ' || e.src[j] == '\t') {
			j++
		}
		if j < len(e.src) && e.src[j] == ',' {
			j++
			for j < len(e.src) && e.src[j] == ' ' {
				j++
			}
			return start, j
		}
		i := start
		for i > 0 && (e.src[i-1] == ' ' || e.src[i-1] == '\t') {
			i--
		}
		if i > 0 && e.src[i-1] == ',' {
			return i - 1, end
		}
		return start, end
	}
	ls := lineStart(e.src, k.Line)
	le := lineStart(e.src, v.Line+1)
	return ls, le
}

func (e *keyEditor) removeField(key string) edit {
	s, t := e.fieldSpan(key)
	return edit{s, t, ""}
}

func (e *keyEditor) renameKey(from, to string) edit {
	k := e.keyNode(from)
	off := e.offset(k)
	return edit{off, off + len(from), to}
}

// addField appends "key: text" to the rule.
func (e *keyEditor) addField(key, text string) edit {
	last := e.item.Content[len(e.item.Content)-1]
	end := scalarEnd(e.src, e.offset(last))
	if e.item.Style&yaml.FlowStyle != 0 {
		return edit{end, end, ", " + key + ": " + text}
	}
	firstKey := e.item.Content[0]
	indent := strings.Repeat(" ", firstKey.Column-1)
	at := lineStart(e.src, last.Line+1)
	line := indent + key + ": " + text + "\n"
	if at == len(e.src) && len(e.src) > 0 && e.src[len(e.src)-1] != '\n' {
		line = "\n" + line
	}
	return edit{at, at, line}
}

// setRevoke makes the rule say revoke: true.
func (e *keyEditor) setRevoke() edits {
	if r := e.value("revoke"); r != nil {
		if r.Value == "true" {
			return nil
		}
		return edits{e.replaceScalar(r, "true")}
	}
	return edits{e.addField("revoke", "true")}
}

// removeItem removes the whole rule from its list.
func (e *keyEditor) removeItem() edit {
	idx := 0
	for i, it := range e.seq.Content {
		if it == e.item {
			idx = i
		}
	}
	if e.seq.Style&yaml.FlowStyle != 0 {
		start := e.offset(e.item)
		end := e.flowItemEnd(start)
		j := end
		for j < len(e.src) && (e.src[j] == ' ' || e.src[j] == '\t' || e.src[j] == '\n') {
			j++
		}
		if j < len(e.src) && e.src[j] == ',' {
			j++
			for j < len(e.src) && (e.src[j] == ' ' || e.src[j] == '\n') {
				j++
			}
			return edit{start, j, ""}
		}
		i := start
		for i > 0 && (e.src[i-1] == ' ' || e.src[i-1] == '\n' || e.src[i-1] == '\t') {
			i--
		}
		if i > 0 && e.src[i-1] == ',' {
			return edit{i - 1, end, ""}
		}
		return edit{start, end, ""}
	}
	// Block list: from the item's "- " line to the next item's line, or
	// to the first line after it that is indented no deeper than the dash.
	start := lineStart(e.src, e.item.Line)
	if idx+1 < len(e.seq.Content) {
		return edit{start, lineStart(e.src, e.seq.Content[idx+1].Line), ""}
	}
	dash := e.item.Column - 3 // "- " precedes the mapping's first key
	end := lineStart(e.src, e.item.Line+1)
	for end < len(e.src) {
		le := bytes.IndexByte(e.src[end:], '\n')
		line := e.src[end:]
		if le >= 0 {
			line = e.src[end : end+le]
		}
		trim := strings.TrimLeft(string(line), " ")
		if trim != "" && !strings.HasPrefix(trim, "#") && len(line)-len(trim) <= dash {
			break
		}
		if le < 0 {
			end = len(e.src)
			break
		}
		end += le + 1
	}
	return edit{start, end, ""}
}

// flowItemEnd finds the end of the flow mapping starting at off.
func (e *keyEditor) flowItemEnd(off int) int {
	depth := 0
	inQ := byte(0)
	for i := off; i < len(e.src); i++ {
		c := e.src[i]
		switch {
		case inQ != 0:
			if c == '\\' && inQ == '"' {
				i++
			} else if c == inQ {
				inQ = 0
			}
		case c == '"' || c == '\'':
			inQ = c
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
			if depth == 0 {
				return i + 1
			}
		}
	}
	return len(e.src)
}

// writeSecretFile replaces a key file's contents, owner-only, atomically.
func writeSecretFile(path, value string) error {
	if _, err := safefile.Read(path, maxKeyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("key file %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".new-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.WriteString(value + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
