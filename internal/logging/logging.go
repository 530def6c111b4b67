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
	"time"

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
	sink   hclog.SinkAdapter // registered: inner, behind durations
	inner  hclog.Logger      // the sink that writes
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
		r.inner.SetLevel(lv)
	} else {
		inner := hclog.NewSinkAdapter(&hclog.LoggerOptions{
			Output:     r.out,
			Level:      lv,
			JSONFormat: format == "json",
			TimeFormat: "2006-01-02T15:04:05.000Z0700",
			Color:      hclog.ColorOff,
		})
		sink := durations{inner}
		r.RegisterSink(sink)
		if r.sink != nil {
			r.DeregisterSink(r.sink)
		}
		r.sink, r.inner = sink, inner.(hclog.Logger)
	}
	r.level, r.format = level, format
	return nil
}

// durations is a sink that writes every time.Duration value as its
// String() ("1.5s", "250ms"): hclog's text format does so already, but its
// JSON format would write raw nanoseconds.
type durations struct{ hclog.SinkAdapter }

// Accept implements hclog.SinkAdapter. args is the intercept logger's own
// copy, so it may be changed in place.
func (d durations) Accept(name string, level hclog.Level, msg string, args ...interface{}) {
	for i := 1; i < len(args); i += 2 {
		if v, ok := args[i].(time.Duration); ok {
			args[i] = v.String()
		}
	}
	d.SinkAdapter.Accept(name, level, msg, args...)
}
