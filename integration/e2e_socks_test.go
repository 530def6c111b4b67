package integration

// SOCKS5 on the proxy, end to end, with real clients no one here wrote:
// curl (--socks5-hostname and --socks5) and psql under proxychains4, plus a
// small SOCKS client of our own for the reply codes and garbage handshakes.
//
// Names. The resources are published under on-premises names that exist
// nowhere on the app's side (.invalid never resolves: RFC 2606). Only the
// agent may resolve them, so the agent runs in a private mount namespace
// (`unshare -m`) where a temporary hosts file — the "on-prem DNS" — is
// bind-mounted over /etc/hosts and maps every name to 127.0.0.1, where the
// test's servers listen. The relay, the proxy and the clients run in the
// test's own namespace, where the names do not resolve (checked first). The
// real /etc/hosts is never written: the bind mount lives and dies with the
// agent's namespace, and the test only writes its temporary file. A mount
// namespace is robust here where alternatives are not: a resolver override
// for Go alone would not reach curl or psql, and names like *.localhost are
// resolved differently by different libraries.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/testenv"
)

// nsMissing fails the test under CI and skips it elsewhere, like pgMissing.
func nsMissing(t testing.TB, format string, args ...any) {
	t.Helper()
	testenv.SkipOrFail(t, "prerequisite missing: %s (see .ci/run)", fmt.Sprintf(format, args...))
}

// needTools skips (fails under CI) unless every program is on PATH.
func needTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			nsMissing(t, "%s not found on PATH", n)
		}
	}
}

// needMountNamespace skips (fails under CI) unless this process may make a
// private mount namespace and bind-mount a file over /etc/hosts in it.
func needMountNamespace(t testing.TB) {
	t.Helper()
	needTools(t, "unshare", "mount", "nsenter")
	f := writeFile(t, t.TempDir(), "hosts", "127.0.0.1 probe.hybrid.invalid\n")
	out, err := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
		`mount --bind "$0" /etc/hosts && grep -q probe.hybrid.invalid /etc/hosts`, f).CombinedOutput()
	if err != nil {
		nsMissing(t, "cannot bind-mount over /etc/hosts in a private mount namespace (needs root or CAP_SYS_ADMIN): %v: %s", err, out)
	}
}

// nsScript is run by sh inside `unshare -m`: it bind-mounts $0 (a temporary
// hosts file) over /etc/hosts, in this namespace only, and execs "$@" — same
// pid, so signals reach the program itself.
const nsScript = `mount --bind "$0" /etc/hosts && exec "$@"`

// startWithHosts runs the hybrid binary with args in a private mount
// namespace whose /etc/hosts is hostsFile.
func startWithHosts(t testing.TB, label, hostsFile string, args ...string) *Proc {
	t.Helper()
	argv := append([]string{"-m", "--propagation", "private", "sh", "-c", nsScript, hostsFile, hybridBinary(t)}, args...)
	return startProcWith(t, ProcConfig{Label: label}, "unshare", argv...)
}

// startAgentWithHosts starts tun's agent (tun.AgentConfig) with onpremHosts
// as its /etc/hosts and waits until it listens for every served HC.
func (tun *tunnel) startAgentWithHosts(t testing.TB, onpremHosts string) *Proc {
	t.Helper()
	p := startWithHosts(t, fmt.Sprintf("agent-%d", procSeq.Add(1)), onpremHosts, "agent", "--config", tun.AgentConfig)
	for _, hc := range tun.served() {
		p.WaitLog(t, regexp.MustCompile(`agent: listening: relay=\S+ hc=`+regexp.QuoteMeta(hc.Name)+` endpoint=`), e2eStartTimeout)
	}
	return p
}

// startRelayAndAgent is startTunnel's first half, with the agent in its own
// namespace: the on-prem names it publishes resolve to 127.0.0.1 there only.
func startRelayAndAgent(t testing.TB, hcs []hcDef, names ...string) *tunnel {
	t.Helper()
	tun := &tunnel{Dir: t.TempDir(), HCs: hcs, Keys: map[string]hcKeys{}}
	for _, hc := range hcs {
		tun.Keys[hc.Name] = hcKeys{Apps: e2eKey(t), Onprem: e2eKey(t)}
	}
	tun.Audit = filepath.Join(tun.Dir, "audit.jsonl")
	tun.startRelay(t)
	tun.AgentConfig = writeFile(t, tun.Dir, "agent.yaml", tun.agentYAML())
	onprem := writeFile(t, tun.Dir, "onprem-hosts",
		"# the on-prem DNS, as the agent sees it\n127.0.0.1\tlocalhost "+strings.Join(names, " ")+"\n")
	tun.Agent = tun.startAgentWithHosts(t, onprem)
	return tun
}

// socksMapping is one proxy.connections entry of a test proxy config.
type socksMapping struct {
	Name, Endpoint string
	Key            string // default: the HC's send key
}

// proxyConfigYAML is a proxy config for tun: no listen mappings, only
// endpoints; extra is YAML added to the proxy section (socks:, hosts:, ...).
func (tun *tunnel) proxyConfigYAML(extra string, cs []socksMapping) string {
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: debug}\nproxy:\n  relay: %s\n%s  connections:\n", tun.relayLine(), extra)
	for _, c := range cs {
		key := c.Key
		if key == "" {
			key = tun.Keys[c.Name].Apps
		}
		fmt.Fprintf(&b, "    - {name: %s, endpoint: %q, key_name: apps, key: %q}\n", c.Name, c.Endpoint, key)
	}
	return b.String()
}

// namedHTTPResource serves body on 127.0.0.1 (a free port) for the test's life.
func namedHTTPResource(t testing.TB, body string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s (Host: %s)\n", body, r.Host)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// runClient runs a client program with a timeout and returns its combined output
// and exit code (-1: killed or not started).
func runClient(t testing.TB, timeout time.Duration, env []string, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(pgEnv(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("%s -> %v\n%s", shellQuote(append([]string{name}, args...)), err, tailLines(string(out), 20))
	if ctx.Err() != nil {
		t.Fatalf("%s timed out after %v", name, timeout)
	}
	if cmd.ProcessState == nil {
		return string(out), -1
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// SOCKS5 reply codes, as RFC 1928 numbers them.
const (
	replyOK             = 0x00
	replyGeneralFailure = 0x01
	replyNotAllowed     = 0x02
	replyNetUnreachable = 0x03
	replyHostUnreach    = 0x04
	replyRefused        = 0x05
	replyCmdUnsupported = 0x07
	noAcceptableMethods = 0xff // not a reply: the server took none of the offered methods
	authRefused         = 0xfe // not a reply: the username/password was refused
)

// socks5Request speaks SOCKS5 to addr: a greeting offering username/password when
// user is set (no authentication otherwise), then command cmd (1 CONNECT, 2
// BIND, 3 UDP ASSOCIATE) for host:port — host sent as an IP address when it
// is one, as a name otherwise (what socks5h clients do). It returns the reply
// code and the connection, positioned after the reply.
func socks5Request(t testing.TB, addr, user, pass string, cmd byte, host string, port int) (byte, net.Conn) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(40 * time.Second)) // above the proxy's 30 s bound on opening a stream
	br := bufio.NewReader(c)
	read := func(n int) []byte {
		t.Helper()
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			t.Fatalf("socks client: reading %d bytes: %v", n, err)
		}
		return b
	}
	method := byte(0)
	if user != "" {
		method = 2
	}
	c.Write([]byte{5, 1, method})
	if m := read(2); m[1] == 0xff {
		return noAcceptableMethods, c
	} else if m[0] != 5 || m[1] != method {
		t.Fatalf("socks client: method reply %v", m)
	}
	if user != "" {
		msg := append([]byte{1, byte(len(user))}, user...)
		c.Write(append(append(msg, byte(len(pass))), pass...))
		if r := read(2); r[1] != 0 {
			return authRefused, c
		}
	}
	req := []byte{5, cmd, 0}
	if ip := net.ParseIP(host); ip != nil && ip.To4() != nil {
		req = append(append(req, 1), ip.To4()...)
	} else if ip != nil {
		req = append(append(req, 4), ip...)
	} else {
		req = append(append(req, 3, byte(len(host))), host...)
	}
	c.Write(binary.BigEndian.AppendUint16(req, uint16(port)))
	h := read(4)
	switch h[3] {
	case 1:
		read(4 + 2)
	case 4:
		read(16 + 2)
	case 3:
		read(int(read(1)[0]) + 2)
	}
	c.SetDeadline(time.Time{})
	return h[1], &socksBufConn{Conn: c, r: br}
}

type socksBufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *socksBufConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// socksEnv is a relay, an agent publishing on-prem names, resources behind
// it, and a proxy with a SOCKS5 listener (username/password required).
type socksEnv struct {
	tun         *tunnel
	proxy       *Proc
	proxyConfig string
	socks       string // the proxy's SOCKS5 address
	user, pass  string
	pg          *Postgres
	// Ports on 127.0.0.1 of the resources.
	intranet, byIP, closed int
	conns                  []socksMapping
}

const socksUser = "billing-app"

func startSocksEnv(t *testing.T) *socksEnv {
	t.Helper()
	env := &socksEnv{user: socksUser, pass: strings.TrimRight(strings.NewReplacer("+", "x", "/", "y").Replace(e2eKey(t)), "=")}
	env.pg = startPostgres(t)
	env.intranet = namedHTTPResource(t, "hello from the intranet")
	env.byIP = namedHTTPResource(t, "hello by address")
	env.closed = freePort(t) // nothing listens there
	pgEP := fmt.Sprintf("pg.corp.invalid:%d", env.pg.Port)
	intranetEP := fmt.Sprintf("intranet.corp.invalid:%d", env.intranet)
	ipEP := fmt.Sprintf("127.0.0.1:%d", env.byIP)
	closedEP := fmt.Sprintf("closed.corp.invalid:%d", env.closed)
	env.tun = startRelayAndAgent(t, []hcDef{
		{Name: "intranet", Endpoint: intranetEP},
		{Name: "web-by-ip", Endpoint: ipEP},
		{Name: "pg", Endpoint: pgEP},
		{Name: "closed", Endpoint: closedEP},
		{Name: "mismatch", Endpoint: ipEP}, // the proxy asks for another target
		{Name: "badkey", Endpoint: ipEP},
		{Name: "noagent"}, // known to the relay, served by no agent
	}, "intranet.corp.invalid", "pg.corp.invalid", "closed.corp.invalid")
	env.conns = []socksMapping{
		{Name: "intranet", Endpoint: intranetEP},
		{Name: "web-by-ip", Endpoint: ipEP},
		{Name: "pg", Endpoint: pgEP},
		{Name: "closed", Endpoint: closedEP},
		{Name: "mismatch", Endpoint: "mismatch.corp.invalid:81"},
		{Name: "badkey", Endpoint: "badkey.corp.invalid:82", Key: e2eKey(t)},
		{Name: "noagent", Endpoint: "noagent.corp.invalid:83"},
	}
	for attempt := 1; ; attempt++ {
		env.socks = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		env.proxyConfig = writeFile(t, env.tun.Dir, "proxy.yaml", env.proxyYAML(env.pass))
		env.proxy = startProcWith(t, ProcConfig{Label: fmt.Sprintf("proxy-%d", procSeq.Add(1))}, "hybrid", "proxy", "--config", env.proxyConfig)
		err := e2eWaitOutput(env.proxy, "proxy: socks: listening: listen="+env.socks+" auth=true", e2eStartTimeout)
		if err == nil {
			return env
		}
		if env.proxy.Exited() && attempt < e2eStartAttempts && e2eAddrInUse.MatchString(env.proxy.Output()) {
			continue
		}
		t.Fatalf("proxy did not start: %v\n%s", err, tailLines(env.proxy.Output(), 50))
	}
}

func (env *socksEnv) proxyYAML(pass string) string {
	return env.tun.proxyConfigYAML(fmt.Sprintf("  socks: %s\n  socks_auth: {username: %s, password: %q}\n", env.socks, env.user, pass), env.conns)
}

// curl runs curl through the SOCKS proxy; mode is --socks5-hostname or
// --socks5.
func (env *socksEnv) curl(t *testing.T, mode, url string, extra ...string) (string, int) {
	t.Helper()
	args := append([]string{"-sS", "--max-time", "30", mode, env.socks, "--proxy-user", env.user + ":" + env.pass}, extra...)
	return runClient(t, 60*time.Second, nil, "curl", append(args, url)...)
}

func TestE2ESocks(t *testing.T) {
	needTools(t, "curl", "proxychains4")
	needMountNamespace(t)
	env := startSocksEnv(t)

	// The premise: the on-prem names do not exist on the app's side.
	for _, name := range []string{"intranet.corp.invalid", "pg.corp.invalid"} {
		if addrs, err := net.DefaultResolver.LookupHost(context.Background(), name); err == nil {
			t.Fatalf("%s resolves on the app side (%v): the test proves nothing", name, addrs)
		}
	}

	t.Run("curl --socks5-hostname reaches a name that resolves only on-prem", func(t *testing.T) {
		url := fmt.Sprintf("http://intranet.corp.invalid:%d/", env.intranet)
		out, code := env.curl(t, "--socks5-hostname", url)
		if code != 0 || !strings.Contains(out, "hello from the intranet") {
			t.Fatalf("curl --socks5-hostname %s: exit %d, output %q", url, code, out)
		}
		// The stream carried the target, and the agent checked it.
		e2eWaitAudit(t, env.tun.Audit, "an open for intranet with its target", 10*time.Second, func(l auditLine) bool {
			return l.Event == "open" && l.HC == "intranet" && l.Target == fmt.Sprintf("intranet.corp.invalid:%d", env.intranet)
		})
	})

	t.Run("curl --socks5 reaches an IP endpoint", func(t *testing.T) {
		out, code := env.curl(t, "--socks5", fmt.Sprintf("http://127.0.0.1:%d/", env.byIP))
		if code != 0 || !strings.Contains(out, "hello by address") {
			t.Fatalf("exit %d, output %q", code, out)
		}
	})

	t.Run("curl --socks5 to a name endpoint is refused with a socks5h hint", func(t *testing.T) {
		// Local resolution: give curl an answer for the name (as the app's
		// DNS might), so it sends an address the proxy cannot match.
		mark := env.proxy.Mark()
		url := fmt.Sprintf("http://intranet.corp.invalid:%d/", env.intranet)
		out, code := env.curl(t, "--socks5", url, "--resolve", fmt.Sprintf("intranet.corp.invalid:%d:127.0.0.1", env.intranet))
		if code == 0 || strings.Contains(out, "hello") {
			t.Fatalf("curl --socks5 got through: exit %d, output %q", code, out)
		}
		// curl 7.88 reports the reply code in parentheses; exit 97 is CURLE_PROXY.
		if !strings.Contains(out, "(2)") && !strings.Contains(strings.ToLower(out), "not allowed") {
			t.Errorf("curl did not report reply 0x02 (not allowed by ruleset): exit %d, %q", code, out)
		}
		line := env.proxy.WaitLogAfter(t, mark, regexp.MustCompile(`socks: refused: no connection publishes this target: .*target=127\.0\.0\.1:`+strconv.Itoa(env.intranet)+`.*`), 10*time.Second)[0]
		if !strings.Contains(line, "socks5h") || !strings.Contains(line, fmt.Sprintf("intranet.corp.invalid:%d", env.intranet)) {
			t.Errorf("refusal logged without the remote-resolution hint: %s", line)
		}
	})

	t.Run("psql through proxychains4 with an on-prem name in its connection string", func(t *testing.T) {
		conf := writeFile(t, t.TempDir(), "proxychains.conf", fmt.Sprintf(`# proxychains4: every connection of the app through our SOCKS5 port
strict_chain
proxy_dns
remote_dns_subnet 224
tcp_read_time_out 15000
tcp_connect_time_out 10000
[ProxyList]
socks5 127.0.0.1 %d %s %s
`, e2ePort(t, env.socks), env.user, env.pass))
		dsn := fmt.Sprintf("host=pg.corp.invalid port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=20", env.pg.Port)
		out, code := runClient(t, 60*time.Second, nil, "proxychains4", "-q", "-f", conf,
			pgBin(t, "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", dsn, "-c", "select 'answer ' || 6*7 || ' from port ' || inet_server_port()")
		if want := fmt.Sprintf("answer 42 from port %d", env.pg.Port); code != 0 || !strings.Contains(out, want) {
			t.Fatalf("psql under proxychains4: exit %d, output %q, want %q", code, out, want)
		}
	})

	t.Run("reply codes", func(t *testing.T) {
		tests := []struct {
			name      string
			cmd       byte
			host      string
			port      int
			want      byte
			user      string // default: the right credentials
			pass      string
			logSubstr string // in the proxy's log
		}{
			{name: "CONNECT by name", cmd: 1, host: "intranet.corp.invalid", port: env.intranet, want: replyOK},
			{name: "unmatched target", cmd: 1, host: "elsewhere.corp.invalid", port: 80, want: replyNotAllowed,
				logSubstr: "target=elsewhere.corp.invalid:80"},
			{name: "BIND", cmd: 2, host: "intranet.corp.invalid", port: env.intranet, want: replyCmdUnsupported, logSubstr: "command=BIND"},
			{name: "UDP ASSOCIATE", cmd: 3, host: "0.0.0.0", port: 0, want: replyCmdUnsupported, logSubstr: `command="UDP ASSOCIATE"`},
			{name: "agent refuses the target", cmd: 1, host: "mismatch.corp.invalid", port: 81, want: replyRefused,
				logSubstr: "refused by agent"},
			{name: "resource unreachable", cmd: 1, host: "closed.corp.invalid", port: env.closed, want: replyHostUnreach,
				logSubstr: "resource unreachable"},
			{name: "no agent listening", cmd: 1, host: "noagent.corp.invalid", port: 83, want: replyNetUnreachable,
				logSubstr: "no agent listening"},
			{name: "relay refuses the key", cmd: 1, host: "badkey.corp.invalid", port: 82, want: replyGeneralFailure,
				logSubstr: "unauthorized"},
			{name: "wrong password", cmd: 1, host: "intranet.corp.invalid", port: env.intranet, user: socksUser, pass: "not-the-password", want: authRefused,
				logSubstr: "socks: authentication failed"},
			{name: "no credentials", cmd: 1, host: "intranet.corp.invalid", port: env.intranet, user: "-", want: noAcceptableMethods},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				user, pass := env.user, env.pass
				switch tt.user {
				case "-":
					user, pass = "", ""
				case "":
				default:
					user, pass = tt.user, tt.pass
				}
				mark := env.proxy.Mark()
				code, c := socks5Request(t, env.socks, user, pass, tt.cmd, tt.host, tt.port)
				if code != tt.want {
					t.Fatalf("got %#02x, want %#02x", code, tt.want)
				}
				if code == replyOK {
					fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")
					c.SetReadDeadline(time.Now().Add(10 * time.Second))
					b, _ := io.ReadAll(c)
					if !strings.Contains(string(b), "hello from the intranet") {
						t.Errorf("through the stream: %q", b)
					}
				}
				if tt.logSubstr != "" {
					env.proxy.WaitLogAfter(t, mark, tt.logSubstr, 10*time.Second)
				}
			})
		}
		// The agent saw, audited and refused the mismatched target itself.
		e2eWaitAudit(t, env.tun.Audit, "a deny of mismatch.corp.invalid:81", 10*time.Second, func(l auditLine) bool {
			return l.Event == "deny" && l.HC == "mismatch" && l.Target == "mismatch.corp.invalid:81"
		})
	})

	t.Run("200 garbage and partial handshakes leave it serving", func(t *testing.T) {
		valid := []byte{5, 1, 2, 1, byte(len(env.user))}
		valid = append(valid, env.user...)
		valid = append(append(valid, byte(len(env.pass))), env.pass...)
		valid = append(valid, 5, 1, 0, 3, 21)
		valid = append(valid, "intranet.corp.invalid"...)
		valid = binary.BigEndian.AppendUint16(valid, uint16(env.intranet))
		var open []net.Conn
		defer func() {
			for _, c := range open {
				c.Close()
			}
		}()
		for i := range 200 {
			c, err := net.DialTimeout("tcp", env.socks, 5*time.Second)
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			switch i % 5 {
			case 0: // random bytes
				junk := make([]byte, 1+i%300)
				rand.Read(junk)
				c.Write(junk)
				c.Close()
			case 1: // a valid prefix, then silence (held open)
				c.Write(valid[:1+i%(len(valid)-1)])
				open = append(open, c)
			case 2: // a valid prefix, then hang up
				c.Write(valid[:1+i%(len(valid)-1)])
				c.Close()
			case 3: // SOCKS4, and an HTTP request to the wrong port
				c.Write([]byte{4, 1, 0, 80, 127, 0, 0, 1, 0})
				c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
				c.Close()
			case 4: // absurd lengths
				c.Write([]byte{5, 255, 2, 2, 2})
				c.Write([]byte{1, 255})
				c.Close()
			}
		}
		if env.proxy.Exited() {
			t.Fatalf("proxy died: %s", tailLines(env.proxy.Output(), 30))
		}
		out, code := env.curl(t, "--socks5-hostname", fmt.Sprintf("http://intranet.corp.invalid:%d/", env.intranet))
		if code != 0 || !strings.Contains(out, "hello from the intranet") {
			t.Fatalf("after 200 bad handshakes: exit %d, output %q", code, out)
		}
		if strings.Contains(env.proxy.Output(), "panic") {
			t.Errorf("a panic was logged")
		}
	})

	t.Run("live reload of socks_auth", func(t *testing.T) {
		next := strings.TrimRight(strings.NewReplacer("+", "x", "/", "y").Replace(e2eKey(t)), "=")
		mark := env.proxy.Mark()
		writeFile(t, env.tun.Dir, "proxy.yaml", env.proxyYAML(next))
		env.proxy.Signal(syscall.SIGHUP)
		env.proxy.WaitLogAfter(t, mark, "config reloaded", 20*time.Second)
		if code, _ := socks5Request(t, env.socks, env.user, env.pass, 1, "intranet.corp.invalid", env.intranet); code != authRefused {
			t.Errorf("old password after reload: %#02x, want refused", code)
		}
		if code, _ := socks5Request(t, env.socks, env.user, next, 1, "intranet.corp.invalid", env.intranet); code != replyOK {
			t.Errorf("new password after reload: %#02x", code)
		}
		env.pass = next
	})

	t.Run("clean shutdown", func(t *testing.T) {
		if code := env.proxy.Stop(t); code != 0 {
			t.Errorf("proxy exit %d after SIGTERM", code)
		}
		if c, err := net.DialTimeout("tcp", env.socks, time.Second); err == nil {
			c.Close()
			t.Errorf("socks port still open after exit")
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Logf("dial after exit: %v", err)
		}
	})
}
