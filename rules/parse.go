package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/viper"
	"gopkg.in/yaml.v3"

	"github.com/hybridconn/hybrid/internal/safefile"
)

// Load reads and parses the config file at path (see Parse). An unreadable
// file gives an Error with line 0 that wraps the I/O error; problems in the
// file give Errors.
func Load(path string) (*Config, error) { return LoadSections(path) }

// LoadSections is Load for a process that runs only the named sections
// ("relay", "agent", "proxy"; none means all): see ParseSections.
func LoadSections(path string, sections ...string) (*Config, error) {
	data, err := safefile.Read(path, safefile.MaxConfig)
	if err != nil {
		var pe *os.PathError
		msg := err.Error()
		if errors.As(err, &pe) {
			msg = fmt.Sprintf("cannot read config: %v", pe.Err)
		}
		return nil, Error{File: path, Msg: msg, err: err}
	}
	return ParseSections(path, data, sections...)
}

// Parse decodes and validates one config file's contents. file names it in
// messages and in Config.File, and its directory is where relative paths
// (tls, audit, *_file) are resolved (the working directory for EmbeddedFile).
//
// On any problem it returns a nil *Config and an Errors holding every problem
// found, sorted by line. It reads the environment (${VAR} secrets,
// HYBRID_LOG_LEVEL, HYBRID_LOG_FORMAT) and key files, and keeps no state: it
// is safe to call concurrently.
func Parse(file string, data []byte) (*Config, error) { return parse(file, data, nil) }

// ParseSections is Parse for a process that runs only the named sections
// ("relay", "agent", "proxy"; none means all). Each process reads only what
// it runs: the other sections are not decoded (an unset ${VAR} in the agent
// section of a file a relay also reads is not the relay's business) and are
// nil in the result. `hybrid check` uses Parse, which judges the whole file.
func ParseSections(file string, data []byte, sections ...string) (*Config, error) {
	var skip map[string]bool
	if len(sections) > 0 {
		skip = map[string]bool{"relay": true, "agent": true, "proxy": true}
		for _, s := range sections {
			delete(skip, s)
		}
	}
	return parse(file, data, skip)
}

// parse is Parse leaving the sections in skip undecoded.
func parse(file string, data []byte, skip map[string]bool) (*Config, error) {
	d := newDecoder(file, filepath.Dir(file), skip)
	root, err := parseYAML(data)
	switch {
	case err != nil:
		d.syntaxError(err, data)
	case root == nil:
		d.errorf(0, "", "no relay, agent or proxy section (the file is empty)")
	default:
		return d.decode(root)
	}
	d.errs.sort()
	return nil, d.errs
}

// newDecoder returns a decoder for file whose relative paths resolve against
// dir (the working directory for EmbeddedFile and FlagsFile).
func newDecoder(file, dir string, skip map[string]bool) *decoder {
	if file == EmbeddedFile || file == FlagsFile {
		dir = "."
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return &decoder{file: file, dir: dir, lines: map[string]int{}, skip: skip}
}

// decode decodes and checks the document whose root node is root: the
// config, or every problem found (Errors, sorted by line).
func (d *decoder) decode(root *yaml.Node) (*Config, error) {
	cfg := d.root(root)
	levelEnv, formatEnv := envOverride(&cfg.Log)
	d.finishLog(&cfg.Log, levelEnv, formatEnv)
	if len(d.errs) > 0 {
		d.errs.sort()
		return nil, d.errs
	}
	cfg.lines = d.lines
	d.warns.sort()
	cfg.Warnings = d.warns
	return cfg, nil
}

// errMultipleDocs is returned by parseYAML for a stream of several documents.
type errMultipleDocs struct{ line int }

func (e errMultipleDocs) Error() string { return "more than one YAML document" }

// parseYAML returns the root node of the single document in data, or nil for
// a file with no document (empty, or only comments).
func parseYAML(data []byte) (root *yaml.Node, err error) {
	defer func() {
		// yaml.v3 has panicked on hostile input before; never take the
		// process down over a config file.
		if r := recover(); r != nil {
			root, err = nil, fmt.Errorf("yaml: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, nil
		}
		return nil, err
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		return nil, errMultipleDocs{line: next.Line}
	case err != io.EOF:
		return nil, err
	}
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return nil, nil
		}
		return doc.Content[0], nil
	}
	return &doc, nil
}

// envOverride applies HYBRID_LOG_LEVEL and HYBRID_LOG_FORMAT through a fresh
// viper (only environment overrides; the file is decoded strictly by us). It
// returns the names of the variables that took effect.
func envOverride(l *Log) (levelEnv, formatEnv string) {
	v := viper.New()
	v.SetEnvPrefix("HYBRID")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv() // empty variables count as unset (AllowEmptyEnv is off)
	if s := v.GetString("log.level"); s != "" {
		l.Level, levelEnv = s, "HYBRID_LOG_LEVEL"
	}
	if s := v.GetString("log.format"); s != "" {
		l.Format, formatEnv = s, "HYBRID_LOG_FORMAT"
	}
	return levelEnv, formatEnv
}
