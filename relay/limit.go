package relay

import (
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Failed-authentication limits per source address. Keys are 256-bit, so this
// is not about guessing them: it keeps a misconfigured or hostile client
// from burning CPU on HMACs and flooding the log. A well-configured client
// never fails, so the limit can be tight without harming anyone.
const (
	authFailBurst = 30              // failures allowed in a row
	authFailRate  = rate.Limit(5)   // failures per second refilled
	limiterIdle   = 5 * time.Minute // forget an address after this long
)

// failLimiter counts authentication failures per source IP.
type failLimiter struct {
	mu    sync.Mutex
	addrs map[string]*limiterEntry
	last  time.Time // last sweep
}

type limiterEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

func newFailLimiter() *failLimiter { return &failLimiter{addrs: map[string]*limiterEntry{}} }

func hostOf(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

// blocked reports whether remote has failed too often to be heard now.
func (f *failLimiter) blocked(remote string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.addrs[hostOf(remote)]
	return e != nil && e.lim.Tokens() < 1
}

// fail records a failure by remote.
func (f *failLimiter) fail(remote string) {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	h := hostOf(remote)
	e := f.addrs[h]
	if e == nil {
		e = &limiterEntry{lim: rate.NewLimiter(authFailRate, authFailBurst)}
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
