package rules

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/safefile"
)

// Watcher defaults (see WatchOptions).
const (
	// DefaultDebounce: editors emit several events per save (truncate, write,
	// chmod, rename); waiting for a quiet spell reads the final content once.
	DefaultDebounce = 100 * time.Millisecond
	// DefaultPoll: a slow re-read as a safety net for missed events (NFS,
	// overlay filesystems, inotify queue overflow, a watch that died).
	DefaultPoll = 30 * time.Second
)

const (
	// readRetryWindow: a delete-then-create save leaves the file missing for
	// a moment; a read failure is only counted once it has lasted this long.
	readRetryWindow = time.Second
	// maxDebounceFactor bounds the debounce under a steady stream of events
	// (a busy directory): a reload happens at the latest this many debounce
	// periods after the first pending event.
	maxDebounceFactor = 10
	// renotifyMin is the first delay before recreating a broken fsnotify
	// watcher; it doubles up to the poll interval.
	renotifyMin = 500 * time.Millisecond
)

// ErrWatcherRunning is returned by Watcher.Run when the Watcher is already
// running.
var ErrWatcherRunning = errors.New("rules: watcher already running")

// WatchOptions tune a Watcher; zero values mean the defaults.
type WatchOptions struct {
	// Debounce is how long the directory must be quiet after an event before
	// the file is re-read. Default DefaultDebounce.
	Debounce time.Duration
	// Poll is the interval of a re-read that does not wait for events (a
	// no-op when the content's hash is unchanged). Default DefaultPoll.
	Poll time.Duration
	// Logger receives reload outcomes: info "config reloaded", one error line
	// per problem ("file:line: field: message"), warnings about the file
	// watch. Default hclog.NewNullLogger().
	Logger hclog.Logger
	// Sections limits each re-read to the sections the process runs (see
	// ParseSections); empty means all.
	Sections []string
	// OnFailure, if set, is called with the message of each refused reload
	// (as counted in WatchStats.Failed), after it is recorded.
	OnFailure func(msg string)
}

// Apply is called with each new valid snapshot; it returns an error when the
// roles could not take it (then the reload counts as failed and the Watcher
// keeps the previous snapshot as current).
//
// Apply is called from one goroutine at a time, never concurrently with
// itself, and Current still returns the previous snapshot while it runs. It
// should not block for long: reloads queue behind it (they coalesce).
type Apply func(next *Config) error

// WatchStats counts a Watcher's reloads. Re-reads that find the same content
// (same sha256) or an identical snapshot are not counted.
type WatchStats struct {
	// Succeeded counts snapshots applied.
	Succeeded int64
	// Failed counts reloads refused: unreadable, empty or invalid file, or
	// Apply returned an error. The same bad content is counted (and logged)
	// once; Reload retries it.
	Failed int64
	// LastError is the text of the last failure ("file:line: field: message"
	// lines for an invalid file); "" before any.
	LastError string
	// LastErrorTime is when the last failure happened; zero before any.
	LastErrorTime time.Time
	// LastSuccessTime is when a snapshot was last applied; zero before any.
	LastSuccessTime time.Time
	// Hash is the hex sha256 of the file content behind Current; "" until the
	// first re-read (Run starts with one) has matched or replaced the
	// initial snapshot.
	Hash string
}

// Watcher reloads a config file when it changes: it watches the file's
// directory (editors save by rename, Kubernetes swaps a ..data symlink),
// debounces, re-reads, skips unchanged content by hash, parses with Parse
// (the same path as Load and "hybrid check") and hands each valid snapshot to
// an Apply func. Any failure keeps the last good snapshot. See NewWatcher.
type Watcher struct {
	path     string
	apply    Apply
	debounce time.Duration
	poll     time.Duration
	log      hclog.Logger
	sections []string
	onFail   func(msg string)

	// newNotify creates the fsnotify watcher; tests replace it.
	newNotify func() (*fsnotify.Watcher, error)

	cur     atomic.Pointer[Config]
	reqs    chan struct{} // reload requests to the worker; cap 1: coalesces
	force   atomic.Bool   // a pending request comes from Reload
	running atomic.Bool
	reloads atomic.Int64 // re-reads finished, counted or not; for tests

	mu       sync.Mutex
	stats    WatchStats
	failedAs string // hash (or read error) of the content last refused
}

// NewWatcher returns a Watcher for the config file at path, whose current
// snapshot is initial (normally what Load(path) returned; nil is allowed and
// makes the first re-read apply the file). apply must not be nil. Nothing
// happens until Run.
func NewWatcher(path string, initial *Config, apply Apply, opts WatchOptions) *Watcher {
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.Poll <= 0 {
		opts.Poll = DefaultPoll
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	w := &Watcher{
		path:      path,
		apply:     apply,
		debounce:  opts.Debounce,
		poll:      opts.Poll,
		log:       opts.Logger,
		sections:  opts.Sections,
		onFail:    opts.OnFailure,
		newNotify: fsnotify.NewWatcher,
		reqs:      make(chan struct{}, 1),
	}
	w.cur.Store(initial)
	return w
}

// Current returns the last snapshot successfully applied (initially the one
// given to NewWatcher). Safe for concurrent use; treat it as read-only.
func (w *Watcher) Current() *Config { return w.cur.Load() }

// Stats returns a copy of the reload counters. Safe for concurrent use.
func (w *Watcher) Stats() WatchStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}

// Reload asks for a reload now, without debounce (wire it to SIGHUP). It does
// not block and requests coalesce. Unlike an event or a poll, it re-parses
// even unchanged content, so it picks up changed key files and environment
// overrides, and it retries content that failed before; a snapshot identical
// to the current one is still not applied. A request made before Run is
// served when Run starts.
func (w *Watcher) Reload() {
	w.force.Store(true)
	w.request()
}

// request queues one reload for the worker unless one is already queued.
func (w *Watcher) request() {
	select {
	case w.reqs <- struct{}{}:
	default:
	}
}

// Run watches and reloads until ctx is done, then returns nil once every
// goroutine it started has exited. It starts with one re-read, which catches
// a change made between Load and Run and otherwise only records the content's
// hash. If the file watch cannot be set up or breaks, Run logs a warning,
// relies on the poll and keeps trying to set it up again; it never gives up
// on its own. It returns ErrWatcherRunning if Run is already running.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return ErrWatcherRunning
	}
	defer w.running.Store(false)

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	// The worker does every reload, one at a time, so that a slow parse or
	// Apply never stops the loop below from draining fsnotify's channels.
	wg.Go(func() { w.worker(ctx) })

	l := &watchLoop{w: w, watched: map[string]bool{}}
	l.run(ctx)
	return nil
}

// worker serves reload requests until ctx is done.
func (w *Watcher) worker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.reqs:
			w.reload(ctx, w.force.Swap(false))
			w.reloads.Add(1)
		}
	}
}

// watchLoop is the state of Run's own goroutine: the fsnotify watcher, the
// debounce and the timers. Only that goroutine touches it.
type watchLoop struct {
	w        *Watcher
	fw       *fsnotify.Watcher // nil while broken: poll only
	watched  map[string]bool   // directories added to fw
	renotify time.Duration     // current delay before recreating fw
	// addFailed: the config's directory could not be added (warned).
	addFailed bool
}

func (l *watchLoop) run(ctx context.Context) {
	w := l.w
	// Timers are created stopped (Go 1.23+ semantics: Reset and Stop need no
	// draining).
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	poll := time.NewTicker(w.poll)
	defer func() {
		debounce.Stop()
		retry.Stop()
		poll.Stop()
		l.closeNotify()
	}()

	l.renotify = renotifyMin
	if !l.openNotify() {
		retry.Reset(l.backoff())
	}
	// The first re-read comes after the watch is set up, so no change is lost
	// between Load and Run.
	w.request()

	var pending bool    // a debounced reload is scheduled
	var first time.Time // first event of the pending burst
	maxWait := maxDebounceFactor * w.debounce

	for {
		var events <-chan fsnotify.Event
		var errs <-chan error
		if l.fw != nil {
			events, errs = l.fw.Events, l.fw.Errors
		}
		select {
		case <-ctx.Done():
			return

		case ev, ok := <-events:
			if !ok {
				l.broken(retry, "file watch stopped")
				continue
			}
			// Any event in a watched directory: a Kubernetes swap shows
			// events only for ..data, never for the file's own name, and
			// re-reading is cheap (the hash skips no-ops).
			w.log.Trace("config directory event", "event", ev.String())
			l.renotify = renotifyMin // the watch works: a later failure starts over
			now := time.Now()
			if !pending {
				pending, first = true, now
			}
			debounce.Reset(min(w.debounce, first.Add(maxWait).Sub(now)))

		case err, ok := <-errs:
			if !ok {
				l.broken(retry, "file watch stopped")
				continue
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				// Events were lost: rescan now.
				w.log.Warn("file watch overflowed, re-reading the config", "file", w.path)
				w.request()
				continue
			}
			// fsnotify retries a failing read in a tight loop: drop the
			// watcher and build a new one later.
			l.broken(retry, "file watch failed: "+err.Error())

		case <-debounce.C:
			pending = false
			l.ensureWatches()
			w.request()

		case <-poll.C:
			l.ensureWatches()
			w.request()

		case <-retry.C:
			if l.openNotify() {
				w.log.Info("file watch restored", "file", w.path)
				// Events may have been missed while it was down.
				w.request()
			} else {
				retry.Reset(l.backoff())
			}
		}
	}
}

// broken drops a failed fsnotify watcher, re-reads at once (events may have
// been lost) and schedules its recreation; the poll carries on meanwhile.
func (l *watchLoop) broken(retry *time.Timer, why string) {
	l.w.log.Warn(why+"; polling until it can be set up again",
		"file", l.w.path, "poll", l.w.poll)
	l.closeNotify()
	l.w.request()
	retry.Reset(l.backoff())
}

// backoff returns the delay before the next attempt to recreate the fsnotify
// watcher and doubles it for the one after, up to the poll interval (which
// covers for the watch meanwhile).
func (l *watchLoop) backoff() time.Duration {
	d := l.renotify
	l.renotify = min(2*l.renotify, max(l.w.poll, renotifyMin))
	return d
}

// openNotify creates the fsnotify watcher and adds the directories. It
// reports false, with a warning logged, when the watcher cannot be created;
// a directory that cannot be added yet is retried by ensureWatches.
func (l *watchLoop) openNotify() bool {
	fw, err := l.w.newNotify()
	if err != nil {
		l.w.log.Warn("cannot watch the config file, polling only",
			"file", l.w.path, "poll", l.w.poll, "error", err)
		return false
	}
	l.fw = fw
	l.ensureWatches()
	return true
}

func (l *watchLoop) closeNotify() {
	if l.fw != nil {
		l.fw.Close()
		l.fw = nil
	}
	clear(l.watched)
}

// watchDirs returns the directories to watch: the one of the path as given
// (where a rename-save or a Kubernetes ..data swap happens) and, when the
// path is a symlink, the one of the file it resolves to now (where an edit of
// the target happens).
func (l *watchLoop) watchDirs() []string {
	dir := filepath.Dir(l.w.path)
	dirs := []string{dir}
	if real, err := filepath.EvalSymlinks(l.w.path); err == nil {
		if rd := filepath.Dir(real); rd != dir {
			dirs = append(dirs, rd)
		}
	}
	return dirs
}

// ensureWatches adds the directories to watch (again: a directory deleted and
// recreated loses its watch; adding an existing one is harmless) and drops a
// symlink target's directory the path no longer resolves to.
func (l *watchLoop) ensureWatches() {
	if l.fw == nil {
		return
	}
	want := l.watchDirs()
	for _, d := range want {
		if err := l.fw.Add(d); err != nil {
			// Warn once per outage of the main directory (retried at each
			// poll); a vanished symlink target's directory is routine.
			if d == want[0] && !l.addFailed {
				l.w.log.Warn("cannot watch the config directory, relying on the poll",
					"dir", d, "poll", l.w.poll, "error", err)
				l.addFailed = true
			}
			delete(l.watched, d)
			continue
		}
		if d == want[0] {
			l.addFailed = false
		}
		l.watched[d] = true
	}
	for d := range l.watched {
		if !slices.Contains(want, d) {
			l.fw.Remove(d) // may already be gone with its directory
			delete(l.watched, d)
		}
	}
}

// reload re-reads the file and applies it if it changed and is valid. force
// (from Reload) re-parses unchanged content and retries refused content.
func (w *Watcher) reload(ctx context.Context, force bool) {
	data, err := w.read(ctx)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		msg := fmt.Sprintf("%s: cannot read config: %v", w.path, unwrapPath(err))
		if w.refused("read:"+msg, force) {
			return
		}
		w.log.Error(msg + "; keeping the last good config")
		w.fail(msg, "read:"+msg)
		return
	}

	sum := sha256.Sum256(data)
	hash := hex.EncodeToString(sum[:])
	w.mu.Lock()
	same := hash == w.stats.Hash
	w.mu.Unlock()
	if (same && !force) || w.refused(hash, force) {
		return
	}

	if len(bytes.TrimSpace(data)) == 0 {
		// A truncate-then-write save shows an empty file for a moment; the
		// debounce normally hides it, and it is never a config we apply.
		msg := w.path + ": empty file, keeping last good config"
		w.log.Error(msg)
		w.fail(msg, hash)
		return
	}

	next, err := ParseSections(w.path, data, w.sections...)
	if err != nil {
		var es Errors
		if errors.As(err, &es) {
			for _, e := range es {
				w.log.Error(e.Error())
			}
		} else {
			w.log.Error(err.Error())
		}
		w.log.Error("invalid config, keeping the last good one", "file", w.path, "hash", hash[:12])
		w.fail(err.Error(), hash)
		return
	}

	if reflect.DeepEqual(next, w.cur.Load()) {
		// Same snapshot from different bytes (whitespace), the first
		// re-read after Load, or a Reload with nothing new.
		w.log.Debug("config unchanged", "file", w.path, "hash", hash[:12])
		w.mu.Lock()
		w.stats.Hash, w.failedAs = hash, ""
		w.mu.Unlock()
		return
	}

	if err := w.callApply(next); err != nil {
		msg := fmt.Sprintf("%s: config not applied: %v", w.path, err)
		w.log.Error(msg+"; keeping the previous config", "hash", hash[:12])
		w.fail(msg, hash)
		return
	}
	w.cur.Store(next)
	w.mu.Lock()
	w.stats.Succeeded++
	w.stats.LastSuccessTime = time.Now()
	w.stats.Hash, w.failedAs = hash, ""
	w.mu.Unlock()
	w.log.Info("config reloaded", "file", w.path, "hash", hash[:12])
}

// read reads the file, retrying for readRetryWindow while it is missing or
// unreadable (delete-then-create saves, symlink swaps).
func (w *Watcher) read(ctx context.Context) ([]byte, error) {
	deadline := time.Now().Add(readRetryWindow)
	every := min(w.debounce, readRetryWindow)
	t := time.NewTimer(every)
	t.Stop()
	defer t.Stop()
	for {
		data, err := safefile.Read(w.path, safefile.MaxConfig)
		if err == nil || errors.Is(err, safefile.ErrNotRegular) || errors.Is(err, safefile.ErrTooLarge) ||
			!time.Now().Before(deadline) {
			return data, err
		}
		t.Reset(every)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// refused reports whether key (a content hash or read error) is what was last
// refused, and so was counted and logged already; force retries it.
func (w *Watcher) refused(key string, force bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !force && key == w.failedAs
}

func (w *Watcher) fail(msg, key string) {
	w.mu.Lock()
	w.stats.Failed++
	w.stats.LastError = msg
	w.stats.LastErrorTime = time.Now()
	w.failedAs = key
	w.mu.Unlock()
	if w.onFail != nil {
		w.onFail(msg)
	}
}

// callApply calls apply, turning a panic into an error: a role that cannot
// take a config must not take the process down with the reload goroutine.
func (w *Watcher) callApply(next *Config) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("apply panicked: %v", r)
		}
	}()
	return w.apply(next)
}

// unwrapPath drops the *PathError's repetition of the path, which the
// message already starts with.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
