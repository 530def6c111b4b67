package rules

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/go-hclog"
	"github.com/hybridconn/hybrid/internal/testenv"
)

// pickupDeadline is how soon after a save the new config must be applied.
const pickupDeadline = time.Second

// watchConfig returns a valid proxy config with one connection per name.
func watchConfig(names ...string) string {
	var b strings.Builder
	b.WriteString("proxy:\n  relay: 127.0.0.1\n  connections:\n")
	for i, n := range names {
		fmt.Fprintf(&b, "    - name: %s\n      listen: \"127.0.0.2:%d\"\n      key_name: apps\n      key: \"0123456789abcdef0123\"\n",
			n, 15001+i)
	}
	return b.String()
}

// connNames returns the proxy connection names of c ("<nil>" for no config).
func connNames(c *Config) string {
	if c == nil || c.Proxy == nil {
		return "<nil>"
	}
	var names []string
	for _, pc := range c.Proxy.Connections {
		names = append(names, pc.Name)
	}
	return strings.Join(names, ",")
}

// syncBuffer is a log sink the watcher writes while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// recorder is an Apply that records every snapshot it is given and fails
// while fail is set.
type recorder struct {
	mu   sync.Mutex
	got  []*Config
	fail atomic.Bool
}

func (r *recorder) apply(next *Config) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, next)
	if r.fail.Load() {
		return errors.New("boom: port in use")
	}
	return nil
}

func (r *recorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.got {
		out = append(out, connNames(c))
	}
	return out
}

// watched is a running Watcher with its recorder and log.
type watched struct {
	w    *Watcher
	rec  *recorder
	logs *syncBuffer
	stop func() // cancels Run and waits for it; idempotent
}

// startWatcher loads path, starts a Watcher on it and waits until its first
// re-read has set the baseline hash (so the file watch is set up). hook, if
// not nil, adjusts the Watcher before Run.
func startWatcher(t *testing.T, path string, opts WatchOptions, hook func(*Watcher)) *watched {
	t.Helper()
	clearEnv(t)
	initial, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	logs := &syncBuffer{}
	if opts.Logger == nil {
		opts.Logger = hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug})
	}
	rec := &recorder{}
	w := NewWatcher(path, initial, rec.apply, opts)
	if hook != nil {
		hook(w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v, want nil", err)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("Run did not return within 5s of cancel")
			}
		})
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("watcher log:\n%s", logs.String())
		}
	})
	waitFor(t, 5*time.Second, "baseline hash", func() bool { return w.Stats().Hash != "" })
	return &watched{w: w, rec: rec, logs: logs, stop: stop}
}

// hasLogLine reports whether one line of logs holds both level and text.
func hasLogLine(logs, level, text string) bool {
	for line := range strings.Lines(logs) {
		if strings.Contains(line, level) && strings.Contains(line, text) {
			return true
		}
	}
	return false
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitApplied waits until Current has names, and asserts it came within
// pickupDeadline of since. It returns the latency.
func waitApplied(t *testing.T, w *Watcher, names string, since time.Time) time.Duration {
	t.Helper()
	deadline := since.Add(pickupDeadline)
	for connNames(w.Current()) != names {
		if time.Now().After(deadline) {
			t.Fatalf("config %q not applied within %v of the write (current %q, stats %+v)",
				names, pickupDeadline, connNames(w.Current()), w.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(since)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// renameOver saves content the vim way: write a temp file, rename it over.
func renameOver(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".swp")
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// twoChunks truncates path and writes content in two chunks, pausing before
// each: the file is empty, then cut inside a quoted key (invalid YAML), then
// complete.
func twoChunks(t *testing.T, path, content string, pause time.Duration) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cut := strings.LastIndex(content, `key: "`) + len(`key: "01234`)
	if _, err := Parse(path, []byte(content[:cut])); err == nil {
		t.Fatalf("the partial chunk is a valid config; the test needs an invalid one")
	}
	time.Sleep(pause) // the save pattern under test, not synchronisation
	if _, err := f.WriteString(content[:cut]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(pause)
	if _, err := f.WriteString(content[cut:]); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// k8sLayout builds a ConfigMap-style mount in dir and returns the config path:
// ..2026_a/hybrid.yaml, ..data -> ..2026_a, hybrid.yaml -> ..data/hybrid.yaml.
func k8sLayout(t *testing.T, dir, content string) string {
	t.Helper()
	must(t, os.Mkdir(filepath.Join(dir, "..2026_a"), 0o755))
	writeFile(t, filepath.Join(dir, "..2026_a", "hybrid.yaml"), content)
	must(t, os.Symlink("..2026_a", filepath.Join(dir, "..data")))
	path := filepath.Join(dir, "hybrid.yaml")
	must(t, os.Symlink(filepath.Join("..data", "hybrid.yaml"), path))
	return path
}

// k8sSwap does what the kubelet does on a ConfigMap update: a new timestamped
// directory, a ..data_tmp symlink to it renamed over ..data, the old
// directory removed. It returns the time of the rename, when the new content
// shows.
func k8sSwap(t *testing.T, dir, _, content string) time.Time {
	t.Helper()
	must(t, os.Mkdir(filepath.Join(dir, "..2026_b"), 0o755))
	writeFile(t, filepath.Join(dir, "..2026_b", "hybrid.yaml"), content)
	must(t, os.Symlink("..2026_b", filepath.Join(dir, "..data_tmp")))
	must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	swapped := time.Now()
	must(t, os.RemoveAll(filepath.Join(dir, "..2026_a")))
	return swapped
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestWatchSavePatterns saves the file the ways editors, tools and Kubernetes
// do and checks that each is applied within a second of the write, and that
// no intermediate state (empty, partial) is ever applied.
func TestWatchSavePatterns(t *testing.T) {
	sed, sedErr := exec.LookPath("sed")
	tests := []struct {
		name string
		// setup writes content and returns the config path (default: a
		// plain file dir/hybrid.yaml).
		setup func(t *testing.T, dir, content string) string
		// save writes next; the latency is measured from its return, or
		// from the time it returns if not zero (the rename of a swap).
		save func(t *testing.T, dir, path, next string) time.Time
		// mayFail: intermediate states may be seen (and refused).
		mayFail bool
	}{
		{name: "rename over (vim)", save: func(t *testing.T, _, path, next string) time.Time { renameOver(t, path, next); return time.Time{} }},
		{name: "truncate and write in place", save: func(t *testing.T, _, path, next string) time.Time { writeFile(t, path, next); return time.Time{} }},
		{
			name: "two chunks, pause shorter than debounce",
			save: func(t *testing.T, _, path, next string) time.Time {
				twoChunks(t, path, next, 20*time.Millisecond)
				return time.Time{}
			},
			// Debounced: normally only the final content is read, but a
			// loaded machine may stretch the pause.
			mayFail: true,
		},
		{
			name: "two chunks, pause longer than debounce",
			save: func(t *testing.T, _, path, next string) time.Time {
				twoChunks(t, path, next, 300*time.Millisecond)
				return time.Time{}
			},
			mayFail: true,
		},
		{
			name: "delete then create",
			save: func(t *testing.T, _, path, next string) time.Time {
				must(t, os.Remove(path))
				time.Sleep(250 * time.Millisecond) // missing for longer than the debounce
				writeFile(t, path, next)
				return time.Time{}
			},
		},
		{
			name: "symlink to a file in another directory, target edited",
			setup: func(t *testing.T, dir, content string) string {
				must(t, os.Mkdir(filepath.Join(dir, "real"), 0o755))
				must(t, os.Mkdir(filepath.Join(dir, "etc"), 0o755))
				writeFile(t, filepath.Join(dir, "real", "hybrid.yaml"), content)
				path := filepath.Join(dir, "etc", "hybrid.yaml")
				must(t, os.Symlink(filepath.Join(dir, "real", "hybrid.yaml"), path))
				return path
			},
			save: func(t *testing.T, dir, _, next string) time.Time {
				renameOver(t, filepath.Join(dir, "real", "hybrid.yaml"), next)
				return time.Time{}
			},
		},
		{
			name:  "kubernetes configmap swap",
			setup: k8sLayout,
			save:  k8sSwap,
		},
		{
			name: "sed -i",
			save: func(t *testing.T, _, path, _ string) time.Time {
				if sedErr != nil {
					testenv.SkipOrFail(t, "no sed: %v", sedErr)
				}
				// Adds connection b after a, as next has it.
				script := `/key: "0123456789abcdef0123"/a\    - name: b\n      listen: "127.0.0.2:15002"\n      key_name: apps\n      key: "0123456789abcdef0123"`
				if out, err := exec.Command(sed, "-i", script, path).CombinedOutput(); err != nil {
					testenv.SkipOrFail(t, "sed -i: %v: %s", err, out)
				}
				return time.Time{}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			prev, next := watchConfig("a"), watchConfig("a", "b")
			var path string
			if tc.setup != nil {
				path = tc.setup(t, dir, prev)
			} else {
				path = filepath.Join(dir, "hybrid.yaml")
				writeFile(t, path, prev)
			}
			wt := startWatcher(t, path, WatchOptions{Debounce: 100 * time.Millisecond, Poll: time.Hour}, nil)

			wrote := tc.save(t, dir, path, next)
			if wrote.IsZero() {
				wrote = time.Now()
			}
			lat := waitApplied(t, wt.w, "a,b", wrote)
			t.Logf("save -> apply latency: %v", lat.Round(time.Millisecond))
			// The snapshot is published before the stats and the log
			// line are written: give those a moment.
			for end := time.Now().Add(2 * time.Second); time.Now().Before(end) &&
				!strings.Contains(wt.logs.String(), "config reloaded"); {
				time.Sleep(time.Millisecond)
			}

			if got, _ := os.ReadFile(path); string(got) != next {
				t.Fatalf("the save wrote %q, want %q", got, next)
			}
			// Never an empty or partial config: the only apply is the
			// final one.
			if got := wt.rec.names(); !slices.Equal(got, []string{"a,b"}) {
				t.Errorf("applied %q, want only the final config", got)
			}
			st := wt.w.Stats()
			if st.Succeeded != 1 || (!tc.mayFail && st.Failed != 0) {
				t.Errorf("stats %+v: want 1 success and no failure", st)
			}
			if st.Failed > 0 {
				t.Logf("intermediate states refused: %d (last: %s)", st.Failed, st.LastError)
			}
			if !strings.Contains(wt.logs.String(), "config reloaded") {
				t.Errorf("no \"config reloaded\" in the log:\n%s", wt.logs)
			}
		})
	}
}

// TestWatchInvalid checks that a bad file changes nothing, is counted and
// logged with file:line, and that fixing it applies the fix.
func TestWatchInvalid(t *testing.T) {
	valid := watchConfig("a")
	tests := []struct {
		name    string
		content string
		want    string // in LastError and in the log at error level
	}{
		{
			name:    "syntax error",
			content: strings.Replace(valid, "key_name: apps", "key_name: apps: x", 1),
			want:    "hybrid.yaml:6:21: invalid YAML: mapping values are not allowed",
		},
		{
			name:    "unknown field",
			content: strings.Replace(valid, "key_name:", "kee_name:", 1),
			want:    `hybrid.yaml:6: proxy.connections[0].kee_name: unknown field "kee_name"`,
		},
		{
			name:    "invalid endpoint",
			content: strings.Replace(valid, "127.0.0.2:15001", "127.0.0.2:99999", 1),
			want:    "hybrid.yaml:5: proxy.connections[0].listen: invalid listen address",
		},
		{name: "empty file", content: "", want: "hybrid.yaml: empty file, keeping last good config"},
		{name: "whitespace only", content: " \n\t\n", want: "hybrid.yaml: empty file, keeping last good config"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hybrid.yaml")
			writeFile(t, path, valid)
			var failMu sync.Mutex
			var failures []string // what OnFailure was told
			wt := startWatcher(t, path, WatchOptions{Debounce: 50 * time.Millisecond, Poll: time.Hour, OnFailure: func(msg string) {
				failMu.Lock()
				defer failMu.Unlock()
				failures = append(failures, msg)
			}}, nil)
			before := wt.w.Current()

			renameOver(t, path, tc.content)
			wrote := time.Now()
			waitFor(t, pickupDeadline, "the failure to be counted", func() bool { return wt.w.Stats().Failed == 1 })
			t.Logf("save -> refusal latency: %v", time.Since(wrote).Round(time.Millisecond))
			st := wt.w.Stats()
			if wt.w.Current() != before {
				t.Errorf("Current changed on a bad file")
			}
			if got := wt.rec.names(); len(got) != 0 {
				t.Errorf("apply called with %q", got)
			}
			if st.Succeeded != 0 || !strings.Contains(st.LastError, tc.want) || st.LastErrorTime.IsZero() {
				t.Errorf("stats %+v: want no success and LastError containing %q", st, tc.want)
			}
			if logs := wt.logs.String(); !hasLogLine(logs, "[ERROR]", tc.want) {
				t.Errorf("log has no error line %q:\n%s", tc.want, logs)
			}

			// The same bad content seen again (an event, a poll) is not
			// counted twice.
			n := wt.w.reloads.Load()
			renameOver(t, path, tc.content)
			waitFor(t, 2*time.Second, "a re-read", func() bool { return wt.w.reloads.Load() > n })
			if st := wt.w.Stats(); st.Failed != 1 {
				t.Errorf("same bad content counted again: %+v", st)
			}
			failMu.Lock()
			if len(failures) != 1 || !strings.Contains(failures[0], tc.want) {
				t.Errorf("OnFailure told %q, want once %q", failures, tc.want)
			}
			failMu.Unlock()

			// Fixing the file applies the fix.
			renameOver(t, path, watchConfig("a", "fixed"))
			lat := waitApplied(t, wt.w, "a,fixed", time.Now())
			t.Logf("fix -> apply latency: %v", lat.Round(time.Millisecond))
			if st := wt.w.Stats(); st.Succeeded != 1 || st.Failed != 1 || st.LastSuccessTime.IsZero() {
				t.Errorf("stats after the fix %+v", st)
			}
		})
	}
}

// TestWatchSameContent checks that rewriting identical bytes applies nothing
// and counts nothing, whichever way the file is saved.
func TestWatchSameContent(t *testing.T) {
	content := watchConfig("a")
	for _, save := range []struct {
		name string
		do   func(t *testing.T, path string)
	}{
		{"write in place", func(t *testing.T, path string) { writeFile(t, path, content) }},
		{"rename over", func(t *testing.T, path string) { renameOver(t, path, content) }},
		{"touch", func(t *testing.T, path string) {
			now := time.Now()
			must(t, os.Chtimes(path, now, now))
		}},
	} {
		t.Run(save.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hybrid.yaml")
			writeFile(t, path, content)
			wt := startWatcher(t, path, WatchOptions{Debounce: 50 * time.Millisecond, Poll: time.Hour}, nil)
			before, stBefore := wt.w.Current(), wt.w.Stats()
			n := wt.w.reloads.Load()
			save.do(t, path)
			waitFor(t, 2*time.Second, "a re-read", func() bool { return wt.w.reloads.Load() > n })
			if wt.w.Current() != before || len(wt.rec.names()) != 0 {
				t.Errorf("same content applied: %q", wt.rec.names())
			}
			if st := wt.w.Stats(); st != stBefore {
				t.Errorf("stats changed: %+v, was %+v", st, stBefore)
			}
		})
	}
}

// TestWatchApplyError checks that a snapshot the roles refuse is counted as a
// failure and not made current, and that Reload retries it.
func TestWatchApplyError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hybrid.yaml")
	writeFile(t, path, watchConfig("a"))
	wt := startWatcher(t, path, WatchOptions{Debounce: 50 * time.Millisecond, Poll: time.Hour}, nil)
	before := wt.w.Current()

	wt.rec.fail.Store(true)
	renameOver(t, path, watchConfig("a", "b"))
	waitFor(t, pickupDeadline, "the failure", func() bool { return wt.w.Stats().Failed == 1 })
	st := wt.w.Stats()
	if wt.w.Current() != before {
		t.Errorf("Current changed although apply failed")
	}
	if got := wt.rec.names(); !slices.Equal(got, []string{"a,b"}) {
		t.Errorf("apply got %q, want one call with a,b", got)
	}
	if want := "hybrid.yaml: config not applied: boom: port in use"; !strings.Contains(st.LastError, want) || st.Succeeded != 0 {
		t.Errorf("stats %+v, want LastError containing %q", st, want)
	}

	// Once the roles can take it, a Reload (SIGHUP) applies it.
	wt.rec.fail.Store(false)
	start := time.Now()
	wt.w.Reload()
	waitApplied(t, wt.w, "a,b", start)
	if st := wt.w.Stats(); st.Succeeded != 1 || st.Failed != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestWatchApplyPanic checks that a panicking Apply is a failed reload, not a
// crash.
func TestWatchApplyPanic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hybrid.yaml")
	writeFile(t, path, watchConfig("a"))
	clearEnv(t)
	initial, err := Load(path)
	must(t, err)
	w := NewWatcher(path, initial, func(*Config) error { panic("oops") }, WatchOptions{Debounce: 20 * time.Millisecond, Poll: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 5*time.Second, "baseline", func() bool { return w.Stats().Hash != "" })
	renameOver(t, path, watchConfig("b"))
	waitFor(t, 2*time.Second, "the failure", func() bool { return w.Stats().Failed == 1 })
	if st := w.Stats(); !strings.Contains(st.LastError, "apply panicked: oops") || w.Current() != initial {
		t.Errorf("stats %+v", st)
	}
}

// writeViaLink rewrites the file through a hard link in another directory,
// in place and at the same length, so the watched directory sees no event and
// no read can see it empty.
func writeViaLink(t *testing.T, link, content string) {
	t.Helper()
	f, err := os.OpenFile(link, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt([]byte(content), 0)
	must(t, err)
	must(t, f.Close())
}

// hiddenSetup writes the config and a hard link to it in another directory.
func hiddenSetup(t *testing.T, content string) (path, link string) {
	t.Helper()
	root := t.TempDir()
	must(t, os.Mkdir(filepath.Join(root, "etc"), 0o755))
	must(t, os.Mkdir(filepath.Join(root, "other"), 0o755))
	path = filepath.Join(root, "etc", "hybrid.yaml")
	link = filepath.Join(root, "other", "link.yaml")
	writeFile(t, path, content)
	must(t, os.Link(path, link))
	return path, link
}

// TestWatchReload checks that Reload picks up a change no event announced.
func TestWatchReload(t *testing.T) {
	path, link := hiddenSetup(t, watchConfig("a"))
	wt := startWatcher(t, path, WatchOptions{Debounce: 20 * time.Millisecond, Poll: time.Hour}, nil)

	n := wt.w.reloads.Load()
	writeViaLink(t, link, watchConfig("b"))
	// Not seen without Reload: the change made no event here. (A bounded
	// look, not synchronisation: the test is only meaningful if so.)
	time.Sleep(300 * time.Millisecond)
	if got := connNames(wt.w.Current()); got != "a" || wt.w.reloads.Load() != n {
		t.Fatalf("the hidden write was seen without Reload (current %q); the test cannot show Reload works", got)
	}
	start := time.Now()
	wt.w.Reload()
	t.Logf("Reload -> apply latency: %v", waitApplied(t, wt.w, "b", start).Round(time.Millisecond))

	// Reload with nothing new applies nothing and counts nothing.
	st := wt.w.Stats()
	n = wt.w.reloads.Load()
	wt.w.Reload()
	waitFor(t, 2*time.Second, "the re-read", func() bool { return wt.w.reloads.Load() > n })
	if got := wt.rec.names(); !slices.Equal(got, []string{"b"}) || wt.w.Stats() != st {
		t.Errorf("a Reload of unchanged content applied %q, stats %+v (was %+v)", got, wt.w.Stats(), st)
	}
}

// TestWatchPoll checks that the poll picks up a change no event announced.
func TestWatchPoll(t *testing.T) {
	const poll = 200 * time.Millisecond
	path, link := hiddenSetup(t, watchConfig("a"))
	wt := startWatcher(t, path, WatchOptions{Debounce: 20 * time.Millisecond, Poll: poll}, nil)
	writeViaLink(t, link, watchConfig("b"))
	lat := waitApplied(t, wt.w, "b", time.Now())
	t.Logf("hidden write -> apply by poll (%v): %v", poll, lat.Round(time.Millisecond))
}

// TestWatchNoFsnotify checks that a watcher that cannot use fsnotify warns
// and polls, and keeps trying to set fsnotify up.
func TestWatchNoFsnotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hybrid.yaml")
	writeFile(t, path, watchConfig("a"))
	var tries atomic.Int32
	wt := startWatcher(t, path, WatchOptions{Debounce: 20 * time.Millisecond, Poll: 200 * time.Millisecond}, func(w *Watcher) {
		w.newNotify = func() (*fsnotify.Watcher, error) {
			tries.Add(1)
			return nil, errors.New("too many open files")
		}
	})
	renameOver(t, path, watchConfig("b"))
	lat := waitApplied(t, wt.w, "b", time.Now())
	t.Logf("save -> apply by poll only: %v", lat.Round(time.Millisecond))
	if logs := wt.logs.String(); !strings.Contains(logs, "[WARN]  cannot watch the config file, polling only") {
		t.Errorf("no warning in the log:\n%s", logs)
	}
	waitFor(t, 5*time.Second, "a retry to set up fsnotify", func() bool { return tries.Load() >= 2 })
}

// TestWatchFsnotifyRecovers closes the fsnotify watcher under the Watcher's
// feet (its channels close, as when its reader fails) and checks that a new
// one is set up and events work again.
func TestWatchFsnotifyRecovers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hybrid.yaml")
	writeFile(t, path, watchConfig("a"))
	var (
		mu      sync.Mutex
		created []*fsnotify.Watcher
	)
	wt := startWatcher(t, path, WatchOptions{Debounce: 20 * time.Millisecond, Poll: time.Hour}, func(w *Watcher) {
		w.newNotify = func() (*fsnotify.Watcher, error) {
			fw, err := fsnotify.NewWatcher()
			if err == nil {
				mu.Lock()
				created = append(created, fw)
				mu.Unlock()
			}
			return fw, err
		}
	})
	mu.Lock()
	first := created[0]
	mu.Unlock()
	must(t, first.Close())
	waitFor(t, 5*time.Second, "a new fsnotify watcher", func() bool {
		return strings.Contains(wt.logs.String(), "file watch restored")
	})
	if logs := wt.logs.String(); !strings.Contains(logs, "[WARN]  file watch stopped; polling") {
		t.Errorf("no warning in the log:\n%s", logs)
	}
	// With a one-hour poll, only the new watch can pick this up in time.
	renameOver(t, path, watchConfig("b"))
	lat := waitApplied(t, wt.w, "b", time.Now())
	t.Logf("save -> apply after the watch was recreated: %v", lat.Round(time.Millisecond))
}

// TestWatchInitialCheck checks that Run's first re-read applies a change made
// between Load and Run, and that a nil initial config is loaded.
func TestWatchInitialCheck(t *testing.T) {
	clearEnv(t)
	for _, tc := range []struct {
		name    string
		initial bool
	}{{"changed after Load", true}, {"nil initial", false}} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hybrid.yaml")
			writeFile(t, path, watchConfig("a"))
			var initial *Config
			if tc.initial {
				var err error
				initial, err = Load(path)
				must(t, err)
			}
			writeFile(t, path, watchConfig("b"))
			rec := &recorder{}
			w := NewWatcher(path, initial, rec.apply, WatchOptions{Poll: time.Hour})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			defer func() { cancel(); <-done }()
			waitApplied(t, w, "b", time.Now())
			if got := rec.names(); !slices.Equal(got, []string{"b"}) {
				t.Errorf("applied %q", got)
			}
		})
	}
}

// TestWatchRunTwice checks that a second concurrent Run is refused and that
// Run returns nil when its context ends.
func TestWatchRunTwice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hybrid.yaml")
	writeFile(t, path, watchConfig("a"))
	wt := startWatcher(t, path, WatchOptions{Poll: time.Hour}, nil)
	if err := wt.w.Run(context.Background()); !errors.Is(err, ErrWatcherRunning) {
		t.Errorf("second Run: %v, want ErrWatcherRunning", err)
	}
	wt.stop() // asserts Run returned nil
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		testenv.SkipOrFail(t, "cannot count fds: %v", err)
	}
	return len(ents)
}

// settle waits until count() is at most want, for goroutines and fds that
// take a moment to go.
func settle(t *testing.T, what string, want int, count func() int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := count()
		if got <= want {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%s: %d, want at most %d\n%s", what, got, want, buf)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestWatchNoLeaks applies 200 reloads in a row and checks that goroutines
// and open fds do not grow, and that Run leaves none behind.
func TestWatchNoLeaks(t *testing.T) {
	if runtime.GOOS != "linux" {
		testenv.SkipOrFail(t, "counts /proc/self/fd, which only Linux has")
	}
	path := filepath.Join(t.TempDir(), "hybrid.yaml")
	writeFile(t, path, watchConfig("a"))
	goBefore, fdBefore := runtime.NumGoroutine(), openFDs(t)

	wt := startWatcher(t, path, WatchOptions{Debounce: 5 * time.Millisecond, Poll: 50 * time.Millisecond}, nil)
	goRunning, fdRunning := runtime.NumGoroutine(), openFDs(t)
	t.Logf("goroutines %d -> %d, fds %d -> %d when running", goBefore, goRunning, fdBefore, fdRunning)

	const reloads = 200
	start := time.Now()
	var worst time.Duration
	for i := range reloads {
		names := fmt.Sprintf("a,c%d", i)
		if i%2 == 0 {
			renameOver(t, path, watchConfig("a", fmt.Sprintf("c%d", i)))
		} else {
			writeFile(t, path, watchConfig("a", fmt.Sprintf("c%d", i)))
			wt.w.Reload()
		}
		worst = max(worst, waitApplied(t, wt.w, names, time.Now()))
	}
	t.Logf("%d reloads in %v, slowest %v", reloads, time.Since(start).Round(time.Millisecond), worst.Round(time.Millisecond))
	if st := wt.w.Stats(); st.Succeeded != reloads {
		t.Errorf("stats %+v, want %d successes", st, reloads)
	}
	settle(t, "goroutines while running", goRunning, runtime.NumGoroutine)
	settle(t, "open fds while running", fdRunning, func() int { return openFDs(t) })

	wt.stop()
	settle(t, "goroutines after Run", goBefore, runtime.NumGoroutine)
	settle(t, "open fds after Run", fdBefore, func() int { return openFDs(t) })
}

// TestWatchConcurrentReaders reads Current and Stats and calls Reload from
// many goroutines while the file changes (for -race).
func TestWatchConcurrentReaders(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hybrid.yaml")
	writeFile(t, path, watchConfig("a"))
	wt := startWatcher(t, path, WatchOptions{Debounce: 5 * time.Millisecond, Poll: 20 * time.Millisecond}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if c := wt.w.Current(); c == nil || c.Proxy == nil {
					t.Error("Current returned an incomplete config")
					return
				}
				_ = wt.w.Stats()
				wt.w.Reload()
				// Forced reloads re-parse: leave the worker some CPU on
				// a small, busy machine.
				time.Sleep(time.Millisecond)
			}
		})
	}
	for i := range 20 {
		names := fmt.Sprintf("a,n%d", i)
		renameOver(t, path, watchConfig("a", fmt.Sprintf("n%d", i)))
		waitFor(t, 5*time.Second, names, func() bool { return connNames(wt.w.Current()) == names })
	}
	cancel()
	wg.Wait()
}
