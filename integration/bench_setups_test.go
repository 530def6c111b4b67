//go:build bench

package integration

// The setups make bench compares: one resource (an echo and a blast, in
// this process) reached directly and through each way of carrying a
// stream, every role a separate process of the built binary on loopback.

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/testenv"
)

// Limits every relay and agent of the bench runs with, so that the 10,000
// idle streams (and the pools and workers around them) meet no cap: the
// bench measures the data path, not the defaults that guard a relay from
// one busy source.
const (
	benchRelayLimits = "  limits: {per_source: 50000, connections: 100000}\n"
	benchMaxStreams  = 30000
)

// benchSetup is one way from the bench's client to the resource.
type benchSetup struct {
	// Key names the setup in bench.json; Name heads its column.
	Key, Name string
	// Echo and Blast are where the client connects for the echo and the
	// blast resource: the proxy's listeners, or the resource itself.
	Echo, Blast string
	// Skipped, when set, says why the setup did not run (a program that
	// is not installed); the other fields are then empty.
	Skipped string
	// procs are the processes between client and resource, whose memory
	// the idle-stream figures sum; none for direct.
	procs []*Proc
	// tree, when set, is a process whose descendants count too (sshd
	// forks one per connection).
	tree *Proc
}

// pids are the processes the memory figures sum, read now (a tree's
// descendants come and go).
func (s *benchSetup) pids() []int {
	var pids []int
	for _, p := range s.procs {
		pids = append(pids, p.Pid())
	}
	if s.tree != nil {
		pids = append(pids, s.tree.Pid())
		pids = append(pids, descendants(s.tree.Pid())...)
	}
	return pids
}

// startBenchSetups starts every setup against res: direct; native,
// native with TLS on both links, WebSocket, WebSocket with TLS (one relay,
// one agent, one proxy each); forwarded (a fleet of two relays on a real
// redis-server, the agent on the first only, the proxy on the second only,
// so every stream crosses from one relay to the other); and ssh -L
// (aes128-gcm, two hops: ssh client, sshd) when OpenSSH is installed; and
// the floor, three plain forwarders (bench_floor_test.go). only, when not
// empty, names the setups to run (direct always runs).
func startBenchSetups(t *testing.T, res *benchResource, only []string) []*benchSetup {
	t.Helper()
	c := newCluster(t, "echo", "blast")
	c.Quiet = true
	pubs := map[string]string{"echo": res.Echo, "blast": res.Blast}
	hcs := []string{"echo", "blast"}
	tlsExtra := ""

	// tunnel starts a relay (with relayExtra in its section), an agent
	// and a proxy speaking transport to it.
	tunnel := func(key, name, transport, relayExtra string, tls bool) *benchSetup {
		if tls && tlsExtra == "" {
			tlsExtra = relayTLSLine(t)
		}
		if tls {
			relayExtra += tlsExtra
		}
		r := c.startRelay(t, benchRelayLimits+relayExtra)
		r.TLS = tls
		a := c.startAgent(t, []*crelay{r}, pubs, benchAgentExtra(transport))
		p := c.startProxy(t, []*crelay{r}, hcs, "  transport: "+transport+"\n")
		return &benchSetup{Key: key, Name: name, Echo: p.Listen["echo"], Blast: p.Listen["blast"],
			procs: []*Proc{r.Proc, a.Proc, p.Proc}}
	}
	all := []struct {
		key   string
		start func() *benchSetup
	}{
		{"direct", func() *benchSetup {
			return &benchSetup{Key: "direct", Name: "direct", Echo: res.Echo, Blast: res.Blast}
		}},
		{"native", func() *benchSetup { return tunnel("native", "native", "tcp", "", false) }},
		{"native_tls", func() *benchSetup { return tunnel("native_tls", "native+TLS", "tcp", "", true) }},
		{"ws", func() *benchSetup { return tunnel("ws", "WebSocket", "websocket", "", false) }},
		{"ws_tls", func() *benchSetup { return tunnel("ws_tls", "WS+TLS", "websocket", "", true) }},
		{"forwarded", func() *benchSetup { return startBenchForwarded(t, c, pubs, hcs) }},
		{"ssh", func() *benchSetup { return startBenchSSH(t, res) }},
		{"floor", func() *benchSetup { return startBenchFloor(t, res) }},
	}
	var setups []*benchSetup
	for _, s := range all {
		if len(only) > 0 && s.key != "direct" && !slices.Contains(only, s.key) {
			continue
		}
		setups = append(setups, s.start())
	}
	for _, s := range setups {
		if s.Skipped != "" {
			continue
		}
		// The roles said they listen; a stream end to end says they
		// carry (the fleet's directory, ssh's forwards).
		waitFor(t, s.Name+" to carry a stream", 30*time.Second, func() bool { return probe(s.Echo) == nil })
	}
	return setups
}

// benchAgentExtra is an agent's section lines for transport.
func benchAgentExtra(transport string) string {
	return fmt.Sprintf("  transport: %s\n  max_streams: %d\n", transport, benchMaxStreams)
}

// benchNotRun is a setup that cannot run here because a program is
// missing: a note on a developer's machine, an error under CI (which
// installs everything).
func benchNotRun(t *testing.T, key, name, why string) *benchSetup {
	t.Helper()
	if testenv.CI() {
		t.Errorf("bench setup %s: %s (CI is set: .ci/run installs it)", name, why)
	}
	return &benchSetup{Key: key, Name: name, Skipped: why}
}

// startBenchForwarded is the forwarded setup (issue 10): relays a and b of
// a fleet on a real redis-server, the agent attached to a only and the
// proxy to b only.
func startBenchForwarded(t *testing.T, c *cluster, pubs map[string]string, hcs []string) *benchSetup {
	t.Helper()
	const key, name = "forwarded", "forwarded"
	if findProgram("redis-server") == "" {
		return benchNotRun(t, key, name, "redis-server not found (Debian package redis-server)")
	}
	f := startFleetRelays(t, c, 2, benchRelayLimits)
	a := c.startAgent(t, f.relays[:1], pubs, benchAgentExtra("tcp"))
	p := c.startProxy(t, f.relays[1:], hcs, "  transport: tcp\n")
	return &benchSetup{Key: key, Name: name, Echo: p.Listen["echo"], Blast: p.Listen["blast"],
		procs: []*Proc{f.relays[0].Proc, f.relays[1].Proc, a.Proc, p.Proc}}
}

// startBenchSSH is ssh -L with aes128-gcm to a throwaway sshd, both on
// loopback: the app connects to the ssh client's forward, which opens a
// channel to sshd, which dials the resource.
func startBenchSSH(t *testing.T, res *benchResource) *benchSetup {
	t.Helper()
	const key, name = "ssh", "ssh -L"
	sshBin := findProgram("ssh")
	if sshBin == "" || findProgram("sshd") == "" || findProgram("ssh-keygen") == "" {
		return benchNotRun(t, key, name, "ssh, sshd or ssh-keygen not found (Debian packages openssh-client, openssh-server)")
	}
	sshd := startSSHD(t)
	cl := &sshClient{ssh: sshBin, host: "127.0.0.1", port: sshd.Port, user: sshd.User, key: sshd.UserKey,
		knownHosts: writeFile(t, t.TempDir(), "known_hosts", fmt.Sprintf("[127.0.0.1]:%d %s\n", sshd.Port, sshd.HostPub))}
	echo, blast := freeAddr(t, "127.0.0.2"), freeAddr(t, "127.0.0.2")
	args := append(cl.opts(), "-N", "-p", strconv.Itoa(cl.port),
		"-o", "Ciphers=aes128-gcm@openssh.com", "-o", "Compression=no", "-o", "ExitOnForwardFailure=yes",
		"-L", echo+":"+res.Echo, "-L", blast+":"+res.Blast, cl.user+"@"+cl.host)
	client := startProcWith(t, ProcConfig{Label: "ssh-L"}, sshBin, args...)
	waitFor(t, "ssh -L to listen", 30*time.Second, func() bool { return client.Exited() || waitTCPErr(echo, time.Second) == nil })
	if client.Exited() {
		t.Fatalf("ssh -L exited: %s", tailLines(client.Output(), 20))
	}
	return &benchSetup{Key: key, Name: name, Echo: echo, Blast: blast, procs: []*Proc{client}, tree: sshd.proc}
}

// descendants returns the pids of pid's children, their children, and so
// on, read from /proc.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		if f := strings.Fields(rest); len(f) >= 2 {
			if ppid, err := strconv.Atoi(f[1]); err == nil {
				children[ppid] = append(children[ppid], p)
			}
		}
	}
	var out []int
	for todo := children[pid]; len(todo) > 0; todo = todo[1:] {
		out = append(out, todo[0])
		todo = append(todo, children[todo[0]]...)
	}
	return out
}

// benchResource is what every stream of the bench reaches, in this
// process: an echo (each byte back at once, no framing, so a 1-byte write
// is a 1-byte round trip) and a blast (bulk bytes either way with as
// little work per byte as possible, so the figures measure the path and
// not the resource). It counts its open connections, so a phase can wait
// until the streams it closed are gone end to end.
//
// The blast reads one command byte:
//
//	'Z'  it writes zeros, 256 KiB per write, until a write fails (the
//	     client reads what it wants and closes)
//	'U'  it reads frames, a uint32 length (big endian) and that many
//	     bytes, until a frame of length 0, then answers one byte: all
//	     was received. Framed rather than ended by a half-close, so an
//	     upload can stop at a time limit on any transport.
type benchResource struct {
	Echo, Blast string

	lns  []net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]struct{}
	done bool
}

// benchChunk is the size of the blast's and the client's writes and reads.
const benchChunk = 256 << 10

// startBenchResource starts the echo and the blast on 127.0.0.1; they stop,
// closing every connection, when the test ends.
func startBenchResource(t testing.TB) *benchResource {
	t.Helper()
	r := &benchResource{open: map[net.Conn]struct{}{}}
	for _, serve := range []func(net.Conn){benchEcho, benchBlast} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		r.lns = append(r.lns, ln)
		r.wg.Add(1)
		go r.accept(ln, serve)
	}
	r.Echo, r.Blast = r.lns[0].Addr().String(), r.lns[1].Addr().String()
	t.Cleanup(r.close)
	return r
}

func (r *benchResource) accept(ln net.Listener, serve func(net.Conn)) {
	defer r.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.done {
			r.mu.Unlock()
			c.Close()
			return
		}
		r.open[c] = struct{}{}
		r.wg.Add(1)
		r.mu.Unlock()
		go func() {
			defer r.wg.Done()
			serve(c)
			c.Close()
			r.mu.Lock()
			delete(r.open, c)
			r.mu.Unlock()
		}()
	}
}

// active is the number of connections open at the resource.
func (r *benchResource) active() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.open)
}

func (r *benchResource) close() {
	r.mu.Lock()
	r.done = true
	for _, ln := range r.lns {
		ln.Close()
	}
	for c := range r.open {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// benchEcho writes back what it reads until EOF or an error.
func benchEcho(c net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// benchBlast serves one blast command (see benchResource).
func benchBlast(c net.Conn) {
	var cmd [1]byte
	if _, err := io.ReadFull(c, cmd[:]); err != nil {
		return
	}
	buf := make([]byte, benchChunk)
	switch cmd[0] {
	case 'Z':
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	case 'U':
		for {
			var h [4]byte
			if _, err := io.ReadFull(c, h[:]); err != nil {
				return
			}
			n := int(binary.BigEndian.Uint32(h[:]))
			if n == 0 {
				c.Write(cmd[:])
				return
			}
			if n > len(buf) {
				return
			}
			if _, err := io.ReadFull(c, buf[:n]); err != nil {
				return
			}
		}
	}
}
