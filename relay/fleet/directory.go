package fleet

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/redis/go-redis/v9"
)

// Directory timing. A relay's entry lives Lease after its last refresh, so
// a relay that dies (or loses Redis) vanishes within it.
const (
	Lease   = 3 * time.Second
	Refresh = time.Second
	// settle is how long a change waits for more before it is written:
	// an agent attaching several connections makes one write.
	settle = 20 * time.Millisecond
)

// Redis keys and channels.
const (
	keyPrefix     = "hybrid:fleet:relay:" // + id: the relay's entry (JSON), with the lease as TTL
	keySet        = "hybrid:fleet:relays" // every id that wrote an entry
	chanChanged   = "hybrid:fleet:changed"
	chanReproof   = "hybrid:fleet:reproof"
	maxReproofs   = 1024 // re-proofs waiting to be published
	redisDeadline = 2 * time.Second
)

// entry is what a relay publishes about itself.
type entry struct {
	ID     string         `json:"id"`
	Peer   string         `json:"peer"`   // relay-to-relay address
	Prefix string         `json:"prefix"` // hex of the 4 bytes its ids start with
	HCs    map[string]int `json:"hcs"`    // healthy listeners by connection
}

// directory is the fleet's shared view, kept in Redis and cached here so
// lookups are local-memory fast.
type directory struct {
	rdb  redis.UniversalClient
	self entry
	log  hclog.Logger
	// listeners returns this relay's healthy listeners by connection.
	listeners func() map[string]int
	// reproved is called for a re-proof published by another relay.
	reproved func(reproof)

	changed  chan struct{} // nudges the publisher
	reproofs chan reproof  // to publish, bounded

	mu      sync.Mutex
	others  map[string]entry // by id, without this relay
	lastOK  time.Time        // last successful full refresh
	written string           // this relay's entry as last written
	down    bool             // logged as unavailable
}

// reproof is a sender session's proof of a key, carried to the relays its
// streams run through.
type reproof struct {
	Session string    `json:"session"` // hex
	HC      string    `json:"hc"`
	Rule    string    `json:"rule"`
	Value   string    `json:"value"`
	Expiry  time.Time `json:"expiry"`
	From    string    `json:"from"` // relay id
}

// newRedis makes a client for a redis://, rediss://, redis-sentinel:// or
// redis-cluster:// URL.
func newRedis(raw string) (redis.UniversalClient, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, errors.New("fleet.redis: not a URL")
	}
	switch scheme {
	case "redis", "rediss":
		opt, err := redis.ParseURL(raw)
		if err != nil {
			return nil, fmt.Errorf("fleet.redis: %w", err)
		}
		return redis.NewClient(opt), nil
	case "redis-sentinel", "redis-cluster":
	default:
		return nil, fmt.Errorf("fleet.redis: scheme %q: want redis, rediss, redis-sentinel or redis-cluster", scheme)
	}
	var user, pass string
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		cred := rest[:at]
		rest = rest[at+1:]
		u, p, _ := strings.Cut(cred, ":")
		user, _ = url.PathUnescape(u)
		pass, _ = url.PathUnescape(p)
	}
	hosts, path, _ := strings.Cut(rest, "/")
	path, query, _ := strings.Cut(path, "?")
	addrs := strings.Split(hosts, ",")
	if len(addrs) == 0 || addrs[0] == "" {
		return nil, errors.New("fleet.redis: no host")
	}
	q, _ := url.ParseQuery(query)
	var tlsCfg *tls.Config
	if q.Get("tls") == "true" {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if scheme == "redis-cluster" {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, Username: user, Password: pass, TLSConfig: tlsCfg}), nil
	}
	if path == "" {
		return nil, errors.New("fleet.redis: redis-sentinel:// needs the master name as its path: redis-sentinel://host:26379,host:26379/mymaster")
	}
	db, _ := strconv.Atoi(q.Get("db"))
	return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: path, SentinelAddrs: addrs,
		Username: user, Password: pass, DB: db, TLSConfig: tlsCfg}), nil
}

func newDirectory(rdb redis.UniversalClient, self entry, listeners func() map[string]int, reproved func(reproof), log hclog.Logger) *directory {
	return &directory{rdb: rdb, self: self, listeners: listeners, reproved: reproved, log: log,
		changed: make(chan struct{}, 1), reproofs: make(chan reproof, maxReproofs), others: map[string]entry{}}
}

// available reports whether the directory answered within the lease.
func (d *directory) available() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return time.Since(d.lastOK) < Lease
}

// remote returns the other relays with a healthy listener for hc, the
// most listeners first, ties at random.
func (d *directory) remote(hc string) []entry {
	d.mu.Lock()
	var out []entry
	for _, e := range d.others {
		if e.HCs[hc] > 0 {
			out = append(out, e)
		}
	}
	d.mu.Unlock()
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	sort.SliceStable(out, func(i, j int) bool { return out[i].HCs[hc] > out[j].HCs[hc] })
	return out
}

// hasPeer reports whether a relay of the fleet has peer address addr.
func (d *directory) hasPeer(addr string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.others {
		if e.Peer == addr {
			return true
		}
	}
	return false
}

// byPrefix returns the relay whose ids start with prefix.
func (d *directory) byPrefix(prefix [4]byte) (entry, bool) {
	p := hex.EncodeToString(prefix[:])
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.others {
		if e.Prefix == p {
			return e, true
		}
	}
	return entry{}, false
}

// count returns how many other relays are known.
func (d *directory) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.others)
}

// run keeps this relay's entry written and the others' read until ctx is
// done; then it removes this relay's entry.
func (d *directory) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); d.publish(ctx) }()
	go func() { defer wg.Done(); d.subscribe(ctx) }()
	go func() { defer wg.Done(); d.publishReproofs(ctx) }()
	wg.Wait()
	rctx, cancel := context.WithTimeout(context.Background(), redisDeadline)
	defer cancel()
	d.rdb.Del(rctx, keyPrefix+d.self.ID)
	d.rdb.Publish(rctx, chanChanged, d.self.ID)
}

// publish writes this relay's entry every Refresh, and soon after a change,
// and reads every other relay's.
func (d *directory) publish(ctx context.Context) {
	t := time.NewTicker(Refresh)
	defer t.Stop()
	for {
		d.write(ctx)
		d.readAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.changed:
			select { // let a burst of changes settle into one write
			case <-time.After(settle):
			case <-ctx.Done():
				return
			}
		}
	}
}

func (d *directory) write(ctx context.Context) {
	e := d.self
	e.HCs = d.listeners()
	b, _ := json.Marshal(e)
	wctx, cancel := context.WithTimeout(ctx, redisDeadline)
	defer cancel()
	_, err := d.rdb.TxPipelined(wctx, func(p redis.Pipeliner) error {
		p.Set(wctx, keyPrefix+e.ID, b, Lease)
		p.SAdd(wctx, keySet, e.ID)
		return nil
	})
	if err != nil {
		d.failed(err)
		return
	}
	d.mu.Lock()
	changed := string(b) != d.written
	d.written = string(b)
	d.mu.Unlock()
	if changed {
		d.rdb.Publish(wctx, chanChanged, e.ID)
	}
}

// readAll replaces the cache with every live relay's entry.
func (d *directory) readAll(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, redisDeadline)
	defer cancel()
	ids, err := d.rdb.SMembers(rctx, keySet).Result()
	if err != nil {
		d.failed(err)
		return
	}
	others := map[string]entry{}
	var keys []string
	for _, id := range ids {
		if id != d.self.ID {
			keys = append(keys, keyPrefix+id)
		}
	}
	if len(keys) > 0 {
		vals, err := d.mget(rctx, keys)
		if err != nil {
			d.failed(err)
			return
		}
		for i, v := range vals {
			s, ok := v.(string)
			if !ok {
				// Its lease expired: gone (a relay that died or lost Redis).
				d.rdb.SRem(rctx, keySet, strings.TrimPrefix(keys[i], keyPrefix))
				continue
			}
			var e entry
			if json.Unmarshal([]byte(s), &e) == nil && e.ID != "" {
				others[e.ID] = e
			}
		}
	}
	d.mu.Lock()
	d.others, d.lastOK = others, time.Now()
	wasDown := d.down
	d.down = false
	d.mu.Unlock()
	if wasDown {
		d.log.Info("fleet directory reachable again", "relays", len(others)+1)
	}
}

// mget reads keys; a cluster client needs one GET per key (keys live on
// different slots).
func (d *directory) mget(ctx context.Context, keys []string) ([]any, error) {
	if _, cluster := d.rdb.(*redis.ClusterClient); !cluster {
		return d.rdb.MGet(ctx, keys...).Result()
	}
	out := make([]any, len(keys))
	for i, k := range keys {
		v, err := d.rdb.Get(ctx, k).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// readOne refreshes one relay's entry after it announced a change.
func (d *directory) readOne(ctx context.Context, id string) {
	if id == d.self.ID {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, redisDeadline)
	defer cancel()
	s, err := d.rdb.Get(rctx, keyPrefix+id).Result()
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case errors.Is(err, redis.Nil):
		delete(d.others, id)
	case err == nil:
		var e entry
		if json.Unmarshal([]byte(s), &e) == nil && e.ID == id {
			d.others[id] = e
		}
	}
}

func (d *directory) failed(err error) {
	d.mu.Lock()
	stale := time.Since(d.lastOK) >= Lease
	log := stale && !d.down
	if stale {
		d.down = true
	}
	d.mu.Unlock()
	if log {
		d.log.Error("fleet directory unavailable: local streams go on, cross-relay streams fail until it is back", "error", err)
	}
}

// subscribe follows the other relays' announcements until ctx is done,
// resubscribing after a Redis outage.
func (d *directory) subscribe(ctx context.Context) {
	for ctx.Err() == nil {
		ps := d.rdb.Subscribe(ctx, chanChanged, chanReproof)
		ch := ps.Channel(redis.WithChannelSize(256))
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case m, ok := <-ch:
				if !ok {
					break loop
				}
				switch m.Channel {
				case chanChanged:
					d.readOne(ctx, m.Payload)
				case chanReproof:
					var r reproof
					if json.Unmarshal([]byte(m.Payload), &r) == nil && r.From != d.self.ID {
						d.reproved(r)
					}
				}
			}
		}
		ps.Close()
		select {
		case <-ctx.Done():
		case <-time.After(Refresh):
		}
	}
}

// announceReproof queues r for the other relays; a full queue drops it
// (the streams then live until the rotation grace, as without a fleet
// re-proof).
func (d *directory) announceReproof(r reproof) {
	select {
	case d.reproofs <- r:
	default:
	}
}

func (d *directory) publishReproofs(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-d.reproofs:
			b, _ := json.Marshal(r)
			pctx, cancel := context.WithTimeout(ctx, redisDeadline)
			d.rdb.Publish(pctx, chanReproof, b)
			cancel()
		}
	}
}
