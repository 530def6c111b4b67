// Package limit counts authentication failures per source address, so that
// a misconfigured or hostile client cannot burn CPU and flood the log. The
// relay uses it for tokens, the proxy for SOCKS passwords.
//
// It never refuses a valid credential: callers always verify what they are
// given and accept what is correct, whatever others at the same address
// (behind a NAT, a corporate proxy, a load balancer, or 127.0.0.1 on the
// proxy's SOCKS port) did before. Only failures are affected: past the
// budget their answers are slowed down, and their log lines are summed.
package limit

import (
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Failure limits per source address. Keys are 256-bit, so this is not about
// guessing them: it bounds how fast one source can make the relay verify
// and log wrong credentials.
const (
	Burst       = 30              // failures answered at once
	Rate        = rate.Limit(5)   // failures per second refilled
	limiterIdle = 5 * time.Minute // forget an address after this long
	// Window is how often a source's failures are logged: the first of a
	// window is logged, the rest are counted into the next line.
	Window = 10 * time.Second
	// Delay is how long a failure over the budget waits for its answer.
	Delay = time.Second
)

// Verdict says how to answer and log one failure.
type Verdict struct {
	// Over is true when the source is over its failure budget: delay the
	// answer (Delay) before refusing.
	Over bool
	// Log is true for the first failure of a window; Suppressed then holds
	// how many failures of the source's previous window were not logged.
	Log        bool
	Suppressed int64
}

// Failures counts authentication failures per source IP. The zero value is
// not usable: use NewFailures.
type Failures struct {
	mu    sync.Mutex
	addrs map[string]*limiterEntry
	last  time.Time // last sweep
}

type limiterEntry struct {
	lim         *rate.Limiter
	seen        time.Time
	windowStart time.Time
	unlogged    int64 // failures of the current window not logged
}

// NewFailures returns an empty counter.
func NewFailures() *Failures { return &Failures{addrs: map[string]*limiterEntry{}} }

// HostOf returns the host part of a host:port address.
func HostOf(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

// Fail records a failure by remote and says how to answer and log it.
func (f *Failures) Fail(remote string) Verdict {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	h := HostOf(remote)
	e := f.addrs[h]
	if e == nil {
		e = &limiterEntry{lim: rate.NewLimiter(Rate, Burst)}
		f.addrs[h] = e
	}
	e.seen = now
	v := Verdict{Over: !e.lim.AllowN(now, 1)}
	if now.Sub(e.windowStart) >= Window {
		v.Log, v.Suppressed = true, e.unlogged
		e.windowStart, e.unlogged = now, 0
	} else {
		e.unlogged++
	}
	if now.Sub(f.last) > time.Minute { // bound the map: drop quiet addresses
		f.last = now
		for k, x := range f.addrs {
			if now.Sub(x.seen) > limiterIdle {
				delete(f.addrs, k)
			}
		}
	}
	return v
}
