package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// stopTimeout is how long Stop waits for a graceful exit before SIGKILL.
const stopTimeout = 15 * time.Second

// ProcConfig tunes startProcWith. The zero value is what startProc uses.
type ProcConfig struct {
	// Label names the process in messages and its log file; default: the
	// command's base name plus a sequence number.
	Label string
	// Dir is the working directory; default: the test's working directory.
	Dir string
	// Env, when non-nil, is appended to the inherited environment (later
	// entries win).
	Env []string
	// StopSignal is what Stop sends first; default SIGTERM. PostgreSQL wants
	// SIGINT (fast shutdown).
	StopSignal syscall.Signal
	// StopTimeout overrides stopTimeout.
	StopTimeout time.Duration
	// Credential, when set, runs the process as that user (needs root).
	Credential *syscall.Credential
}

// Proc is a child process started by startProc. Its stdout and stderr are
// interleaved into one in-memory buffer (Output, WaitLog) and a log file
// (LogPath). It runs in its own process group, which is killed when the test
// ends; it is also SIGKILLed by the kernel if the test binary dies.
type Proc struct {
	Label   string
	Cmd     *exec.Cmd
	LogPath string

	cfg ProcConfig
	out *logBuffer

	done     chan struct{} // closed once the process has exited and been reaped (and its output drained)
	waitErr  error         // from cmd.Wait; valid after done
	exitCode int           // valid after done; -1 if killed by a signal

	stopping atomic.Bool // Stop/Kill requested: the exit is expected
}

var procSeq atomic.Int64

// startProc starts name with args and registers cleanup that stops it when
// the test ends. name "hybrid" means the built hybrid binary (hybridBinary);
// anything else is resolved like exec.Command does. When the test has failed,
// the cleanup prints the tail of the process's output.
func startProc(t testing.TB, name string, args ...string) *Proc {
	t.Helper()
	return startProcWith(t, ProcConfig{}, name, args...)
}

// startHybrid is startProc(t, "hybrid", args...).
func startHybrid(t testing.TB, args ...string) *Proc {
	t.Helper()
	return startProc(t, "hybrid", args...)
}

// startProcWith is startProc with explicit configuration.
func startProcWith(t testing.TB, cfg ProcConfig, name string, args ...string) *Proc {
	t.Helper()
	path := name
	if name == "hybrid" {
		path = hybridBinary(t)
	}
	if cfg.Label == "" {
		cfg.Label = fmt.Sprintf("%s-%d", filepath.Base(name), procSeq.Add(1))
	}
	if cfg.StopSignal == 0 {
		cfg.StopSignal = syscall.SIGTERM
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = stopTimeout
	}
	// HYBRID_KEEP_LOGS=dir keeps every process's log after the test (in
	// dir/<test>/), for a failure to be read whole.
	logDir := t.TempDir()
	if keep := os.Getenv("HYBRID_KEEP_LOGS"); keep != "" {
		logDir = filepath.Join(keep, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()))
		if err := os.MkdirAll(logDir, 0o755); err != nil {
			t.Fatalf("HYBRID_KEEP_LOGS: %v", err)
		}
	}
	logPath := filepath.Join(logDir, cfg.Label+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatalf("startProc %s: %v", cfg.Label, err)
	}
	p := &Proc{
		Label:   cfg.Label,
		LogPath: logPath,
		cfg:     cfg,
		out:     newLogBuffer(f),
		done:    make(chan struct{}),
	}
	cmd := exec.Command(path, args...)
	cmd.Dir = cfg.Dir
	if cfg.Env != nil {
		cmd.Env = append(os.Environ(), cfg.Env...)
	}
	// One pipe for both streams, preserving their interleaving. We own the
	// pipe (rather than handing exec a Writer) so that Wait returns when the
	// process exits even if a grandchild still holds the pipe open.
	pr, pw, err := os.Pipe()
	if err != nil {
		f.Close()
		t.Fatalf("startProc %s: %v", cfg.Label, err)
	}
	cmd.Stdout = pw
	cmd.Stderr = pw
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,            // own group: cleanup kills grandchildren too
		Pdeathsig:  syscall.SIGKILL, // die with the test binary (e.g. on -timeout panic)
		Credential: cfg.Credential,
	}
	p.Cmd = cmd
	err = cmd.Start()
	pw.Close() // the child has its copy
	if err != nil {
		pr.Close()
		f.Close()
		t.Fatalf("startProc %s: %v", cfg.Label, err)
	}
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(p.out, pr)
		pr.Close()
		p.out.closeFile()
		close(eof)
	}()
	t.Logf("started %s (pid %d): %s; log %s", p.Label, cmd.Process.Pid, shellQuote(append([]string{path}, args...)), logPath)
	go func() {
		p.waitErr = cmd.Wait()
		p.exitCode = cmd.ProcessState.ExitCode()
		// Let the reader drain what the process wrote before it exited. If
		// something else still holds the pipe, don't wait for it: killGroup
		// (in Stop and cleanup) ends it, and the reader then finishes.
		select {
		case <-eof:
		case <-time.After(time.Second):
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cleanup(t)
	})
	return p
}

func (p *Proc) cleanup(t testing.TB) {
	select {
	case <-p.done:
		if !p.stopping.Load() {
			t.Logf("%s had exited by itself: exit %s", p.Label, p.exitDesc())
		}
	default:
		p.Stop(t)
	}
	p.killGroup()
	if t.Failed() {
		// The tail, and before it every warning and error of the whole
		// run: the full log goes with the test's temporary directory, and
		// CI keeps only what is printed.
		out := p.Output()
		t.Logf("---- %s exit=%s, warnings and errors (up to 100), then the last output (full log: %s) ----\n%s\n----\n%s\n---- end %s ----",
			p.Label, p.exitDesc(), p.LogPath, warnLines(out, 100), tailLines(out, 200), p.Label)
	}
}

// warnLines returns the first n lines of out logged at WARN or ERROR.
func warnLines(out string, n int) string {
	var b strings.Builder
	for _, l := range strings.Split(out, "\n") {
		if n == 0 {
			b.WriteString("[... more]\n")
			break
		}
		if strings.Contains(l, "[WARN]") || strings.Contains(l, "[ERROR]") {
			b.WriteString(l)
			b.WriteByte('\n')
			n--
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// Pid is the process id (also its process group id).
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Output returns everything the process has written to stdout and stderr so far.
func (p *Proc) Output() string { return p.out.String() }

// Mark returns the current length of the output, for WaitLogAfter: "wait for
// a match in what is written from now on".
func (p *Proc) Mark() int { return p.out.Len() }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode returns the exit status (-1 when killed by a signal), or -2 if the
// process is still running.
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -2
	}
	return p.exitCode
}

func (p *Proc) exitDesc() string {
	if !p.Exited() {
		return "running"
	}
	if p.waitErr != nil {
		return fmt.Sprintf("%d (%v)", p.exitCode, p.waitErr)
	}
	return "0"
}

// Wait waits up to timeout for the process to exit by itself and returns its
// exit code; it fails the test on timeout.
func (p *Proc) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.exitCode
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %v; output tail:\n%s", p.Label, timeout, tailLines(p.Output(), 50))
		return -2
	}
}

// Signal sends sig to the process (not its group).
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return os.ErrProcessDone
	}
	return p.Cmd.Process.Signal(sig)
}

// Stop asks the process to exit (SIGTERM, or ProcConfig.StopSignal), waits up
// to 15 s (ProcConfig.StopTimeout), then SIGKILLs the whole group and fails
// the test, since every role must stop cleanly on SIGTERM. It returns the exit
// code (-1 when killed by a signal). Stopping an exited process just returns
// its exit code.
func (p *Proc) Stop(t testing.TB) int {
	t.Helper()
	if p.Exited() {
		p.killGroup()
		return p.exitCode
	}
	p.stopping.Store(true)
	start := time.Now()
	if err := p.Signal(p.cfg.StopSignal); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("%s: sending %v: %v", p.Label, p.cfg.StopSignal, err)
	}
	select {
	case <-p.done:
		p.killGroup() // stragglers the process left behind
		t.Logf("%s stopped by %v in %v, exit %s", p.Label, p.cfg.StopSignal, time.Since(start).Round(time.Millisecond), p.exitDesc())
		return p.exitCode
	case <-time.After(p.cfg.StopTimeout):
	}
	p.killGroup()
	<-p.done
	t.Errorf("%s did not exit within %v of %v; killed. Output tail:\n%s",
		p.Label, p.cfg.StopTimeout, p.cfg.StopSignal, tailLines(p.Output(), 50))
	return p.exitCode
}

// Kill SIGKILLs the process group at once (a crash, for failover tests) and
// waits for the process to be reaped.
func (p *Proc) Kill() {
	p.stopping.Store(true)
	p.killGroup()
	<-p.done
}

func (p *Proc) killGroup() {
	// Negative pid: the whole process group. ESRCH (already gone) is fine.
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
}

// WaitLog waits until the output contains pattern — a string (substring
// match) or a *regexp.Regexp — and returns the match followed by any
// submatches. It fails the test on timeout, or as soon as the process exits
// without having printed a match.
func (p *Proc) WaitLog(t testing.TB, pattern any, timeout time.Duration) []string {
	t.Helper()
	return p.WaitLogAfter(t, 0, pattern, timeout)
}

// WaitLogAfter is WaitLog restricted to output written after mark (from Mark).
func (p *Proc) WaitLogAfter(t testing.TB, mark int, pattern any, timeout time.Duration) []string {
	t.Helper()
	match := matcher(t, pattern)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		// Take the change channel before reading, so no write is missed.
		changed := p.out.changed()
		if m := match(p.out.from(mark)); m != nil {
			return m
		}
		select {
		case <-changed:
		case <-p.done:
			// Final check: output is complete once the process is reaped.
			if m := match(p.out.from(mark)); m != nil {
				return m
			}
			t.Fatalf("%s exited (%s) without printing %v; output tail:\n%s",
				p.Label, p.exitDesc(), pattern, tailLines(p.out.from(mark), 50))
			return nil
		case <-deadline.C:
			t.Fatalf("%s: no %v in output after %v; output tail:\n%s",
				p.Label, pattern, timeout, tailLines(p.out.from(mark), 50))
			return nil
		}
	}
}

func matcher(t testing.TB, pattern any) func(string) []string {
	t.Helper()
	switch pat := pattern.(type) {
	case string:
		return func(s string) []string {
			if strings.Contains(s, pat) {
				return []string{pat}
			}
			return nil
		}
	case *regexp.Regexp:
		return pat.FindStringSubmatch
	default:
		t.Fatalf("WaitLog: pattern must be a string or *regexp.Regexp, got %T", pattern)
		return nil
	}
}

// runCmd runs name (name "hybrid" = the built binary) to completion with a
// timeout and returns its combined output and exit code (-1 if it could not
// start or was killed). It fails the test only on timeout or start failure.
func runCmd(t testing.TB, timeout time.Duration, name string, args ...string) (string, int) {
	t.Helper()
	path := name
	if name == "hybrid" {
		path = hybridBinary(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s timed out after %v; output:\n%s", shellQuote(append([]string{name}, args...)), timeout, out)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s: %v", shellQuote(append([]string{name}, args...)), err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// logBuffer is an append-only, goroutine-safe output buffer that mirrors
// writes into a file and wakes waiters on every write.
type logBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	file   *os.File
	notify chan struct{} // closed and replaced on every write
}

func newLogBuffer(f *os.File) *logBuffer {
	return &logBuffer{file: f, notify: make(chan struct{})}
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if b.file != nil {
		_, _ = b.file.Write(p) // the in-memory copy is authoritative
	}
	close(b.notify)
	b.notify = make(chan struct{})
	return len(p), nil
}

func (b *logBuffer) changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.notify
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

func (b *logBuffer) from(mark int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if mark > b.buf.Len() {
		mark = b.buf.Len()
	}
	return string(b.buf.Bytes()[mark:])
}

func (b *logBuffer) closeFile() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.file != nil {
		b.file.Close()
		b.file = nil
	}
}

// tailLines returns the last n lines of s.
func tailLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) <= n {
		return s
	}
	return fmt.Sprintf("[... %d earlier lines]\n", len(lines)-n) + strings.Join(lines[len(lines)-n:], "\n")
}

// shellQuote renders argv for logs in a copy-pasteable form.
func shellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r == '/' || r == '.' || r == '-' || r == '_' || r == ':' || r == '=' || r == ',' ||
				r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
		}) < 0 {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}
