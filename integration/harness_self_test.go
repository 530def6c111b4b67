package integration

// The harness's own tests. They need no hybrid binary (except
// TestHarnessBinary, which skips while ./cmd/hybrid has no Go files), so they
// can run while the binary is being written:
//
//	go test -race ./integration/ -run Harness -v

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/testenv"
)

func TestHarnessPorts(t *testing.T) {
	t.Parallel()
	p := freePort(t)
	if p <= 0 || p > 65535 {
		t.Fatalf("freePort = %d", p)
	}
	addr := freeAddr(t, "127.0.0.2")
	if !strings.HasPrefix(addr, "127.0.0.2:") {
		t.Fatalf("freeAddr(127.0.0.2) = %q", addr)
	}

	// Nothing listens at addr yet: waitTCPErr must give up with an error.
	if err := waitTCPErr(addr, 200*time.Millisecond); err == nil {
		t.Fatalf("waitTCPErr(%s) succeeded with nothing listening", addr)
	}

	// Start listening a little later from another goroutine; waitTCP must see it.
	ready := make(chan net.Listener, 1)
	go func() {
		time.Sleep(300 * time.Millisecond) // deliberately late: this tests polling
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("listen %s: %v", addr, err)
			ready <- nil
			return
		}
		ready <- l
	}()
	waitTCP(t, addr, 10*time.Second)
	if l := <-ready; l != nil {
		l.Close()
	}
}

// fakeTB records failures instead of failing the real test, so the harness's
// failure paths can be tested. Fatal* ends the calling goroutine, so run code
// that may call it through fakeTB.run.
type fakeTB struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	runtime.Goexit()
}

func (f *fakeTB) Failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.errors) > 0
}

func (f *fakeTB) Failures() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.errors, "\n")
}

// run calls fn(f) in a goroutine and waits for it to return or Goexit.
func (f *fakeTB) run(fn func(tb testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
}

// procState returns the state letter of pid from /proc ("" if it is gone).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// "pid (comm) S ..."; comm may contain spaces, so split after the last ')'.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2 : i+3]
	}
	return "?"
}

func TestHarnessProc(t *testing.T) {
	t.Parallel()

	t.Run("OutputWaitLogStop", func(t *testing.T) {
		t.Parallel()
		// A shell that traps TERM and leaves a grandchild behind: Stop must
		// deliver TERM, report the exit code, and kill the group.
		p := startProc(t, "/bin/sh", "-c", `
			trap 'echo got TERM; exit 3' TERM
			sleep 1000 &
			echo "child $!"
			echo to-stderr >&2
			echo ready
			while :; do wait; done`)
		m := p.WaitLog(t, regexp.MustCompile(`child (\d+)`), 10*time.Second)
		child, _ := strconv.Atoi(m[1])
		p.WaitLog(t, "ready", 10*time.Second)
		p.WaitLog(t, "to-stderr", 10*time.Second)
		if p.Exited() || p.ExitCode() != -2 {
			t.Fatalf("running process: Exited=%v ExitCode=%d", p.Exited(), p.ExitCode())
		}
		mark := p.Mark()
		if code := p.Stop(t); code != 3 {
			t.Fatalf("exit code after TERM = %d, want 3; output:\n%s", code, p.Output())
		}
		p.WaitLogAfter(t, mark, "got TERM", time.Second)
		if p.ExitCode() != 3 {
			t.Fatalf("ExitCode() = %d", p.ExitCode())
		}
		// The orphaned grandchild got SIGKILL (it may linger as a zombie
		// until whatever reaps orphans here gets to it).
		waitFor(t, "grandchild "+m[1]+" to die", 10*time.Second, func() bool {
			s := procState(child)
			return s == "" || s == "Z" || s == "X"
		})
		log, err := os.ReadFile(p.LogPath)
		if err != nil || !bytes.Contains(log, []byte("ready")) || !bytes.Contains(log, []byte("got TERM")) {
			t.Fatalf("log file %s: err=%v content=%q", p.LogPath, err, log)
		}
	})

	t.Run("WaitLogFailsFastOnExit", func(t *testing.T) {
		t.Parallel()
		p := startProc(t, "/bin/sh", "-c", "echo bye; exit 7")
		f := &fakeTB{TB: t}
		start := time.Now()
		f.run(func(tb testing.TB) { p.WaitLog(tb, "never printed", time.Minute) })
		if !f.Failed() || !strings.Contains(f.Failures(), "exited") {
			t.Fatalf("WaitLog on an exited process: failures %q", f.Failures())
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Fatalf("WaitLog took %v to notice the exit", d)
		}
		if c := p.Wait(t, 10*time.Second); c != 7 {
			t.Fatalf("exit code %d, want 7", c)
		}
	})

	t.Run("WaitLogTimeout", func(t *testing.T) {
		t.Parallel()
		p := startProc(t, "/bin/sh", "-c", "echo started; exec sleep 1000")
		p.WaitLog(t, "started", 10*time.Second)
		f := &fakeTB{TB: t}
		f.run(func(tb testing.TB) { p.WaitLog(tb, regexp.MustCompile(`nope`), 300*time.Millisecond) })
		if !strings.Contains(f.Failures(), "no nope in output") {
			t.Fatalf("failures %q", f.Failures())
		}
		p.Kill()
		if p.ExitCode() != -1 {
			t.Fatalf("exit code after Kill = %d, want -1", p.ExitCode())
		}
	})

	t.Run("StopEscalates", func(t *testing.T) {
		t.Parallel()
		// Ignores TERM (and its children inherit that): Stop must SIGKILL
		// after the timeout and report the failure.
		f := &fakeTB{TB: t}
		var p *Proc
		f.run(func(tb testing.TB) {
			p = startProcWith(tb, ProcConfig{StopTimeout: 500 * time.Millisecond}, "/bin/sh", "-c",
				`trap '' TERM; echo ready; exec sleep 1000`)
			p.WaitLog(tb, "ready", 10*time.Second)
			start := time.Now()
			if code := p.Stop(tb); code != -1 {
				t.Errorf("exit code %d, want -1 (killed)", code)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Stop took %v", d)
			}
		})
		if !strings.Contains(f.Failures(), "did not exit within 500ms") {
			t.Fatalf("failures %q", f.Failures())
		}
	})

	t.Run("RunCmd", func(t *testing.T) {
		t.Parallel()
		out, code := runCmd(t, 10*time.Second, "/bin/sh", "-c", "echo out; echo err >&2; exit 2")
		if code != 2 || !strings.Contains(out, "out") || !strings.Contains(out, "err") {
			t.Fatalf("runCmd = %q, %d", out, code)
		}
	})
}

func TestHarnessPostgres(t *testing.T) {
	t.Parallel()
	pg := startPostgres(t)
	dsn := pg.DirectDSN()
	if want := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=10", pg.Port); dsn != want {
		t.Fatalf("DSN = %q, want %q", dsn, want)
	}

	out, err := psql(t, dsn, "select 1")
	if err != nil || out != "1" {
		t.Fatalf("psql select 1 = %q, %v", out, err)
	}
	out, err = psql(t, dsn, "select current_user || ' ' || current_setting('server_version_num')")
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	t.Logf("connected as/version: %s", out)
	if out, err := psql(t, dsn, "select nosuchcolumn"); err == nil {
		t.Fatalf("psql with a bad query succeeded: %q", out)
	} else if !strings.Contains(out, "nosuchcolumn") {
		t.Fatalf("psql error output %q", out)
	}

	start := time.Now()
	if out, err := pgbench(t, dsn, "-i", "-q", "-s", "1"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	t.Logf("pgbench -i -s 1: %v", time.Since(start).Round(time.Millisecond))

	out, err = pgbench(t, dsn, "-c", "2", "-t", "20")
	if err != nil {
		t.Fatalf("pgbench: %v\n%s", err, out)
	}
	failed, ok := pgbenchFailed(out)
	if !ok || failed != 0 {
		t.Fatalf("pgbench failed=%d ok=%v\n%s", failed, ok, out)
	}
	tps, _ := pgbenchTPS(out)
	if !strings.Contains(out, "number of transactions actually processed: 40/40") {
		t.Fatalf("pgbench did not process 40/40:\n%s", out)
	}
	t.Logf("pgbench -c 2 -t 20: 40/40 transactions, 0 failed, tps %.0f", tps)

	pg.Stop(t)
	if !pg.Proc().Exited() {
		t.Fatal("postgres still running after Stop")
	}
	if _, err := os.Stat(filepath.Join(pg.SocketDir, fmt.Sprintf(".s.PGSQL.%d", pg.Port))); err == nil {
		t.Errorf("socket file still present after stop")
	}
}

func TestHarnessPgbenchParse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		out    string
		failed int
		ok     bool
	}{
		{"number of transactions actually processed: 40/40\nnumber of failed transactions: 0 (0.000%)\ntps = 812.3 (without initial connection time)", 0, true},
		{"number of transactions actually processed: 38/40\nnumber of failed transactions: 2 (5.000%)", 2, true},
		{"client 1 aborted in command 4\nnumber of transactions actually processed: 25/40\nnumber of failed transactions: 0 (0.000%)", 15, true},
		{"number of transactions actually processed: 1234", 0, true},
		{"pgbench: error: connection to server failed", 0, false},
	} {
		f, ok := pgbenchFailed(tc.out)
		if f != tc.failed || ok != tc.ok {
			t.Errorf("pgbenchFailed(%q) = %d, %v; want %d, %v", tc.out, f, ok, tc.failed, tc.ok)
		}
	}
	if tps, ok := pgbenchTPS("tps = 812.3 (without initial connection time)"); !ok || tps != 812.3 {
		t.Errorf("pgbenchTPS = %v, %v", tps, ok)
	}
}

func TestHarnessSinkSource(t *testing.T) {
	t.Parallel()
	addr := startSinkSource(t)
	const n = 10 << 20

	start := time.Now()
	sent, got := uploadAndHash(t, addr, n)
	if sent != got {
		t.Fatalf("upload: sent %x, sink got %x", sent, got)
	}
	t.Logf("upload 10 MiB: %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	want, got, count := downloadAndHash(t, addr, n)
	if count != n || want != got {
		t.Fatalf("download: %d bytes, want %x got %x", count, want, got)
	}
	t.Logf("download 10 MiB: %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	sent, got = echoAndHash(t, addr, n)
	if sent != got {
		t.Fatalf("echo: sent %x, got %x", sent, got)
	}
	t.Logf("echo 10 MiB: %v", time.Since(start).Round(time.Millisecond))

	// The stream is deterministic and the digests discriminate.
	if expectedStreamHash(n) != want || expectedStreamHash(n-1) == want {
		t.Fatal("expectedStreamHash is not deterministic or not length-sensitive")
	}

	// Edge case: empty transfers.
	if s, g := uploadAndHash(t, addr, 0); s != g {
		t.Fatal("empty upload mismatch")
	}
	if w, g, c := downloadAndHash(t, addr, 0); w != g || c != 0 {
		t.Fatal("empty download mismatch")
	}
	if s, g := echoAndHash(t, addr, 0); s != g {
		t.Fatal("empty echo mismatch")
	}

	// Concurrent clients, from goroutines, via the *Err variants.
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			size := int64(64<<10 + i*4099)
			var a, b [32]byte
			var err error
			switch i % 3 {
			case 0:
				a, b, err = uploadAndHashErr(addr, size)
			case 1:
				var c int64
				a, b, c, err = downloadAndHashErr(addr, size)
				if err == nil && c != size {
					err = fmt.Errorf("count %d", c)
				}
			case 2:
				a, b, err = echoAndHashErr(addr, size)
			}
			if err != nil || a != b {
				t.Errorf("client %d (%d bytes): err=%v match=%v", i, size, err, a == b)
			}
		}()
	}
	wg.Wait()
}

// TestHarnessBinary builds ./cmd/hybrid once it has Go files.
func TestHarnessBinary(t *testing.T) {
	if m, _ := filepath.Glob("../cmd/hybrid/*.go"); len(m) == 0 && os.Getenv("HYBRID_BIN") == "" {
		testenv.SkipOrFail(t, "../cmd/hybrid has no Go files yet")
	}
	bin := hybridBinary(t)
	fi, err := os.Stat(bin)
	if err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("built binary %s: %v", bin, err)
	}
	if hybridBin != bin {
		t.Fatalf("hybridBin = %q, want %q", hybridBin, bin)
	}
}
