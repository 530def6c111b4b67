package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestE2ECleanShutdown(t *testing.T) {
	resource := startSinkSource(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "echo", Endpoint: resource}}})
	e2eEcho(t, tun.Listen["echo"], 64<<10)

	// The relay first, while the agent's control channel and the proxy are
	// connected; then the agent (now trying to reconnect); then the proxy.
	for _, p := range []struct {
		proc *Proc
		name string
	}{{tun.Relay, "relay"}, {tun.Agent, "agent"}, {tun.Proxy, "proxy"}} {
		start := time.Now()
		if code := p.proc.Stop(t); code != 0 {
			t.Errorf("%s: exit code %d after SIGTERM, want 0; output tail:\n%s", p.name, code, tailLines(p.proc.Output(), 20))
		}
		t.Logf("%s exited after SIGTERM in %v", p.name, time.Since(start).Round(time.Millisecond))
	}
}

// TestE2EShutdownLiveStream: a role told to stop while a stream is live
// stops accepting, lets the stream go on, and exits 0 as soon as it ends —
// long before its grace period (10 s) is over.
func TestE2EShutdownLiveStream(t *testing.T) {
	resource := startSinkSource(t)
	for _, role := range []string{"relay", "agent", "proxy"} {
		t.Run(role, func(t *testing.T) {
			tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "echo", Endpoint: resource}}})
			addr := tun.Listen["echo"]
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			roundTrip := func(what string) {
				t.Helper()
				msg := []byte(what + strings.Repeat(".", 4096))
				if _, err := c.Write(msg); err != nil {
					t.Fatalf("%s: write: %v", what, err)
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
					t.Fatalf("%s: echo: %v", what, err)
				}
			}
			if _, err := c.Write([]byte{'E'}); err != nil {
				t.Fatal(err)
			}
			roundTrip("before SIGTERM")

			proc := map[string]*Proc{"relay": tun.Relay, "agent": tun.Agent, "proxy": tun.Proxy}[role]
			relayMark := tun.Relay.Mark()
			if err := proc.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			// Wait until the role has visibly begun to stop: it no longer
			// accepts (relay, proxy), or the relay saw it go (agent).
			refusing := func(what, addr string) {
				waitFor(t, what+" to stop accepting", 10*time.Second, func() bool {
					n, err := net.DialTimeout("tcp", addr, time.Second)
					if err == nil {
						n.Close()
					}
					return err != nil
				})
			}
			switch role {
			case "relay":
				refusing("the relay's control port", "127.0.0.1:"+strconv.Itoa(tun.Control))
			case "agent":
				tun.Relay.WaitLogAfter(t, relayMark, reStoppedListening, 10*time.Second)
			case "proxy":
				refusing("the proxy", addr)
			}
			if proc.Exited() {
				t.Fatalf("%s exited (%s) with a stream still live", role, proc.exitDesc())
			}
			roundTrip("after SIGTERM")

			// The app ends its stream; the role is then free to go at once.
			closeWrite(c)
			if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
				t.Fatalf("end of the echo: %d more bytes, %v", len(rest), err)
			}
			c.Close()
			if code := proc.Wait(t, 8*time.Second); code != 0 {
				t.Errorf("%s exit code %d, want 0", role, code)
			}
			t.Logf("%s exited %v after SIGTERM (the stream ended in between)", role, time.Since(start).Round(time.Millisecond))
		})
	}
}

// startGreeter starts a server-speaks-first resource: on accept it writes
// "220 hello\r\n" before reading anything, then answers one line with
// "221 bye <line>" and closes.
func startGreeter(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err := io.WriteString(c, "220 hello\r\n"); err != nil {
					return
				}
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				io.WriteString(c, "221 bye "+line)
			}()
		}
	}()
	return l.Addr().String()
}

func TestE2EServerFirstGreeting(t *testing.T) {
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "smtp", Endpoint: startGreeter(t)}}})
	for i := range 3 { // the first stream and later ones alike
		c, err := net.DialTimeout("tcp", tun.Listen["smtp"], 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		greeting := make([]byte, len("220 hello\r\n"))
		if _, err := io.ReadFull(c, greeting); err != nil || string(greeting) != "220 hello\r\n" {
			c.Close()
			t.Fatalf("stream %d: a client that only reads got %q, %v; want the server's greeting", i, greeting, err)
		}
		t.Logf("stream %d: greeting after %v", i, time.Since(start).Round(time.Millisecond))
		io.WriteString(c, "QUIT\r\n")
		rest, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(rest) != "221 bye QUIT\r\n" {
			t.Fatalf("stream %d: after QUIT got %q, %v", i, rest, err)
		}
	}
}

// lineOf returns the 1-based number of the first line of s containing sub.
func lineOf(t *testing.T, s, sub string) int {
	t.Helper()
	for i, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return i + 1
		}
	}
	t.Fatalf("no %q in:\n%s", sub, s)
	return 0
}

func TestE2EConfigCheck(t *testing.T) {
	// The fixture's three files, rendered without running them.
	tun := &tunnel{Dir: t.TempDir(), Control: 5671, Data: 9352, HTTP: 8080,
		HCs:  []hcDef{{Name: "postgres", Endpoint: "127.0.0.1:5432"}, {Name: "relayonly"}},
		Keys: map[string]hcKeys{}}
	for _, hc := range tun.HCs {
		tun.Keys[hc.Name] = hcKeys{Apps: e2eKey(t), Onprem: e2eKey(t)}
	}
	tun.Audit = filepath.Join(tun.Dir, "audit.jsonl")
	files := map[string]string{
		"relay.yaml": tun.relayYAML(),
		"agent.yaml": tun.agentYAML(),
		"proxy.yaml": tun.proxyYAML([]proxyMap{{Name: "postgres", Endpoint: "127.0.0.1:5432"}}, []string{"127.0.0.2:5432"}),
	}
	for name, content := range files {
		f := writeFile(t, tun.Dir, name, content)
		out, code := runCmd(t, 30*time.Second, "hybrid", "check", "--config", f)
		if code != 0 || !strings.Contains(out, f+": ok") {
			t.Errorf("hybrid check %s: exit %d, want 0; output:\n%s\nfile:\n%s", name, code, out, content)
		}
	}

	// A typo is an error with the file, line and field, and exit code 1.
	broken := []struct{ name, content, typo, field string }{
		{"agent-typo.yaml", files["agent.yaml"], "endpoint:", "agent.connections[0].endpiont"},
		{"proxy-typo.yaml", files["proxy.yaml"], "endpoint:", "proxy.connections[0].endpiont"},
		{"relay-typo.yaml", files["relay.yaml"], "namespace:", "relay.namspace"},
	}
	for _, b := range broken {
		typo := strings.Replace(b.typo, "endpoint", "endpiont", 1)
		typo = strings.Replace(typo, "namespace", "namspace", 1)
		content := strings.Replace(b.content, b.typo, typo, 1)
		f := writeFile(t, tun.Dir, b.name, content)
		out, code := runCmd(t, 30*time.Second, "hybrid", "check", "--config", f)
		if code != 1 {
			t.Errorf("hybrid check %s: exit %d, want 1; output:\n%s", b.name, code, out)
		}
		want := fmt.Sprintf("%s:%d: %s: ", f, lineOf(t, content, typo), b.field)
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want) + `\S.*$`)
		if !re.MatchString(out) {
			t.Errorf("hybrid check %s: want a line %q<message>; output:\n%s\nfile:\n%s", b.name, want, out, content)
		}
	}
}
