// Package limit counts authentication failures per source address, so that
// a misconfigured or hostile client cannot burn CPU and flood the log. The
// relay uses it for tokens, the proxy for SOCKS passwords.
package limit

import (
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Failure limits per source address. Keys are 256-bit, so this is not about
// guessing them: a well-configured client never fails, so the limit can be
// tight without harming anyone.
const (
	Burst       = 30              // failures allowed in a row
	Rate        = rate.Limit(5)   // failures per second refilled
	limiterIdle = 5 * time.Minute // forget an address after this long
)

// Failures counts authentication failures per source IP. The zero value is
// not usable: use NewFailures.
type Failures struct {
	mu    sync.Mutex
	addrs map[string]*limiterEntry
	last  time.Time // last sweep
}

type limiterEntry struct {
	lim  *rate.Limiter
	seen time.Time
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

// Blocked reports whether remote has failed too often to be heard now.
func (f *Failures) Blocked(remote string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.addrs[HostOf(remote)]
	return e != nil && e.lim.Tokens() < 1
}

// Fail records a failure by remote.
func (f *Failures) Fail(remote string) {
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
	e.lim.AllowN(now, 1)
	if now.Sub(f.last) > time.Minute { // bound the map: drop quiet addresses
		f.last = now
		for k, v := range f.addrs {
			if now.Sub(v.seen) > limiterIdle {
				delete(f.addrs, k)
			}
		}
	}
}
