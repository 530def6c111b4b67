// Package status defines the outcome codes that relay, agent and proxy
// exchange. They are semantic, not tied to a wire format: the native protocol
// carries them as one byte, the WebSocket protocol as HTTP status codes.
package status

import (
	"errors"
	"fmt"
	"net/http"
)

// Code is the outcome of a handshake step. The zero value is OK.
type Code uint8

// Codes. Their numeric values are part of the native wire protocol: never
// renumber, only append.
const (
	OK           Code = 0  // success
	BadRequest   Code = 1  // malformed or unexpected frame
	Unauthorized Code = 2  // token missing, malformed, expired, or signature wrong
	Forbidden    Code = 3  // token valid, but lacks the right or covers another resource
	NotFound     Code = 4  // no such hybrid connection at the relay (or at the agent)
	NoListener   Code = 5  // the hybrid connection exists but no agent is listening
	Refused      Code = 6  // the agent refused the requested target
	Unreachable  Code = 7  // the agent could not reach the published resource
	Timeout      Code = 8  // a peer did not answer in time
	Busy         Code = 9  // a limit was reached; retry later
	Version      Code = 10 // unsupported protocol version
	Internal     Code = 11 // a bug or an unexpected local failure
	ShuttingDown Code = 12 // the relay or agent is stopping
)

var names = [...]string{
	OK:           "ok",
	BadRequest:   "bad request",
	Unauthorized: "unauthorized",
	Forbidden:    "forbidden",
	NotFound:     "unknown hybrid connection",
	NoListener:   "no agent listening",
	Refused:      "refused by agent",
	Unreachable:  "resource unreachable",
	Timeout:      "timeout",
	Busy:         "busy",
	Version:      "unsupported protocol version",
	Internal:     "internal error",
	ShuttingDown: "shutting down",
}

// String returns a short human-readable name.
func (c Code) String() string {
	if int(c) < len(names) && names[c] != "" {
		return names[c]
	}
	return fmt.Sprintf("code %d", uint8(c))
}

var reasons = [...]string{
	OK:           "ok",
	BadRequest:   "bad_request",
	Unauthorized: "unauthorized",
	Forbidden:    "forbidden",
	NotFound:     "not_found",
	NoListener:   "no_listener",
	Refused:      "refused",
	Unreachable:  "unreachable",
	Timeout:      "timeout",
	Busy:         "busy",
	Version:      "version",
	Internal:     "internal",
	ShuttingDown: "shutting_down",
}

// Reason returns the code's name as a metric label value: lower case,
// words joined by "_" ("no_listener", "unauthorized"). Unknown codes give
// "internal", so a label's values stay a fixed set.
func (c Code) Reason() string {
	if int(c) < len(reasons) {
		return reasons[c]
	}
	return "internal"
}

// Valid reports whether c is a known code.
func (c Code) Valid() bool { return int(c) < len(names) }

// Error is a failure with a code and a detail message, as reported by a peer
// or decided locally.
type Error struct {
	Code Code
	Msg  string
}

// Error returns "name: message".
func (e *Error) Error() string {
	if e.Msg == "" {
		return e.Code.String()
	}
	return e.Code.String() + ": " + e.Msg
}

// Is makes errors.Is(err, status.Errorf(c, "")) match on the code alone.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code
}

// Errorf returns an *Error with code c and a formatted message.
func Errorf(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Msg: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code carried by err: OK for nil, Internal when err
// carries no *Error.
func CodeOf(err error) Code {
	if err == nil {
		return OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}

// HTTPStatus maps a status code to the HTTP status of a refused handshake.
func HTTPStatus(c Code) int {
	switch c {
	case OK:
		return http.StatusOK
	case BadRequest, Version:
		return http.StatusBadRequest
	case Unauthorized:
		return http.StatusUnauthorized
	case Forbidden:
		return http.StatusForbidden
	case NotFound, NoListener:
		return http.StatusNotFound
	case Refused, Unreachable:
		return http.StatusBadGateway
	case Timeout:
		return http.StatusGatewayTimeout
	case Busy:
		return http.StatusTooManyRequests
	case ShuttingDown:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// CodeOfHTTP maps an HTTP status (of a refused handshake, or an Azure
// listener's sb-hc-statusCode) back to a status code.
func CodeOfHTTP(h int) Code {
	switch {
	case h >= 200 && h < 300:
		return OK
	case h == http.StatusUnauthorized:
		return Unauthorized
	case h == http.StatusForbidden:
		return Forbidden
	case h == http.StatusNotFound || h == http.StatusGone:
		return NotFound
	case h == http.StatusTooManyRequests:
		return Busy
	case h == http.StatusBadGateway:
		return Refused
	case h == http.StatusGatewayTimeout || h == http.StatusRequestTimeout:
		return Timeout
	case h == http.StatusServiceUnavailable:
		return ShuttingDown
	case h >= 400 && h < 500:
		return BadRequest
	}
	return Internal
}
