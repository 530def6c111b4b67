package integration

// Live reload, end to end: the real binary as separate relay, agent and proxy
// processes, each with its config file in a directory of its own (the
// watcher watches the file's directory), edited the way real editors and
// Kubernetes save files. This file holds the reload fixture and the proxy's
// tests; e2e_reload_*_test.go hold the rest.
//
// "Within a second" is measured from the start of a save to the observed
// effect (a connection through a new listener works, a removed listener
// refuses, a live stream ends), polling every 10 ms. Every measured figure
// is logged with t.Logf ("reload latency ...") for docs/configuration.md.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// reloadDeadline is the longest a save may take to show its effect.
	reloadDeadline = time.Second
	// reloadPoll is how often an effect is checked for while measuring.
	reloadPoll = 10 * time.Millisecond
	// reloadTimeout bounds every other wait of these tests (generous).
	reloadTimeout = 30 * time.Second
	// measureTimeout is how long measure waits before giving up.
	measureTimeout = 10 * time.Second
)

// ---- relay ----

// rlRule is one relay rule (key).
type rlRule struct {
	Name, Rights       string // Rights: listen, send or manage
	Primary, Secondary string
	Revoke             bool // values removed from the rule are revoked, not rotated
}

// rlHC is one relay connection with its rules.
type rlHC struct {
	Name  string
	Rules []rlRule
}

// stdHC is an HC with the fixture's usual two rules: apps (send) and onprem
// (listen).
func stdHC(name string, k hcKeys) rlHC {
	return rlHC{Name: name, Rules: []rlRule{
		{Name: "apps", Rights: "send", Primary: k.Apps},
		{Name: "onprem", Rights: "listen", Primary: k.Onprem},
	}}
}

// rlEnv is a running relay, and the keys and files of the roles around it.
// Each role's file lives in a directory of its own.
type rlEnv struct {
	Keys map[string]hcKeys

	RelayDir, RelayConfig string
	Control, Data, HTTP   int
	Relay                 *Proc

	AgentConfig, Audit string
	AgentAdmin         string // base URL of the agent's admin endpoint
	Agent              *Proc
}

// newRLEnv makes keys for the named HCs and starts a relay serving them
// (stdHC each).
func newRLEnv(t *testing.T, names ...string) *rlEnv {
	t.Helper()
	e := &rlEnv{Keys: map[string]hcKeys{}}
	var hcs []rlHC
	for _, n := range names {
		e.Keys[n] = hcKeys{Apps: e2eKey(t), Onprem: e2eKey(t)}
		hcs = append(hcs, stdHC(n, e.Keys[n]))
	}
	e.startRelay(t, hcs)
	return e
}

func (e *rlEnv) startRelay(t *testing.T, hcs []rlHC) {
	t.Helper()
	e.RelayDir = t.TempDir()
	for attempt := 1; ; attempt++ {
		e.Control, e.Data, e.HTTP = freePort(t), freePort(t), freePort(t)
		e.RelayConfig = writeFile(t, e.RelayDir, "relay.yaml", e.relayYAML(hcs))
		e.Relay = startProcWith(t, ProcConfig{Label: fmt.Sprintf("relay-%d", e.Control)}, "hybrid", "relay", "--config", e.RelayConfig)
		err := e2eWaitOutput(e.Relay, "relay listening", e2eStartTimeout)
		if err == nil {
			return
		}
		if e.Relay.Exited() && attempt < e2eStartAttempts && e2eAddrInUse.MatchString(e.Relay.Output()) {
			t.Logf("relay could not bind its ports (taken meanwhile?), retrying")
			continue
		}
		t.Fatalf("relay did not start: %v\n%s", err, tailLines(e.Relay.Output(), 50))
	}
}

// RelayURL is the relay's http listener, which serves /metrics and /status.
func (e *rlEnv) RelayURL() string { return fmt.Sprintf("http://127.0.0.1:%d", e.HTTP) }

func (e *rlEnv) relayYAML(hcs []rlHC) string {
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: debug}\nrelay:\n  namespace: %s\n  listen:\n", e2eNamespace)
	fmt.Fprintf(&b, "    control: 127.0.0.1:%d\n    data: 127.0.0.1:%d\n    http: 127.0.0.1:%d\n", e.Control, e.Data, e.HTTP)
	b.WriteString("  connections:\n")
	for _, hc := range hcs {
		fmt.Fprintf(&b, "    - name: %s\n      keys:\n", hc.Name)
		for _, r := range hc.Rules {
			fmt.Fprintf(&b, "        - {name: %s, rights: [%s], primary: %q", r.Name, r.Rights, r.Primary)
			if r.Secondary != "" {
				fmt.Fprintf(&b, ", secondary: %q", r.Secondary)
			}
			if r.Revoke {
				b.WriteString(", revoke: true")
			}
			b.WriteString("}\n")
		}
	}
	return b.String()
}

// relayEntry is the relay as agents and proxies name it.
func (e *rlEnv) relayEntry() string {
	return fmt.Sprintf("{host: 127.0.0.1, control: %d, data: %d, http: %d, namespace: %s}", e.Control, e.Data, e.HTTP, e2eNamespace)
}

// ---- agent ----

// rlPub is one connection the agent publishes; an empty Key means the HC's
// onprem key.
type rlPub struct {
	Name, Endpoint, Key string
}

// pubs publishes every named HC at endpoint.
func pubs(endpoint string, names ...string) []rlPub {
	var out []rlPub
	for _, n := range names {
		out = append(out, rlPub{Name: n, Endpoint: endpoint})
	}
	return out
}

// rlAgentCfg is the agent section; a nil Allow writes no allow list.
type rlAgentCfg struct {
	Allow []string
	Pubs  []rlPub
}

func (e *rlEnv) agentYAML(c rlAgentCfg) string {
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: debug}\nagent:\n  relays:\n    - %s\n  audit: %s\n  admin: %s\n",
		e.relayEntry(), e.Audit, strings.TrimPrefix(e.AgentAdmin, "http://"))
	if c.Allow != nil {
		fmt.Fprintf(&b, "  allow: [%s]\n", strings.Join(c.Allow, ", "))
	}
	b.WriteString("  connections:\n")
	for _, p := range c.Pubs {
		key := p.Key
		if key == "" {
			key = e.Keys[p.Name].Onprem
		}
		fmt.Fprintf(&b, "    - name: %s\n      endpoint: %s\n      key_name: onprem\n      key: %q\n", p.Name, p.Endpoint, key)
	}
	return b.String()
}

// startAgent writes agent.yaml (with an audit log and an admin endpoint) in
// a directory of its own, starts the agent and waits until it listens for
// every published connection.
func (e *rlEnv) startAgent(t *testing.T, c rlAgentCfg) {
	t.Helper()
	dir := t.TempDir()
	e.Audit = filepath.Join(dir, "audit.jsonl")
	e.AgentAdmin = "http://" + freeAddr(t, "127.0.0.3")
	e.AgentConfig = writeFile(t, dir, "agent.yaml", e.agentYAML(c))
	e.Agent = startProcWith(t, ProcConfig{Label: fmt.Sprintf("agent-%d", procSeq.Add(1))}, "hybrid", "agent", "--config", e.AgentConfig)
	e.Agent.WaitLog(t, "admin endpoint listening", e2eStartTimeout)
	for _, p := range c.Pubs {
		e.Agent.WaitLog(t, reAgentListening(p.Name), e2eStartTimeout)
	}
}

// reAgentListening matches the agent's line saying it listens for hc.
func reAgentListening(hc string) *regexp.Regexp {
	return regexp.MustCompile(`agent: listening: relay=\S+ hc=` + regexp.QuoteMeta(hc) + ` endpoint=`)
}

// ---- proxy ----

// rlMap is one proxy mapping. Empty KeyName/Key mean the HC's apps key;
// KeyFile replaces Key. With Tag set every line of the mapping ends in
// " # <Tag>", and Off writes those lines commented out: the mapping is there
// for `sed` to switch on and off, but absent for the parser.
type rlMap struct {
	Name, Listen      string
	KeyName, Key      string
	KeyFile, Endpoint string
	Tag               string
	Off               bool
}

// rlProxyCfg is a whole proxy file. Level defaults to debug, Format to text.
type rlProxyCfg struct {
	Level, Format string
	Admin         string // listen address; "" for none
	Maps          []rlMap
}

func (e *rlEnv) proxyYAML(c rlProxyCfg) string {
	var b strings.Builder
	level, format := c.Level, c.Format
	if level == "" {
		level = "debug"
	}
	if format == "" {
		format = "text"
	}
	fmt.Fprintf(&b, "log: {level: %s, format: %s}\nproxy:\n  relay: %s\n", level, format, e.relayEntry())
	if c.Admin != "" {
		fmt.Fprintf(&b, "  admin: %s\n", c.Admin)
	}
	b.WriteString("  connections:\n")
	for _, m := range c.Maps {
		keyName, key := m.KeyName, m.Key
		if keyName == "" {
			keyName = "apps"
		}
		if key == "" {
			key = e.Keys[m.Name].Apps
		}
		lines := []string{"    - name: " + m.Name, "      listen: " + m.Listen, "      key_name: " + keyName}
		if m.KeyFile != "" {
			lines = append(lines, "      key_file: "+m.KeyFile)
		} else {
			lines = append(lines, fmt.Sprintf("      key: %q", key))
		}
		if m.Endpoint != "" {
			lines = append(lines, "      endpoint: "+m.Endpoint)
		}
		for _, l := range lines {
			if m.Off {
				b.WriteString("#")
			}
			b.WriteString(l)
			if m.Tag != "" {
				b.WriteString(" # " + m.Tag)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// rlProxy is a running proxy.
type rlProxy struct {
	*Proc
	Config string
	Admin  string // base URL of the admin endpoint, "" without one
}

// startProxy starts `hybrid proxy --config path` (path already written, in
// any layout) and waits until each mapping of c that is on forwards, and the
// admin endpoint listens. env is added to the environment.
func (e *rlEnv) startProxy(t *testing.T, path string, c rlProxyCfg, env ...string) *rlProxy {
	t.Helper()
	cfg := ProcConfig{Label: fmt.Sprintf("proxy-%d", procSeq.Add(1))}
	if len(env) > 0 {
		cfg.Env = env
	}
	p := &rlProxy{Proc: startProcWith(t, cfg, "hybrid", "proxy", "--config", path), Config: path}
	if c.Admin != "" {
		p.Admin = "http://" + c.Admin
		p.WaitLog(t, "admin endpoint listening", e2eStartTimeout)
	}
	for _, m := range c.Maps {
		if !m.Off {
			p.WaitLog(t, "forwarding: listen="+m.Listen+" ", e2eStartTimeout)
		}
	}
	return p
}

// writeProxy writes c as dir/proxy.yaml in a fresh directory and starts it.
func (e *rlEnv) writeProxy(t *testing.T, c rlProxyCfg, env ...string) *rlProxy {
	t.Helper()
	path := writeFile(t, t.TempDir(), "proxy.yaml", e.proxyYAML(c))
	return e.startProxy(t, path, c, env...)
}

// ---- saving ----

// saveRename saves content the way most editors and `sed -i` do: write a
// temporary file next to path, then rename it over path.
func saveRename(t testing.TB, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".swp")
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// savePattern is one way of saving a file. setup lays out dir and returns
// the path to give --config; save replaces the content at that path.
type savePattern struct {
	name  string
	setup func(t *testing.T, dir, content string) string
	save  func(t *testing.T, path, content string)
}

func plainSetup(t *testing.T, dir, content string) string {
	return writeFile(t, dir, "proxy.yaml", content)
}

// reTagOn matches a line tagged " # B" that is not commented out.
var reTagOn = regexp.MustCompile(`(?m)^[^#\n].* # B$`)

// savePatterns are the save patterns of the issue: rename, truncate-and-
// write (all at once, and slowly in pieces), delete-then-create, a
// Kubernetes ConfigMap's ..data symlink swap, and a real `sed -i`.
func savePatterns() []savePattern {
	k8sGen := 0
	return []savePattern{
		{name: "rename", setup: plainSetup, save: func(t *testing.T, path, content string) { saveRename(t, path, content) }},
		{name: "truncate-write", setup: plainSetup, save: func(t *testing.T, path, content string) {
			// echo > f: open(O_TRUNC), write.
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "truncate-slow-write", setup: plainSetup, save: func(t *testing.T, path, content string) {
			// cat > f from a slow producer: an empty file, then the content
			// in two pieces 20 ms apart (the debounce is 100 ms).
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			time.Sleep(20 * time.Millisecond)
			half := len(content) / 2
			if _, err := f.WriteString(content[:half]); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			if _, err := f.WriteString(content[half:]); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "delete-create", setup: plainSetup, save: func(t *testing.T, path, content string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "k8s-symlink-swap", setup: func(t *testing.T, dir, content string) string {
			// What the kubelet lays out for a ConfigMap volume.
			k8sGen++
			gen := fmt.Sprintf("..2026_%02d", k8sGen)
			if err := os.Mkdir(filepath.Join(dir, gen), 0o755); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(dir, gen), "proxy.yaml", content)
			must(t, os.Symlink(gen, filepath.Join(dir, "..data")))
			must(t, os.Symlink("..data/proxy.yaml", filepath.Join(dir, "proxy.yaml")))
			return filepath.Join(dir, "proxy.yaml")
		}, save: func(t *testing.T, path, content string) {
			// A new timestamped directory, a ..data_tmp symlink to it,
			// renamed over ..data; then the old directory goes.
			dir := filepath.Dir(path)
			old, err := os.Readlink(filepath.Join(dir, "..data"))
			must(t, err)
			k8sGen++
			gen := fmt.Sprintf("..2026_%02d", k8sGen)
			must(t, os.Mkdir(filepath.Join(dir, gen), 0o755))
			writeFile(t, filepath.Join(dir, gen), "proxy.yaml", content)
			must(t, os.Symlink(gen, filepath.Join(dir, "..data_tmp")))
			must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
			must(t, os.RemoveAll(filepath.Join(dir, old)))
		}},
		{name: "sed-i", setup: plainSetup, save: func(t *testing.T, path, content string) {
			// The real thing: sed -i writes a temporary file and renames it.
			// It switches the lines tagged " # B" on or off, whichever
			// content asks for, and must then have written exactly content.
			script := `s/^\([^#].* # B\)$/#\1/`
			if reTagOn.MatchString(content) {
				script = `s/^#\(.* # B\)$/\1/`
			}
			if out, err := exec.Command("sed", "-i", "-e", script, path).CombinedOutput(); err != nil {
				t.Fatalf("sed -i: %v\n%s", err, out)
			}
			got, err := os.ReadFile(path)
			must(t, err)
			if string(got) != content {
				t.Fatalf("sed -i %q wrote:\n%s\nwant:\n%s", script, got, content)
			}
		}},
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// ---- observing ----

// rlEchoErr runs a small echo through addr, with short timeouts.
func rlEchoErr(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := "Ehello through " + addr
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	if err := closeWrite(c); err != nil {
		return err
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("echo through %s: %w", addr, err)
	}
	if string(got) != msg[1:] {
		return fmt.Errorf("echo through %s: got %q", addr, got)
	}
	return nil
}

// rlEcho fails the test unless an echo through addr works.
func rlEcho(t testing.TB, addr string) {
	t.Helper()
	if err := rlEchoErr(addr); err != nil {
		t.Fatal(err)
	}
}

// refuses reports whether a connection to addr is refused (nothing listens).
func refuses(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// measure polls cond every 10 ms from start until it holds, and returns how
// long after start that was. Beyond reloadDeadline it reports an error (and
// goes on waiting, up to measureTimeout, so the figure is still logged).
func measure(t testing.TB, what string, start time.Time, cond func() bool) time.Duration {
	t.Helper()
	for !cond() {
		if time.Since(start) > measureTimeout {
			t.Fatalf("%s: not seen %v after the save", what, measureTimeout)
		}
		time.Sleep(reloadPoll)
	}
	d := time.Since(start)
	t.Logf("reload latency: %s: %v", what, d.Round(time.Millisecond))
	if d > reloadDeadline {
		t.Errorf("%s took %v after the save, want <= %v", what, d.Round(time.Millisecond), reloadDeadline)
	}
	return d
}

// latencies collects measured figures by label and logs a summary.
type latencies map[string][]time.Duration

func (l latencies) log(t testing.TB) {
	t.Helper()
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		d := slices.Clone(l[k])
		slices.Sort(d)
		t.Logf("reload latency summary: %-32s n=%d min=%v median=%v max=%v", k, len(d),
			d[0].Round(time.Millisecond), d[len(d)/2].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
	}
}

// liveEcho is an open echo stream through a proxy.
type liveEcho struct {
	c    net.Conn
	addr string
}

// openEcho opens an echo stream through addr and checks it with a round trip.
func openEcho(t testing.TB, addr string) *liveEcho {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte{'E'}); err != nil {
		t.Fatal(err)
	}
	s := &liveEcho{c: c, addr: addr}
	s.check(t, "just opened")
	return s
}

func (s *liveEcho) roundTrip(what string) error {
	s.c.SetDeadline(time.Now().Add(10 * time.Second))
	defer s.c.SetDeadline(time.Time{})
	msg := []byte(what + strings.Repeat(".", 512))
	if _, err := s.c.Write(msg); err != nil {
		return fmt.Errorf("live stream through %s (%s): write: %w", s.addr, what, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(s.c, got); err != nil || !bytes.Equal(got, msg) {
		return fmt.Errorf("live stream through %s (%s): echo: %v", s.addr, what, err)
	}
	return nil
}

// check fails the test unless the stream still echoes.
func (s *liveEcho) check(t testing.TB, what string) {
	t.Helper()
	if err := s.roundTrip(what); err != nil {
		t.Fatal(err)
	}
}

// finish ends the stream the orderly way (half-close, read to EOF), as an
// app that is done would, and fails the test unless that works.
func (s *liveEcho) finish(t testing.TB) {
	t.Helper()
	s.check(t, "before the end")
	s.c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := closeWrite(s.c); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(s.c); err != nil || len(rest) != 0 {
		t.Fatalf("live stream through %s: end: %d more bytes, %v", s.addr, len(rest), err)
	}
	s.c.Close()
}

// ended returns a channel that receives the time the stream is ended by the
// other side (a read returns EOF or an error). Don't use the stream otherwise
// once this is called.
func (s *liveEcho) ended() <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		var b [1]byte
		for {
			if _, err := s.c.Read(b[:]); err != nil {
				ch <- time.Now()
				return
			}
		}
	}()
	return ch
}

// ---- metrics ----

var httpClient = &http.Client{Timeout: 10 * time.Second}

// metrics reads base/metrics into "name{labels}" → value.
func metrics(base string) (map[string]float64, error) {
	resp, err := httpClient.Get(base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: %s", base, resp.Status)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, nil
}

const (
	mReloadOK   = `hybrid_config_reloads_total{result="success"}`
	mReloadFail = `hybrid_config_reloads_total{result="failure"}`
)

// metric reads one value from base/metrics, failing the test if it is absent.
func metric(t testing.TB, base, name string) float64 {
	t.Helper()
	m, err := metrics(base)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := m[name]
	if !ok {
		t.Fatalf("%s/metrics has no %s", base, name)
	}
	return v
}

// waitMetric waits until base/metrics has name == want.
func waitMetric(t testing.TB, base, name string, want float64) {
	t.Helper()
	var last float64
	waitFor(t, fmt.Sprintf("%s %s == %v", base, name, want), reloadTimeout, func() bool {
		m, err := metrics(base)
		last = m[name]
		return err == nil && last == want
	})
}

// count is how many times sub occurs in p's output.
func count(p *Proc, sub string) int { return strings.Count(p.Output(), sub) }

// countRe is how many times re matches in p's output.
func countRe(p *Proc, re *regexp.Regexp) int { return len(re.FindAllStringIndex(p.Output(), -1)) }

// binds is how many times proxy p opened a listener on addr.
func binds(p *Proc, addr string) int {
	return countRe(p, regexp.MustCompile(`\] +proxy: forwarding: listen=`+regexp.QuoteMeta(addr)+` `))
}

// unbinds is how many times proxy p closed its listener on addr.
func unbinds(p *Proc, addr string) int {
	return countRe(p, regexp.MustCompile(`\] +proxy: stopped forwarding: listen=`+regexp.QuoteMeta(addr)+` `))
}

// startEchoServer starts a quiet echo resource on 127.0.0.1: each
// connection sends 'E' and then gets back everything it sends (connections
// that send nothing, like the probes of a port check, are fine).
func startEchoServer(t testing.TB) string {
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
				var cmd [1]byte
				if _, err := io.ReadFull(c, cmd[:]); err != nil || cmd[0] != 'E' {
					return
				}
				if _, err := io.Copy(c, c); err == nil {
					closeWrite(c)
				}
			}()
		}
	}()
	return l.Addr().String()
}

// ---- the proxy's tests ----

// TestReloadSavePatterns: for each save pattern, a mapping added to the
// proxy's file serves an echo within a second of the save, and once removed
// its port refuses within a second. A mapping the edits never touch is never
// rebound and its live stream carries on throughout.
func TestReloadSavePatterns(t *testing.T) {
	resource := startEchoServer(t)
	e := newRLEnv(t, "echo", "echo2")
	e.startAgent(t, rlAgentCfg{Pubs: pubs(resource, "echo", "echo2")})

	const rounds = 4
	lat := latencies{}
	for _, sp := range savePatterns() {
		t.Run(sp.name, func(t *testing.T) {
			a := rlMap{Name: "echo", Listen: freeAddr(t, "127.0.0.2")}
			b := rlMap{Name: "echo2", Listen: freeAddr(t, "127.0.0.2"), Tag: "B", Off: true}
			cfg := func(on bool) rlProxyCfg {
				b.Off = !on
				return rlProxyCfg{Maps: []rlMap{a, b}}
			}
			path := sp.setup(t, t.TempDir(), e.proxyYAML(cfg(false)))
			p := e.startProxy(t, path, cfg(false))
			live := openEcho(t, a.Listen)
			if !refuses(b.Listen) {
				t.Fatalf("%s accepts before mapping B was added", b.Listen)
			}
			for i := range rounds {
				start := time.Now()
				sp.save(t, path, e.proxyYAML(cfg(true)))
				d := measure(t, fmt.Sprintf("%s: add mapping (round %d), echo through it", sp.name, i), start, func() bool {
					return rlEchoErr(b.Listen) == nil
				})
				lat[sp.name+" add"] = append(lat[sp.name+" add"], d)

				start = time.Now()
				sp.save(t, path, e.proxyYAML(cfg(false)))
				d = measure(t, fmt.Sprintf("%s: remove mapping (round %d), port refuses", sp.name, i), start, func() bool {
					return refuses(b.Listen)
				})
				lat[sp.name+" remove"] = append(lat[sp.name+" remove"], d)
				live.check(t, fmt.Sprintf("round %d", i))
			}
			rlEcho(t, a.Listen)
			live.finish(t)
			if n := binds(p.Proc, a.Listen); n != 1 {
				t.Errorf("the untouched mapping %s was bound %d times, want once", a.Listen, n)
			}
			if n := binds(p.Proc, b.Listen); n != rounds {
				t.Errorf("mapping B %s was bound %d times, want %d", b.Listen, n, rounds)
			}
			if n := count(p.Proc, "config reloaded"); n != 2*rounds {
				t.Errorf("%d \"config reloaded\" lines, want %d (one per save)", n, 2*rounds)
			}
		})
	}
	lat.log(t)
}

// TestReloadProxyMappingChanges: a removed mapping's listener closes while
// its live stream finishes undisturbed; a changed listen address is rebound;
// a changed key or connection name applies to new streams only; the mapping
// left alone is never rebound.
func TestReloadProxyMappingChanges(t *testing.T) {
	resource := startEchoServer(t)
	greeter := startGreeter(t)
	e := newRLEnv(t, "echo", "echo2", "greet")
	e.startAgent(t, rlAgentCfg{Pubs: append(pubs(resource, "echo", "echo2"), rlPub{Name: "greet", Endpoint: greeter})})

	a := rlMap{Name: "echo", Listen: freeAddr(t, "127.0.0.2")}
	b := rlMap{Name: "echo2", Listen: freeAddr(t, "127.0.0.2")}
	cfg := func(maps ...rlMap) rlProxyCfg { return rlProxyCfg{Maps: maps} }
	p := e.writeProxy(t, cfg(a, b))
	liveA := openEcho(t, a.Listen)
	reloads := 0
	save := func(c rlProxyCfg) {
		t.Helper()
		reloads++
		saveRename(t, p.Config, e.proxyYAML(c))
	}
	waitReloads := func() {
		t.Helper()
		waitFor(t, fmt.Sprintf("%d config reloads", reloads), reloadTimeout, func() bool {
			return count(p.Proc, "config reloaded") >= reloads
		})
	}

	t.Run("removed mapping: listener closes, live stream finishes", func(t *testing.T) {
		liveB := openEcho(t, b.Listen)
		start := time.Now()
		save(cfg(a))
		measure(t, "removed mapping refuses", start, func() bool { return refuses(b.Listen) })
		p.WaitLog(t, "stopped forwarding: listen="+b.Listen, reloadTimeout)
		liveB.check(t, "after its mapping was removed")
		liveB.finish(t)
	})

	t.Run("changed listen address: rebound", func(t *testing.T) {
		save(cfg(a, b))
		measure(t, "mapping added back", time.Now(), func() bool { return rlEchoErr(b.Listen) == nil })
		moved := b
		moved.Listen = freeAddr(t, "127.0.0.2")
		start := time.Now()
		save(cfg(a, moved))
		measure(t, "new listen address serves", start, func() bool { return rlEchoErr(moved.Listen) == nil })
		measure(t, "old listen address refuses", start, func() bool { return refuses(b.Listen) })
		b = moved
	})

	t.Run("changed key: new streams use it, live ones go on", func(t *testing.T) {
		liveB := openEcho(t, b.Listen)
		wrong := b
		wrong.Key = e2eKey(t) // a well-formed key the relay does not know
		save(cfg(a, wrong))
		waitReloads()
		appFails(t, b.Listen)
		p.WaitLog(t, refusedLine("hc=echo2"), reloadTimeout)
		liveB.check(t, "after its key changed")
		start := time.Now()
		save(cfg(a, b))
		waitReloads()
		measure(t, "the right key again: echo works", start, func() bool { return rlEchoErr(b.Listen) == nil })
		liveB.finish(t)
	})

	t.Run("changed connection name: new streams go to the new HC", func(t *testing.T) {
		liveB := openEcho(t, b.Listen)
		renamed := b
		renamed.Name = "greet"
		start := time.Now()
		save(cfg(a, renamed))
		greeted := func() bool {
			// The echo resource answers "E?" with "?", the greeter with
			// its greeting: either way the first byte tells at once.
			c, err := net.DialTimeout("tcp", b.Listen, time.Second)
			if err != nil {
				return false
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, "E?"); err != nil {
				return false
			}
			got := make([]byte, len("220 hello\r\n"))
			if _, err := io.ReadFull(c, got[:1]); err != nil || got[0] != '2' {
				return false
			}
			_, err = io.ReadFull(c, got[1:])
			return err == nil && string(got) == "220 hello\r\n"
		}
		measure(t, "renamed mapping reaches the other HC", start, greeted)
		p.WaitLog(t, "forwarding changed: listen="+b.Listen+" hc=greet", reloadTimeout)
		liveB.check(t, "after its mapping was renamed")
		liveB.finish(t)
	})

	liveA.finish(t)
	rlEcho(t, a.Listen)
	if n := binds(p.Proc, a.Listen); n != 1 {
		t.Errorf("the untouched mapping %s was bound %d times, want once", a.Listen, n)
	}
	if n := unbinds(p.Proc, a.Listen); n != 0 {
		t.Errorf("the untouched mapping %s was closed %d times", a.Listen, n)
	}
}
