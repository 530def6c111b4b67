// Package logging builds the one root logger of a hybrid process.
package logging

import (
	"fmt"
	"io"
	"log"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// Levels are the accepted level names. hclog maps unknown names (even
// "warning") to trace, so names are checked here first.
var Levels = []string{"trace", "debug", "info", "warn", "error"}

// ParseLevel returns the hclog level for name, or an error for names outside Levels.
func ParseLevel(name string) (hclog.Level, error) {
	for _, l := range Levels {
		if strings.EqualFold(name, l) {
			return hclog.LevelFromString(l), nil
		}
	}
	return hclog.NoLevel, fmt.Errorf("unknown log level %q (want %s)", name, strings.Join(Levels, ", "))
}

// New returns a root logger writing to w at level ("" = info) in format
// "text" or "json" ("" = text). It also routes the standard library's
// default logger into it, so libraries' log lines keep our format.
func New(w io.Writer, level, format string) (hclog.Logger, error) {
	if level == "" {
		level = "info"
	}
	lv, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	var jsonFormat bool
	switch format {
	case "", "text":
	case "json":
		jsonFormat = true
	default:
		return nil, fmt.Errorf("unknown log format %q (want text or json)", format)
	}
	l := hclog.New(&hclog.LoggerOptions{
		Output:     w,
		Level:      lv,
		JSONFormat: jsonFormat,
		TimeFormat: "2006-01-02T15:04:05.000Z0700",
		Color:      hclog.ColorOff,
	})
	log.SetOutput(l.StandardWriter(&hclog.StandardLoggerOptions{InferLevels: true}))
	log.SetFlags(0)
	return l, nil
}
