// Package events keeps a process's recent noteworthy events — denials,
// refusals, reload errors — in a small bounded ring, for the status page
// and /status. It imports no role and no config: roles feed it, the admin
// endpoint reads it.
package events

import (
	"net"
	"sync"
	"time"
)

// Kinds of events.
const (
	// Denial is a party refused for its credentials or rights: a bad or
	// expired token, a key without the right, a target an agent does not
	// publish.
	Denial = "denial"
	// Refusal is a stream that could not be set up for another reason: no
	// agent listening, resource unreachable, busy, timeout.
	Refusal = "refusal"
	// ReloadError is a configuration reload that was refused.
	ReloadError = "reload_error"
)

// DefaultSize is how many events a Ring made by New keeps.
const DefaultSize = 64

// Event is one thing that happened.
type Event struct {
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`             // Denial, Refusal or ReloadError
	Source string    `json:"source"`           // the role that saw it: relay, agent, proxy, config
	HC     string    `json:"hc,omitempty"`     // the hybrid connection, if any
	Remote string    `json:"remote,omitempty"` // the other party's address, if any
	Reason string    `json:"reason,omitempty"` // a short machine-friendly reason (status code name)
	Msg    string    `json:"msg"`
	// Count is how many times in a row this event happened (the same kind,
	// source, connection, remote host and message); Time is the last one.
	Count int `json:"count"`
}

// Ring holds the most recent events, oldest dropped first. Repeats of the
// newest event are folded into it, so a flood of one failure does not push
// everything else out. A nil *Ring records nothing and lists nothing, so
// callers need no checks. It is safe for concurrent use.
type Ring struct {
	mu   sync.Mutex
	buf  []Event // a circular buffer of len size
	next int     // where the next event goes
	n    int     // events held
}

// New returns a Ring that keeps the last size events (DefaultSize if size
// is not positive).
func New(size int) *Ring {
	if size <= 0 {
		size = DefaultSize
	}
	return &Ring{buf: make([]Event, size)}
}

// maxMsg bounds an event's message: events come from errors that may
// quote what a peer sent.
const maxMsg = 300

// Add records e, stamping the time if unset.
func (r *Ring) Add(e Event) {
	if r == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if len(e.Msg) > maxMsg {
		e.Msg = e.Msg[:maxMsg] + "…"
	}
	e.Count = 1
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n > 0 {
		last := &r.buf[(r.next-1+len(r.buf))%len(r.buf)]
		if same(*last, e) {
			last.Count++
			last.Time = e.Time
			last.Remote = e.Remote
			return
		}
	}
	r.buf[r.next] = e
	r.next = (r.next + 1) % len(r.buf)
	if r.n < len(r.buf) {
		r.n++
	}
}

// same reports whether b repeats a: the same kind, source, connection,
// reason and message, from the same host (any port).
func same(a, b Event) bool {
	return a.Kind == b.Kind && a.Source == b.Source && a.HC == b.HC && a.Reason == b.Reason &&
		a.Msg == b.Msg && host(a.Remote) == host(b.Remote)
}

func host(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// List returns the events held, newest first.
func (r *Ring) List() []Event {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Event, 0, r.n)
	for i := 1; i <= r.n; i++ {
		out = append(out, r.buf[(r.next-i+len(r.buf))%len(r.buf)])
	}
	return out
}
