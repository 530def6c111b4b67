package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/testenv"
)

// PostgreSQL helpers: a throwaway server per call of startPostgres, and psql /
// pgbench runners usable against it directly or through a hybrid tunnel.

const (
	psqlTimeout      = 60 * time.Second
	pgbenchTimeout   = 10 * time.Minute
	pgStartTimeout   = 90 * time.Second
	pgStopTimeout    = 60 * time.Second
	pgInitdbTimeout  = 3 * time.Minute
	pgStartAttempts  = 3 // a free port can be taken between freePort and bind
	pgSuperuser      = "postgres"
	pgFallbackTmpDir = "/tmp"
)

// Postgres is a running throwaway PostgreSQL server listening on Host:Port
// (TCP, trust authentication for User). It is stopped (fast shutdown) and its
// files removed when the test ends.
type Postgres struct {
	Host string
	Port int
	User string

	// Dir is the data directory; SocketDir holds its Unix socket.
	Dir       string
	SocketDir string

	proc *Proc
}

// Addr is "Host:Port", the endpoint to publish through an agent.
func (pg *Postgres) Addr() string { return fmt.Sprintf("%s:%d", pg.Host, pg.Port) }

// DSN returns a libpq keyword/value connection string for this server's
// superuser and database, reaching it at host:port — pass the server's own
// Host/Port to connect directly, or a proxy's listen address to go through a
// tunnel.
func (pg *Postgres) DSN(host string, port int) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=postgres sslmode=disable connect_timeout=10", host, port, pg.User)
}

// DirectDSN is DSN(pg.Host, pg.Port).
func (pg *Postgres) DirectDSN() string { return pg.DSN(pg.Host, pg.Port) }

// Proc is the postmaster process (for its log, or Kill to simulate a crash).
func (pg *Postgres) Proc() *Proc { return pg.proc }

// Stop shuts the server down (fast shutdown: SIGINT) and fails the test if it
// takes longer than a minute. Cleanup does this anyway.
func (pg *Postgres) Stop(t testing.TB) { t.Helper(); pg.proc.Stop(t) }

var (
	pgBinOnce sync.Once
	pgBinPath string
	pgBinErr  error
)

// pgMissing fails the test under CI (which must never skip silently) and
// skips it elsewhere.
func pgMissing(t testing.TB, format string, args ...any) {
	t.Helper()
	testenv.SkipOrFail(t, "PostgreSQL unavailable: %s (install postgresql, or see .ci/run)", fmt.Sprintf(format, args...))
}

// pgBin returns the path of a PostgreSQL program (initdb, postgres, psql,
// pgbench, pg_isready, ...) from the newest server installation found, or
// fails/skips the test (see pgMissing) when there is none.
func pgBin(t testing.TB, name string) string {
	t.Helper()
	pgBinOnce.Do(func() { pgBinPath, pgBinErr = findPgBinDir() })
	if pgBinErr != nil {
		pgMissing(t, "%v", pgBinErr)
	}
	p := filepath.Join(pgBinPath, name)
	if _, err := os.Stat(p); err != nil {
		pgMissing(t, "%s not found in %s", name, pgBinPath)
	}
	return p
}

// findPgBinDir looks for a directory holding initdb, postgres, psql and
// pgbench: /usr/lib/postgresql/<newest>/bin (Debian), then `pg_config
// --bindir`, then wherever initdb is on PATH.
func findPgBinDir() (string, error) {
	complete := func(dir string) bool {
		for _, n := range []string{"initdb", "postgres", "pg_isready", "psql", "pgbench"} {
			if fi, err := os.Stat(filepath.Join(dir, n)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(matches, func(i, j int) bool { // newest major version first
		vi, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(matches[i])), 64)
		vj, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(matches[j])), 64)
		return vi > vj
	})
	for _, d := range matches {
		if complete(d) {
			return d, nil
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if d := strings.TrimSpace(string(out)); complete(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if d := filepath.Dir(p); complete(d) {
			return d, nil
		}
	}
	return "", errors.New("no directory with initdb, postgres, pg_isready, psql and pgbench (looked in /usr/lib/postgresql/*/bin, pg_config --bindir, PATH)")
}

// pgEnv is the environment for PostgreSQL programs: ours minus PG* variables,
// so that a developer's PGHOST/PGPASSWORD/PGSERVICE cannot redirect the tests.
func pgEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

// startPostgres initialises and starts a throwaway PostgreSQL on 127.0.0.1 at
// a free port and waits until pg_isready succeeds. As root, the server runs as
// the "postgres" OS user (PostgreSQL refuses to run as root) in a directory
// made under os.TempDir and chowned to it (t.TempDir directories are 0700 and
// root's, unusable by postgres).
func startPostgres(t testing.TB) *Postgres {
	t.Helper()
	initdb := pgBin(t, "initdb")
	postgres := pgBin(t, "postgres")

	var cred *syscall.Credential
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup(pgSuperuser)
		if err != nil {
			pgMissing(t, "running as root and no %q OS user to run the server as: %v", pgSuperuser, err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}

	base, err := os.MkdirTemp(pgTempRoot(uid), "hybrid-pg-")
	if err != nil {
		t.Fatalf("startPostgres: %v", err)
	}
	// Registered before the server's own cleanup, so it runs after the stop.
	t.Cleanup(func() {
		if err := os.RemoveAll(base); err != nil {
			t.Errorf("startPostgres: removing %s: %v", base, err)
		}
	})
	pg := &Postgres{
		Host:      "127.0.0.1",
		User:      pgSuperuser,
		Dir:       filepath.Join(base, "data"),
		SocketDir: filepath.Join(base, "sock"),
	}
	if err := os.Mkdir(pg.SocketDir, 0o700); err != nil {
		t.Fatalf("startPostgres: %v", err)
	}
	if uid >= 0 {
		for _, p := range []string{base, pg.SocketDir} {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatalf("startPostgres: chown %s: %v", p, err)
			}
		}
	}

	// initdb: trust auth, no fsync, C locale (minimal machines lack others).
	ctx, cancel := context.WithTimeout(context.Background(), pgInitdbTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, initdb, "-D", pg.Dir, "-A", "trust", "-U", pgSuperuser,
		"--no-sync", "-E", "UTF8", "--locale=C", "--no-instructions")
	cmd.Dir = base
	cmd.Env = pgEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("initdb failed: %v\n%s", err, out)
	}
	t.Logf("initdb %s took %v", pg.Dir, time.Since(start).Round(time.Millisecond))

	for attempt := 1; ; attempt++ {
		start := time.Now()
		pg.Port = freePort(t)
		pg.proc = startProcWith(t, ProcConfig{
			Label:       fmt.Sprintf("postgres-%d", pg.Port),
			Dir:         base,
			Env:         []string{"LC_ALL=C"},
			StopSignal:  syscall.SIGINT, // fast shutdown; SIGTERM would wait for clients
			StopTimeout: pgStopTimeout,
			Credential:  cred,
		}, postgres,
			"-D", pg.Dir,
			"-p", strconv.Itoa(pg.Port),
			"-k", pg.SocketDir,
			"-c", "listen_addresses="+pg.Host,
			"-c", "fsync=off",
			"-c", "synchronous_commit=off",
			"-c", "full_page_writes=off",
			"-c", "max_connections=100",
		)
		err := waitPgReady(pg, pgStartTimeout)
		if err == nil {
			t.Logf("postgres ready on %s after %v", pg.Addr(), time.Since(start).Round(time.Millisecond))
			return pg
		}
		if pg.proc.Exited() && attempt < pgStartAttempts &&
			regexp.MustCompile(`could not bind|Address already in use|could not create any TCP/IP sockets`).MatchString(pg.proc.Output()) {
			t.Logf("postgres could not bind port %d (taken meanwhile?), retrying", pg.Port)
			continue
		}
		t.Fatalf("postgres did not become ready: %v\noutput:\n%s", err, tailLines(pg.proc.Output(), 50))
	}
}

// pgTempRoot is os.TempDir, unless the server's user (uid >= 0) could not
// traverse it, in which case /tmp.
func pgTempRoot(uid int) string {
	dir := os.TempDir()
	if uid < 0 {
		return dir
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return pgFallbackTmpDir
		}
		if d == filepath.Dir(d) {
			return dir
		}
	}
}

// waitPgReady polls pg_isready until the server accepts connections, the
// postmaster exits, or timeout passes.
func waitPgReady(pg *Postgres, timeout time.Duration) error {
	isready := filepath.Join(pgBinPath, "pg_isready")
	deadline := time.Now().Add(timeout)
	var last string
	for {
		if pg.proc.Exited() {
			return fmt.Errorf("postmaster exited (%s)", pg.proc.exitDesc())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, isready, "-h", pg.Host, "-p", strconv.Itoa(pg.Port), "-U", pg.User, "-d", "postgres", "-t", "2")
		cmd.Env = pgEnv()
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil {
			return nil
		}
		last = fmt.Sprintf("%v: %s", err, strings.TrimSpace(string(out)))
		if time.Now().After(deadline) {
			return fmt.Errorf("pg_isready still failing after %v: %s", timeout, last)
		}
		select {
		case <-pg.proc.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// psql runs `psql -X -A -t -v ON_ERROR_STOP=1 <dsn> -c <sql>` (60 s timeout)
// and returns its trimmed combined output; err is non-nil if psql failed or
// timed out. With -A -t a single value comes back bare, e.g. "1".
func psql(t testing.TB, dsn, sql string) (string, error) {
	t.Helper()
	return runPgTool(t, psqlTimeout, "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", dsn, "-c", sql)
}

// pgbench runs `pgbench <args...> <dsn>` (10 min timeout) and returns its
// trimmed combined output. Parse it with pgbenchFailed and pgbenchTPS.
func pgbench(t testing.TB, dsn string, args ...string) (string, error) {
	t.Helper()
	return runPgTool(t, pgbenchTimeout, "pgbench", append(append([]string{}, args...), dsn)...)
}

func runPgTool(t testing.TB, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	bin := pgBin(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = pgEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	s := strings.TrimSpace(string(out))
	if ctx.Err() != nil {
		return s, fmt.Errorf("%s timed out after %v: %w", name, timeout, ctx.Err())
	}
	if err != nil {
		return s, fmt.Errorf("%s: %w", name, err)
	}
	return s, nil
}

var (
	reFailedTx    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reProcessedTx = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)(?:/(\d+))?`)
	reTPS         = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
)

// pgbenchFailed extracts how many transactions failed from pgbench output:
// the "number of failed transactions: N" line (pgbench >= 15), plus any
// shortfall in "number of transactions actually processed: X/Y" (clients
// that aborted, e.g. on a dropped connection, never reach their quota).
// ok is false if neither line is present (pgbench died before its report).
func pgbenchFailed(out string) (failed int, ok bool) {
	if m := reFailedTx.FindStringSubmatch(out); m != nil {
		failed, _ = strconv.Atoi(m[1])
		ok = true
	}
	if m := reProcessedTx.FindStringSubmatch(out); m != nil {
		ok = true
		if m[2] != "" {
			done, _ := strconv.Atoi(m[1])
			want, _ := strconv.Atoi(m[2])
			if short := want - done; short > failed {
				failed = short
			}
		}
	}
	return failed, ok
}

// pgbenchTPS extracts the first "tps = N" figure from pgbench output.
func pgbenchTPS(out string) (float64, bool) {
	m := reTPS.FindStringSubmatch(out)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}
