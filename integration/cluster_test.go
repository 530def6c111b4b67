package integration

// cluster is a flexible fixture for tests that need several relays,
// agents and proxies, or settings the other fixtures do not write: each
// role's YAML is built from its parts plus free-form extra lines, in a
// directory of its own (so reload tests can save it), and the processes are
// the real binary.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cluster holds the keys of its hybrid connections.
type cluster struct {
	Keys map[string]hcKeys
	// Endpoints, when set for a connection, is written as the proxy
	// mapping's endpoint (what SOCKS clients ask for).
	Endpoints map[string]string
	// Quiet runs every role as a deployment with default settings runs:
	// log level info and agents without an audit log (make bench measures
	// that). Off, the tests get debug lines and the agents' audit logs.
	Quiet bool
}

// logLevel is the log.level every role of the cluster runs at.
func (c *cluster) logLevel() string {
	if c.Quiet {
		return "info"
	}
	return "debug"
}

func newCluster(t testing.TB, hcs ...string) *cluster {
	c := &cluster{Keys: map[string]hcKeys{}}
	for _, h := range hcs {
		c.Keys[h] = hcKeys{Apps: e2eKey(t), Onprem: e2eKey(t)}
	}
	return c
}

// crelay is a running relay of a cluster.
type crelay struct {
	Control, Data, HTTP int
	Dir, Config         string
	Extra               string // lines under relay:, indented two spaces
	// TLS makes agents and proxies speak TLS to it (Extra then holds the
	// relay's tls: mapping, and the clients must trust its certificate).
	TLS bool
	// Admin is the relay's separate status listener (relay.admin, set in
	// Extra), where status is read when the http port speaks TLS.
	Admin string
	Proc  *Proc
}

// relayYAML is a relay serving every connection of the cluster with its apps
// (send) and onprem (listen) keys, plus extra.
func (c *cluster) relayYAML(r *crelay) string {
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: %s}\nrelay:\n  namespace: %s\n  listen:\n", c.logLevel(), e2eNamespace)
	fmt.Fprintf(&b, "    control: 127.0.0.1:%d\n    data: 127.0.0.1:%d\n    http: 127.0.0.1:%d\n", r.Control, r.Data, r.HTTP)
	b.WriteString(r.Extra)
	b.WriteString("  connections:\n")
	names := make([]string, 0, len(c.Keys))
	for n := range c.Keys {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		k := c.Keys[n]
		fmt.Fprintf(&b, "    - name: %s\n      keys:\n", n)
		fmt.Fprintf(&b, "        - {name: apps, rights: [send], primary: %q}\n", k.Apps)
		fmt.Fprintf(&b, "        - {name: onprem, rights: [listen], primary: %q}\n", k.Onprem)
	}
	return b.String()
}

// startRelay starts a relay on fresh ports with extra lines in its section.
func (c *cluster) startRelay(t testing.TB, extra string) *crelay {
	t.Helper()
	r := &crelay{Dir: t.TempDir(), Extra: extra}
	for attempt := 1; ; attempt++ {
		r.Control, r.Data, r.HTTP = freePort(t), freePort(t), freePort(t)
		if err := c.runRelay(t, r); err == nil {
			return r
		} else if attempt >= e2eStartAttempts || !e2eAddrInUse.MatchString(r.Proc.Output()) {
			t.Fatalf("relay did not start: %v\n%s", err, tailLines(r.Proc.Output(), 50))
		}
	}
}

// runRelay (re)starts r's process on its ports and config.
func (c *cluster) runRelay(t testing.TB, r *crelay) error {
	t.Helper()
	r.Config = writeFile(t, r.Dir, "relay.yaml", c.relayYAML(r))
	r.Proc = startProcWith(t, ProcConfig{Label: fmt.Sprintf("relay-%d", r.Control)}, "hybrid", "relay", "--config", r.Config)
	return e2eWaitOutput(r.Proc, "relay listening", e2eStartTimeout)
}

// entry is the relay as agents and proxies name it.
func (r *crelay) entry() string {
	return fmt.Sprintf("{host: 127.0.0.1, control: %d, data: %d, http: %d, tls: %t, namespace: %s}", r.Control, r.Data, r.HTTP, r.TLS, e2eNamespace)
}

// url is the relay's http listener.
func (r *crelay) url() string {
	if r.Admin != "" {
		return "http://" + r.Admin
	}
	return fmt.Sprintf("http://127.0.0.1:%d", r.HTTP)
}

// cagent is a running agent.
type cagent struct {
	Config, Admin string
	Audit         string // the audit log; "" when the cluster is Quiet
	Proc          *Proc
}

// startAgent starts an agent attached to relays, publishing pubs (name →
// endpoint), with extra lines in its section, and waits until it listens
// for every publication on every relay.
func (c *cluster) startAgent(t testing.TB, relays []*crelay, pubs map[string]string, extra string) *cagent {
	t.Helper()
	dir := t.TempDir()
	a := &cagent{Admin: freeAddr(t, "127.0.0.3")}
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: %s}\nagent:\n  admin: %s\n", c.logLevel(), a.Admin)
	if !c.Quiet {
		a.Audit = filepath.Join(dir, "audit.jsonl")
		fmt.Fprintf(&b, "  audit: %s\n", a.Audit)
	}
	b.WriteString("  relays:\n")
	for _, r := range relays {
		fmt.Fprintf(&b, "    - %s\n", r.entry())
	}
	b.WriteString(extra)
	b.WriteString("  connections:\n")
	names := make([]string, 0, len(pubs))
	for n := range pubs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "    - name: %s\n      endpoint: %s\n      key_name: onprem\n      key: %q\n", n, pubs[n], c.Keys[n].Onprem)
	}
	a.Config = writeFile(t, dir, "agent.yaml", b.String())
	a.Proc = startProcWith(t, ProcConfig{Label: fmt.Sprintf("agent-%d", procSeq.Add(1))}, "hybrid", "agent", "--config", a.Config)
	for _, n := range names {
		for range relays {
			a.Proc.WaitLog(t, reAgentListening(n), e2eStartTimeout)
		}
	}
	return a
}

// cproxy is a running proxy.
type cproxy struct {
	Config, Admin string
	Listen        map[string]string // hc → listen address
	Proc          *Proc
}

// proxyYAML is a proxy to relays forwarding each of hcs (apps key), with
// extra lines in its section.
func (c *cluster) proxyYAML(relays []*crelay, listen map[string]string, keys map[string]string, extra, admin string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: %s}\nproxy:\n  admin: %s\n  relay:\n", c.logLevel(), admin)
	for _, r := range relays {
		fmt.Fprintf(&b, "    - %s\n", r.entry())
	}
	b.WriteString(extra)
	b.WriteString("  connections:\n")
	names := make([]string, 0, len(listen))
	for n := range listen {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		key := keys[n]
		if key == "" {
			key = c.Keys[n].Apps
		}
		fmt.Fprintf(&b, "    - name: %s\n      listen: %s\n      key_name: apps\n      key: %q\n", n, listen[n], key)
		if ep := c.Endpoints[n]; ep != "" {
			fmt.Fprintf(&b, "      endpoint: %q\n", ep)
		}
	}
	return b.String()
}

// startProxy starts a proxy forwarding each of hcs on a fresh 127.0.0.2
// port, with extra lines in its section.
func (c *cluster) startProxy(t testing.TB, relays []*crelay, hcs []string, extra string) *cproxy {
	t.Helper()
	p := &cproxy{Listen: map[string]string{}, Admin: freeAddr(t, "127.0.0.3")}
	for _, h := range hcs {
		p.Listen[h] = freeAddr(t, "127.0.0.2")
	}
	p.Config = writeFile(t, t.TempDir(), "proxy.yaml", c.proxyYAML(relays, p.Listen, nil, extra, p.Admin))
	p.Proc = startProcWith(t, ProcConfig{Label: fmt.Sprintf("proxy-%d", procSeq.Add(1))}, "hybrid", "proxy", "--config", p.Config)
	for _, l := range p.Listen {
		p.Proc.WaitLog(t, "forwarding: listen="+l+" ", e2eStartTimeout)
	}
	return p
}

// getJSON fetches url and decodes its JSON into v.
func getJSON(t testing.TB, url string, v any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// relayStatus is the part of a relay's /status the tests read.
type relayStatus struct {
	Relay struct {
		Agents []struct {
			Agent      string            `json:"agent"`
			Role       string            `json:"role"`
			Remote     string            `json:"remote"`
			Listening  []string          `json:"listening"`
			Unhealthy  map[string]string `json:"unhealthy"`
			InRotation bool              `json:"in_rotation"`
			Streams    int               `json:"streams"`
			Parked     int               `json:"parked"`
		} `json:"agents"`
		Listening map[string]int   `json:"listening"`
		Counters  map[string]int64 `json:"counters"`
	} `json:"relay"`
}

func (r *crelay) status(t testing.TB) relayStatus {
	var st relayStatus
	getJSON(t, r.url()+"/status", &st)
	return st
}

// dialEcho opens a connection through addr to an echo resource and checks
// one round trip; it returns the connection, still open.
func dialEcho(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	if err := echoOnce(c); err != nil {
		c.Close()
		t.Fatalf("echo through %s: %v", addr, err)
	}
	return c
}

// echoOnce writes a line and reads it back.
func echoOnce(c net.Conn) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	msg := []byte("ping " + strconv.FormatInt(time.Now().UnixNano(), 10) + "\n")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	back := make([]byte, len(msg))
	if _, err := io.ReadFull(c, back); err != nil {
		return err
	}
	if string(back) != string(msg) {
		return fmt.Errorf("echo differs: %q", back)
	}
	return nil
}

// probe opens a stream through addr, does one echo and closes it.
func probe(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	return echoOnce(c)
}

// probeMany runs n probes through addr, 10 at a time, and returns how many
// failed and the first failure.
func probeMany(addr string, n int) (fails int64, first string) {
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, 10)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := probe(addr); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
		}()
	}
	wg.Wait()
	first, _ = firstErr.Load().(string)
	return failed.Load(), first
}

// rssKiB returns a process's resident set size.
func rssKiB(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// durPercentile returns the p-th percentile (0..100) of ds.
func durPercentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// plainEcho is an echo resource that counts its connections.
type plainEcho struct {
	Addr     string
	ln       net.Listener
	accepted atomic.Int64
}

// startPlainEcho starts an echo resource on 127.0.0.1 (everything sent
// comes back; a half-close is echoed as one).
func startPlainEcho(t testing.TB) *plainEcho {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &plainEcho{Addr: ln.Addr().String(), ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			go func() {
				defer c.Close()
				if _, err := io.Copy(c, c); err == nil {
					closeWrite(c)
				}
			}()
		}
	}()
	return e
}
