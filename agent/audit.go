package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/hybridconn/hybrid/internal/safefile"
)

// AuditEvent is one line of the audit log.
type AuditEvent struct {
	Time       time.Time `json:"time"`
	Event      string    `json:"event"` // open, close, deny, unreachable, revoke, http
	HC         string    `json:"hc"`
	Stream     string    `json:"stream"`
	Target     string    `json:"target,omitempty"`   // what the stream asked for
	Endpoint   string    `json:"endpoint,omitempty"` // what the agent dialled
	SenderKey  string    `json:"sender_key,omitempty"`
	SenderAddr string    `json:"sender_addr,omitempty"`
	Relay      string    `json:"relay,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Method     string    `json:"method,omitempty"` // HTTP mode: the request's method,
	Path       string    `json:"path,omitempty"`   // its target (path and query, as the relay gave it),
	Status     int       `json:"status,omitempty"` // and the status answered
	// BytesIn, BytesOut and DurationMS belong to close lines (and the
	// http lines of HTTP-mode exchanges), which always carry all three (0
	// included); other lines leave them out.
	BytesIn    int64 `json:"bytes_to_resource,omitempty"`
	BytesOut   int64 `json:"bytes_from_resource,omitempty"`
	DurationMS int64 `json:"duration_ms,omitempty"`
}

// MarshalJSON writes a close (or http) line with its bytes and duration
// even when they are 0, so every such line has one shape; other lines
// without them.
func (e AuditEvent) MarshalJSON() ([]byte, error) {
	type plain AuditEvent // without this method
	if e.Event != "close" && e.Event != "http" {
		return json.Marshal(plain(e))
	}
	return json.Marshal(struct {
		plain
		BytesIn    int64 `json:"bytes_to_resource"`
		BytesOut   int64 `json:"bytes_from_resource"`
		DurationMS int64 `json:"duration_ms"`
	}{plain(e), e.BytesIn, e.BytesOut, e.DurationMS})
}

// Audit appends one JSON line per event to a file. A nil *Audit records
// nothing, so callers need no checks.
type Audit struct {
	mu  sync.Mutex
	f   *os.File
	enc *json.Encoder
}

// OpenAudit opens (or creates) path for appending, readable by its owner only.
func OpenAudit(path string) (*Audit, error) {
	f, err := safefile.OpenAppend(path, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return &Audit{f: f, enc: json.NewEncoder(f)}, nil
}

// Record writes ev, stamping the time if unset. Each event is written with
// one write(2), so concurrent agents appending to one file don't interleave.
func (a *Audit) Record(ev AuditEvent) {
	if a == nil {
		return
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f != nil {
		a.enc.Encode(ev)
	}
}

// Close closes the file; later Records are dropped.
func (a *Audit) Close() error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return nil
	}
	err := a.f.Close()
	a.f = nil
	return err
}
