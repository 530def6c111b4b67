package integration

// Every kind of resource the product promises, end to end through relay,
// agent and proxy (three hybrid processes), with real servers and clients
// from Debian packages:
//
//	resource                         test                            file
//	MariaDB/MySQL (server speaks     TestE2EResourceMariaDB          e2e_mariadb_test.go
//	  first: greeting + salt)        (mariadb client, mysqlslap)
//	SSH (server first, long-lived    TestE2EResourceSSH              e2e_ssh_test.go
//	  interactive session, scp)
//	HTTPS API (TLS untouched: SNI,   TestE2EResourceHTTPS            this file
//	  certificate, ALPN h2)          (curl --cacert --resolve)
//	Redis (many small requests)      TestE2EResourceRedis            e2e_redis_test.go
//	                                 (redis-benchmark)
//	a greeting before any client     TestE2EResourceServerFirst      this file
//	  byte (SMTP/FTP-like)
//	accept-then-close, filtered,     TestE2EResourceFailures         this file
//	  closed port
//
// PostgreSQL (client speaks first) is covered by e2e_pg_test.go.
//
// The servers come from Debian packages that .ci/run installs: mariadb-server
// and mariadb-client, openssh-server and openssh-client, redis-server and
// redis-tools, curl. Like the PostgreSQL tests, a test whose programs are
// missing fails when CI is set and skips otherwise.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/testenv"
)

// ---------------------------------------------------------------- helpers

// resourceMissing fails the test under CI (which must never skip silently)
// and skips it elsewhere.
func resourceMissing(t testing.TB, format string, args ...any) {
	t.Helper()
	testenv.SkipOrFail(t, "resource unavailable: %s (see .ci/run for the Debian packages)", fmt.Sprintf(format, args...))
}

// needProgram returns the path of the first of names found on PATH or in the
// sbin directories (daemons live there and root's PATH may lack them), or
// fails/skips the test naming the Debian package pkg that provides it.
func needProgram(t testing.TB, pkg string, names ...string) string {
	t.Helper()
	if p := findProgram(names...); p != "" {
		return p
	}
	resourceMissing(t, "none of %v found (Debian package %s)", names, pkg)
	return ""
}

// findProgram is needProgram's search: the path of the first of names on
// PATH or in the sbin and bin directories, or "" when there is none.
func findProgram(names ...string) string {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
		for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"} {
			p := filepath.Join(d, n)
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
				return p
			}
		}
	}
	return ""
}

// serviceUser returns the credential to run a daemon as when the test runs as
// root (name is its Debian system user, e.g. "mysql"), with its uid and gid;
// not root: nil and -1, -1 (the daemon runs as us).
func serviceUser(t testing.TB, name, pkg string) (*syscall.Credential, int, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil, -1, -1
	}
	u, err := user.Lookup(name)
	if err != nil {
		resourceMissing(t, "running as root and no %q OS user to run the server as (Debian package %s): %v", name, pkg, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, uid, gid
}

// serviceDir makes a temporary directory that a daemon running as uid:gid
// (uid < 0: as us) can use, and removes it when the test ends (registered
// first, so it runs after the daemon's own stop).
func serviceDir(t testing.TB, prefix string, uid, gid int) string {
	t.Helper()
	dir, err := os.MkdirTemp(pgTempRoot(uid), prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
	if uid >= 0 {
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// runResourceTool runs path with args to completion (killed after timeout) and
// returns its combined output; err is non-nil if it failed or timed out.
// stdin may be nil.
func runResourceTool(t testing.TB, timeout time.Duration, stdin io.Reader, path string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s timed out after %v", filepath.Base(path), timeout)
	}
	if err != nil {
		return string(out), fmt.Errorf("%s: %w", shellQuote(append([]string{path}, args...)), err)
	}
	return string(out), nil
}

// pairedPort returns a port that was free a moment ago on both 127.0.0.1 (for
// the resource) and 127.0.0.2 (for the proxy): the proxy then forwards the
// resource's own port on its own loopback address, so only the host of the
// app's connection string changes, as in production.
func pairedPort(t testing.TB) int {
	t.Helper()
	for range 50 {
		l1, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.2:%d", port))
		l1.Close()
		if err == nil {
			l2.Close()
			return port
		}
	}
	t.Fatal("pairedPort: no port free on both 127.0.0.1 and 127.0.0.2")
	return 0
}

// startProxyAt starts one more proxy for tun whose mappings listen exactly at
// listens (the fixture's own proxy takes fresh ports). The proxy writes its
// config in a directory of its own: the running roles watch tun.Dir for live
// reload.
func startProxyAt(t testing.TB, tun *tunnel, maps []proxyMap, listens []string) *Proc {
	t.Helper()
	cfg := writeFile(t, t.TempDir(), "proxy.yaml", tun.proxyYAML(maps, listens))
	p := startProcWith(t, ProcConfig{Label: fmt.Sprintf("proxy-at-%d", procSeq.Add(1))}, "hybrid", "proxy", "--config", cfg)
	for _, l := range listens {
		p.WaitLog(t, "forwarding: listen="+l+" ", e2eStartTimeout)
	}
	return p
}

// resSHA256File returns the hex SHA-256 of a file.
func resSHA256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// resRandomFile writes n pseudo-random bytes to path (incompressible, so ssh's
// or TLS's compression cannot flatter a transfer).
func resRandomFile(t testing.TB, path string, n int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	r := mrand.NewChaCha8([32]byte{'r', 'e', 's', 'o', 'u', 'r', 'c', 'e'})
	if _, err := io.CopyN(f, r, n); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func resMiBps(n int64, d time.Duration) float64 {
	return float64(n) / (1 << 20) / d.Seconds()
}

// ------------------------------------------------- server speaks first

// startSMTPLike starts a tiny server-first resource in the manner of SMTP or
// FTP's control connection: on accept it writes its greeting at once, before
// reading anything; then it answers each line with "250 " + line, and
// "221 bye" to QUIT.
func startSMTPLike(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { mu.Lock(); delete(conns, c); mu.Unlock(); c.Close() }()
				if _, err := io.WriteString(c, smtpGreeting); err != nil {
					return
				}
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					line := strings.TrimRight(sc.Text(), "\r")
					if line == "QUIT" {
						io.WriteString(c, "221 bye\r\n")
						return
					}
					if _, err := io.WriteString(c, "250 "+line+"\r\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

const smtpGreeting = "220 onprem.test ESMTP hybrid greeter ready\r\n"

// greetingTimeout is how long an app may wait for a greeting: far more than
// any real path needs (milliseconds), far less than forever, which is what a
// data path that waited for the client to speak first would give.
const greetingTimeout = 5 * time.Second

// readSMTPGreeting connects like a client of a server-first protocol: it writes
// nothing until the greeting has arrived, then has one exchange and quits.
// It returns how long the greeting took from the start of the dial.
func readSMTPGreeting(addr string) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, greetingTimeout)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(greetingTimeout))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("no greeting within %v without writing first (got %q): %w", greetingTimeout, line, err)
	}
	if line != smtpGreeting {
		return took, fmt.Errorf("greeting %q, want %q", line, smtpGreeting)
	}
	io.WriteString(c, "EHLO app.example\r\n")
	if line, err = r.ReadString('\n'); err != nil || line != "250 EHLO app.example\r\n" {
		return took, fmt.Errorf("reply to EHLO: %q, %v", line, err)
	}
	io.WriteString(c, "QUIT\r\n")
	if line, err = r.ReadString('\n'); err != nil || line != "221 bye\r\n" {
		return took, fmt.Errorf("reply to QUIT: %q, %v", line, err)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		return took, fmt.Errorf("after 221 bye: want EOF, got %v", err)
	}
	return took, nil
}

// greetRounds reads the greeting through addr n times one after the other,
// then n times concurrently, and logs the latencies.
func greetRounds(t *testing.T, what, addr string, n int) {
	t.Helper()
	var lat []time.Duration
	for range n {
		d, err := readSMTPGreeting(addr)
		if err != nil {
			t.Fatalf("%s: sequential session through %s: %v", what, addr, err)
		}
		lat = append(lat, d)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	var mu sync.Mutex
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := readSMTPGreeting(addr)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			lat = append(lat, d)
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("%s: concurrent session through %s: %v", what, addr, err)
	}
	slices.Sort(lat)
	t.Logf("%s: %d greetings read before the client wrote a byte; connect-to-greeting min %v, median %v, max %v",
		what, len(lat), lat[0].Round(time.Microsecond), lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond))
}

// TestE2EResourceServerFirst: nothing in the data path waits for the client
// to speak first. A resource that greets on accept (SMTP, FTP control, MySQL,
// SSH) reaches an app that only reads: on one stream after another, and on
// many streams opened at once. (e2e_lifecycle_test.go's
// TestE2EServerFirstGreeting checks the first streams of a fresh tunnel.)
func TestE2EResourceServerFirst(t *testing.T) {
	res := startSMTPLike(t)
	if d, err := readSMTPGreeting(res); err != nil {
		t.Fatalf("greeter directly: %v", err)
	} else {
		t.Logf("directly: greeting after %v", d.Round(time.Microsecond))
	}
	busy := startSayAndClose(t, busyReply)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "greet", Endpoint: res}, {Name: "busy", Endpoint: busy}}})
	greetRounds(t, "through the tunnel", tun.Listen["greet"], 25)

	// A resource that says why and hangs up at once ("421 too busy"): the
	// app, reading first, gets every byte and then the end of the stream,
	// although the resource had closed before the agent even joined.
	for i := range 5 {
		c, err := net.DialTimeout("tcp", tun.Listen["busy"], greetingTimeout)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(greetingTimeout))
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(b) != busyReply {
			t.Fatalf("busy resource, stream %d: got %q, %v; want %q then EOF", i, b, err, busyReply)
		}
	}
}

const busyReply = "421 onprem.test too busy, closing connection\r\n"

// startSayAndClose starts a resource that writes msg on accept and closes at
// once, without reading.
func startSayAndClose(t testing.TB, msg string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if msg != "" {
				io.WriteString(c, msg)
			}
			c.Close()
		}
	}()
	return l.Addr().String()
}

// ---------------------------------------------------- failing resources

// startAcceptClose starts a resource that accepts each connection and closes
// it at once, without reading or writing.
func startAcceptClose(t testing.TB) string {
	t.Helper()
	return startSayAndClose(t, "")
}

// startFiltered returns an address on 127.0.0.1 that behaves like a filtered
// port (a firewall that drops SYNs): connecting there gets no answer at all.
//
// The trick, without iptables and without leaving 127.0.0.0/8: a listening
// socket made with backlog 0 that never accepts. Linux lets backlog+1 = 1
// connection wait in its accept queue; we fill it ourselves, and from then on
// the kernel drops every new SYN (tcp_conn_request: accept queue full), so a
// connect(2) there retransmits its SYN until the caller's timeout, exactly as
// towards a filtered port. A closed port would answer RST at once instead.
func startFiltered(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the accept queue until a connect gets no answer.
	var fill []net.Conn
	t.Cleanup(func() {
		for _, c := range fill {
			c.Close()
		}
	})
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err == nil {
			fill = append(fill, c)
			if i < 8 {
				continue
			}
			t.Fatalf("startFiltered: %s still accepts connections after %d (backlog 0 should hold 1)", addr, len(fill))
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("startFiltered: connect to %s: %v, want a timeout once the queue is full", addr, err)
		}
		t.Logf("filtered resource %s: accept queue full after %d connection(s); further SYNs are dropped", addr, len(fill))
		return addr
	}
}

// appOutcome connects to addr like an app of a server-first protocol (it
// reads first, writing nothing) and reports how the connection ended and
// when. A byte from the resource is an error: none of these resources sends
// one.
func appOutcome(addr string, limit time.Duration) (time.Duration, error, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, limit)
	if err != nil {
		return time.Since(start), err, nil
	}
	defer c.Close()
	c.SetDeadline(start.Add(limit))
	var b [64]byte
	n, err := c.Read(b[:])
	took := time.Since(start)
	if n > 0 {
		return took, nil, fmt.Errorf("got %q from the resource, want the connection to end", b[:n])
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return took, nil, fmt.Errorf("still open after %v: the app hangs", limit)
	}
	return took, err, nil
}

// TestE2EResourceFailures: a resource that accepts and closes at once, one
// that never answers (filtered) and one whose port is closed each give the
// app a prompt end of its connection rather than a hang, and the agent says
// which it was.
func TestE2EResourceFailures(t *testing.T) {
	closes := startAcceptClose(t)
	filtered := startFiltered(t)
	closed := freeAddr(t, "127.0.0.1") // nothing listens there
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{
		{Name: "closes", Endpoint: closes},
		{Name: "filtered", Endpoint: filtered},
		{Name: "closed", Endpoint: closed},
	}})

	cases := []struct {
		hc       string
		min, max time.Duration
		// agentLog is what the agent logs about the stream.
		agentLog *regexp.Regexp
		// audit is the audit event and, for unreachable, its reason.
		audit, reason string
	}{
		{
			// The stream opens, and ends at once with nothing from the
			// resource: the app sees the end of the connection, as it would
			// directly.
			hc: "closes", max: 5 * time.Second,
			agentLog: regexp.MustCompile(`stream closed[^\n]*hc=closes[^\n]*from_resource=0`),
			audit:    "close",
		},
		{
			// The agent's dial gets no answer for its 10 s timeout: the app
			// is reset then, well before the relay's 20 s wait for a join.
			hc: "filtered", min: 9 * time.Second, max: 15 * time.Second,
			agentLog: regexp.MustCompile(`resource unreachable[^\n]*hc=filtered[^\n]*no answer within 10s \(filtered or down\)`),
			audit:    "unreachable", reason: "no answer within 10s (filtered or down)",
		},
		{
			hc: "closed", max: 5 * time.Second,
			agentLog: regexp.MustCompile(`resource unreachable[^\n]*hc=closed[^\n]*connection refused \(nothing listens there\)`),
			audit:    "unreachable", reason: "connection refused (nothing listens there)",
		},
	}
	// The three run at once: the filtered one takes its 10 s anyway.
	t.Run("group", func(t *testing.T) {
		for _, tc := range cases {
			t.Run(tc.hc, func(t *testing.T) {
				t.Parallel()
				addr := tun.Listen[tc.hc]
				took, end, err := appOutcome(addr, 30*time.Second)
				if err != nil {
					t.Fatalf("app through %s (hc %s): %v after %v", addr, tc.hc, err, took.Round(time.Millisecond))
				}
				switch {
				case end == nil:
					t.Fatalf("app through %s: empty read without an error", addr)
				case errors.Is(end, io.EOF), isReset(end), errors.Is(end, syscall.ECONNREFUSED):
				default:
					t.Fatalf("app through %s: %v, want EOF, reset or refused", addr, end)
				}
				if took > tc.max || took < tc.min {
					t.Fatalf("app through %s (hc %s): connection ended after %v, want within [%v, %v]", addr, tc.hc, took, tc.min, tc.max)
				}
				t.Logf("hc %s: the app's connection ended after %v: %v", tc.hc, took.Round(time.Millisecond), end)
				m := tun.Agent.WaitLog(t, tc.agentLog, 10*time.Second)
				t.Logf("hc %s: agent log: %s", tc.hc, m[0])
				lines := e2eWaitAudit(t, tun.Audit, tc.audit+" line for hc "+tc.hc, 10*time.Second, func(l auditLine) bool {
					return l.HC == tc.hc && l.Event == tc.audit
				})
				for _, l := range lines {
					if l.HC != tc.hc || l.Event != tc.audit {
						continue
					}
					if !strings.Contains(l.Reason, tc.reason) {
						t.Errorf("audit %s line for %s: reason %q, want it to contain %q", l.Event, tc.hc, l.Reason, tc.reason)
					}
					if tc.audit == "close" && l.BytesOut != 0 {
						t.Errorf("audit close line for %s: %d bytes from the resource, want 0", tc.hc, l.BytesOut)
					}
				}
				if tc.audit == "unreachable" {
					// The proxy says why too.
					tun.Proxy.WaitLog(t, regexp.MustCompile(`stream refused[^\n]*hc=`+tc.hc+`[^\n]*resource unreachable`), 10*time.Second)
				}
			})
		}
	})
	// What real clients of server-first protocols make of a closed port
	// through the tunnel: a prompt, clear error of their own.
	t.Run("clients", func(t *testing.T) {
		port := strconv.Itoa(e2ePort(t, tun.Listen["closed"]))
		for _, c := range []struct {
			pkg, prog string
			args      []string
			want      string
		}{
			{"mariadb-client", "mariadb", []string{"--no-defaults", "--protocol=TCP", "-h", "127.0.0.2", "-P", port, "-u", "app", "-e", "SELECT 1"}, "Lost connection"},
			{"openssh-client", "ssh", []string{"-F", "/dev/null", "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=/dev/null", "-p", port, "127.0.0.2", "true"}, "Connection reset"},
			{"redis-tools", "redis-cli", []string{"-h", "127.0.0.2", "-p", port, "PING"}, "Connection reset"},
		} {
			t.Run(c.prog, func(t *testing.T) {
				prog := needProgram(t, c.pkg, c.prog)
				start := time.Now()
				out, err := runResourceTool(t, time.Minute, nil, prog, c.args...)
				took := time.Since(start)
				if err == nil || !strings.Contains(out, c.want) || took > 5*time.Second {
					t.Fatalf("%s through the tunnel to a closed port: %v after %v, want a failure saying %q within 5 s:\n%s", c.prog, err, took, c.want, out)
				}
				t.Logf("%s: failed after %v: %s", c.prog, took.Round(time.Millisecond), strings.TrimSpace(strings.SplitN(out, "\n", 2)[0]))
			})
		}
	})

	// The relay and the roles carry on: nothing exited.
	for _, p := range []*Proc{tun.Relay, tun.Agent, tun.Proxy} {
		if p.Exited() {
			t.Errorf("%s exited: %s", p.Label, p.exitDesc())
		}
	}
}

// ------------------------------------------------------------------ HTTPS

// apiHost is the name the HTTPS resource's certificate carries; the app uses
// it unchanged, resolved to the proxy (curl --resolve stands in for DNS or a
// hosts file).
const apiHost = "api.internal.example"

// testPKI makes a CA and a server certificate signed by it for names (host
// names, or IP addresses such as 127.0.0.1).
func testPKI(t testing.TB, names ...string) (caPEM []byte, cert tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hybrid test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// startHTTPSAPI serves a small HTTPS API on 127.0.0.1:port with cert (HTTP/2
// and HTTP/1.1 offered by ALPN):
//
//	GET  /hello    the TLS facts as the server saw them: SNI, ALPN, protocol
//	GET  /big?n=N  N deterministic pseudo-random bytes
//	POST /sha256   the hex SHA-256 and length of the request body
func startHTTPSAPI(t testing.TB, port int, cert tls.Certificate) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the on-prem API: sni=%s alpn=%s proto=%s host=%s\n",
			r.TLS.ServerName, r.TLS.NegotiatedProtocol, r.Proto, r.Host)
	})
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.CopyN(w, mrand.NewChaCha8([32]byte{'b', 'i', 'g'}), n)
	})
	mux.HandleFunc("POST /sha256", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%x %d\n", h.Sum(nil), n)
	})
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		ReadHeaderTimeout: 10 * time.Second,
		// Quiet: the negative cases below abort handshakes on purpose (and
		// Go logs curl's abort as "bad record MAC", directly as well).
		ErrorLog: log.New(io.Discard, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeTLS(l, "", "")
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}

// TestE2EResourceHTTPS: a TLS API published through the tunnel is reached by
// curl with its original host name; curl verifies the resource's certificate
// against the resource's CA, sends SNI and negotiates HTTP/2 by ALPN with the
// resource itself. The tunnel is byte-transparent: it neither terminates nor
// alters TLS.
func TestE2EResourceHTTPS(t *testing.T) {
	curl := needProgram(t, "curl", "curl")
	port := pairedPort(t)
	caPEM, cert := testPKI(t, apiHost)
	dir := t.TempDir()
	caFile := writeFile(t, dir, "ca.pem", string(caPEM))
	startHTTPSAPI(t, port, cert)
	endpoint := fmt.Sprintf("127.0.0.1:%d", port)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "api", Endpoint: endpoint}}})
	listen := fmt.Sprintf("127.0.0.2:%d", port) // the API's own port, on the proxy's address
	startProxyAt(t, tun, []proxyMap{{Name: "api"}}, []string{listen})

	url := fmt.Sprintf("https://%s:%d", apiHost, port)
	resolve := fmt.Sprintf("%s:%d:127.0.0.2", apiHost, port)
	base := []string{"-sS", "--fail", "--max-time", "30", "--cacert", caFile, "--resolve", resolve}

	// The page, over HTTP/2 negotiated with the resource.
	out, err := runResourceTool(t, time.Minute, nil, curl, append(base, "--http2",
		"-w", "verify=%{ssl_verify_result} http=%{http_version} remote=%{remote_ip}:%{remote_port}\n", url+"/hello")...)
	if err != nil {
		t.Fatalf("curl %s/hello through the tunnel: %v\n%s", url, err, out)
	}
	t.Logf("curl --cacert ca.pem --resolve %s %s/hello:\n%s", resolve, url, strings.TrimSpace(out))
	for _, want := range []string{
		"hello from the on-prem API: sni=" + apiHost + " alpn=h2 proto=HTTP/2.0 host=" + fmt.Sprintf("%s:%d", apiHost, port),
		"verify=0 http=2 remote=127.0.0.2:" + strconv.Itoa(port),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("curl output lacks %q", want)
		}
	}
	// HTTP/1.1 by ALPN too.
	out, err = runResourceTool(t, time.Minute, nil, curl, append(base, "--http1.1", "-w", "http=%{http_version}\n", url+"/hello")...)
	if err != nil || !strings.Contains(out, "alpn=http/1.1 proto=HTTP/1.1") || !strings.Contains(out, "http=1.1") {
		t.Errorf("curl --http1.1 through the tunnel: %v\n%s", err, out)
	}

	// The certificate really is checked, end to end, against the name the
	// app uses: the same address under another name fails verification, as
	// does a CA the app does not trust.
	out, err = runResourceTool(t, time.Minute, nil, curl, "-sS", "--max-time", "30", "--cacert", caFile, fmt.Sprintf("https://127.0.0.2:%d/hello", port))
	if err == nil || !strings.Contains(out, "SSL") && !strings.Contains(out, "certificate") {
		t.Errorf("curl by IP address (not a name in the certificate) through the tunnel: want a verification failure, got %v\n%s", err, out)
	}
	out, err = runResourceTool(t, time.Minute, nil, curl, "-sS", "--max-time", "30", "--resolve", resolve, url+"/hello")
	if err == nil || !strings.Contains(out, "certificate") {
		t.Errorf("curl with only the system's CAs through the tunnel: want a verification failure, got %v\n%s", err, out)
	}

	// Bulk both ways, over TLS: 16 MiB down, 8 MiB up.
	const down, up = 16 << 20, 8 << 20
	got := filepath.Join(dir, "big.bin")
	start := time.Now()
	if out, err := runResourceTool(t, 2*time.Minute, nil, curl, append(base, "-o", got, fmt.Sprintf("%s/big?n=%d", url, down))...); err != nil {
		t.Fatalf("curl download through the tunnel: %v\n%s", err, out)
	}
	took := time.Since(start)
	h := sha256.New()
	io.CopyN(h, mrand.NewChaCha8([32]byte{'b', 'i', 'g'}), down)
	if want := hex.EncodeToString(h.Sum(nil)); resSHA256File(t, got) != want {
		t.Fatalf("HTTPS download of %d bytes: sha256 differs", down)
	}
	t.Logf("HTTPS download 16 MiB through the tunnel: %v (%.0f MiB/s)", took.Round(time.Millisecond), resMiBps(down, took))
	upFile := filepath.Join(dir, "up.bin")
	resRandomFile(t, upFile, up)
	start = time.Now()
	out, err = runResourceTool(t, 2*time.Minute, nil, curl, append(base, "--data-binary", "@"+upFile, "-H", "Content-Type: application/octet-stream", url+"/sha256")...)
	took = time.Since(start)
	if want := resSHA256File(t, upFile) + " " + strconv.Itoa(up); err != nil || strings.TrimSpace(out) != want {
		t.Fatalf("HTTPS upload of %d bytes through the tunnel: %v; server says %q, want %q", up, err, strings.TrimSpace(out), want)
	}
	t.Logf("HTTPS upload 8 MiB through the tunnel: %v (%.0f MiB/s)", took.Round(time.Millisecond), resMiBps(up, took))

	// Many requests on one kept-alive connection, and many connections.
	args := append([]string{}, base...)
	for range 50 {
		args = append(args, url+"/hello")
	}
	out, err = runResourceTool(t, time.Minute, nil, curl, args...)
	if err != nil || strings.Count(out, "hello from the on-prem API") != 50 {
		t.Errorf("50 requests on one connection: %v\n%s", err, tailLines(out, 5))
	}
	var wg sync.WaitGroup
	errs := make(chan string, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := runResourceTool(t, time.Minute, nil, curl, append(base, url+"/hello")...)
			if err != nil || !strings.Contains(out, "sni="+apiHost) {
				errs <- fmt.Sprintf("%v: %s", err, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("concurrent curl: %s", e)
	}
}
