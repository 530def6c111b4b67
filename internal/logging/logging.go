// Package logging builds the one root logger of a hybrid process. Its level
// and format can change while the process runs (live reload): every logger
// derived from the root with Named or With follows.
package logging

import (
	"fmt"
	"io"
	"log"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// Levels are the accepted level names. hclog maps unknown names (even
// "warning") to trace, so names are checked here first.
var Levels = []string{"trace", "debug", "info", "warn", "error"}

// ParseLevel returns the hclog level for name, or an error for names outside Levels.
func ParseLevel(name string) (hclog.Level, error) {
	for _, l := range Levels {
		if name == l {
			return hclog.LevelFromString(l), nil
		}
	}
	return hclog.NoLevel, fmt.Errorf("unknown log level %q (want %s)", name, strings.Join(Levels, ", "))
}

// Root is a process's root logger. It is an hclog intercept logger whose
// own output is off; one sink does the writing, and Set swaps that sink, so
// loggers already handed out (Named, With) change format and level too.
type Root struct {
	hclog.InterceptLogger
	out io.Writer

	mu     sync.Mutex
	sink   hclog.SinkAdapter
	level  string
	format string
}

// New returns a root logger writing to w at level ("" = info) in format
// "text" or "json" ("" = text). It also routes the standard library's
// default logger into it, so libraries' log lines keep our format.
func New(w io.Writer, level, format string) (*Root, error) {
	r := &Root{out: w}
	r.InterceptLogger = hclog.NewInterceptLogger(&hclog.LoggerOptions{Output: io.Discard, Level: hclog.Off})
	if err := r.Set(level, format); err != nil {
		return nil, err
	}
	log.SetOutput(r.StandardWriter(&hclog.StandardLoggerOptions{InferLevels: true}))
	log.SetFlags(0)
	return r, nil
}

// Set changes the level and format; on an error nothing changes.
func (r *Root) Set(level, format string) error {
	if level == "" {
		level = "info"
	}
	if format == "" {
		format = "text"
	}
	lv, err := ParseLevel(level)
	if err != nil {
		return err
	}
	if format != "text" && format != "json" {
		return fmt.Errorf("unknown log format %q (want text or json)", format)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if level == r.level && format == r.format {
		return nil
	}
	if r.sink != nil && format == r.format {
		r.sink.(hclog.Logger).SetLevel(lv)
	} else {
		sink := hclog.NewSinkAdapter(&hclog.LoggerOptions{
			Output:     r.out,
			Level:      lv,
			JSONFormat: format == "json",
			TimeFormat: "2006-01-02T15:04:05.000Z0700",
			Color:      hclog.ColorOff,
		})
		r.RegisterSink(sink)
		if r.sink != nil {
			r.DeregisterSink(r.sink)
		}
		r.sink = sink
	}
	r.level, r.format = level, format
	return nil
}
