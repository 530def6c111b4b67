package integration

// The end-to-end fixture: a relay, an agent and a proxy as three separate
// `hybrid` processes, each with its own YAML file, on loopback.

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/relayclient"
	"github.com/hybridconn/hybrid/internal/sas"
)

const (
	e2eNamespace = "relay.test"
	// e2eStartTimeout bounds each role's start (its readiness log line).
	e2eStartTimeout = 30 * time.Second
	// e2eStartAttempts: a free port can be taken between freePort and bind.
	e2eStartAttempts = 3
)

// e2eKey returns a fresh random 256-bit key, base64 (what `hybrid keys new` prints).
func e2eKey(t testing.TB) string {
	t.Helper()
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("e2eKey: %v", err)
	}
	return base64.StdEncoding.EncodeToString(b[:])
}

// hcDef is one hybrid connection of the relay. Endpoint, when set, is what the
// agent publishes for it; an empty Endpoint leaves the HC unserved.
type hcDef struct {
	Name     string
	Endpoint string
}

// proxyMap is one proxy mapping. Empty KeyName/Key default to the HC's
// "apps" (send) key, as the relay has it.
type proxyMap struct {
	Name     string
	KeyName  string
	Key      string
	Endpoint string // optional proxy.connections[].endpoint (the target sent to the agent)
}

type tunnelOpts struct {
	HCs []hcDef
	// Proxy lists the proxy's mappings; nil means one correct mapping per
	// HC with an endpoint.
	Proxy []proxyMap
}

// hcKeys are the two key values the relay holds for an HC.
type hcKeys struct {
	Apps   string // rights [send]
	Onprem string // rights [listen]
}

// tunnel is a running relay + agent + proxy.
type tunnel struct {
	Dir string
	// The relay's ports on 127.0.0.1.
	Control, Data, HTTP int
	HCs                 []hcDef
	Keys                map[string]hcKeys

	RelayConfig, AgentConfig, ProxyConfig string
	Relay, Agent, Proxy                   *Proc
	Audit                                 string // the agent's audit log

	// Listens are the proxy's listen addresses, one per mapping in order;
	// Listen maps a mapping's HC name to its address (the last one wins).
	Listens []string
	Listen  map[string]string
}

// startTunnel writes the three configs and starts relay, agent and proxy,
// waiting for each one's readiness line.
func startTunnel(t testing.TB, opts tunnelOpts) *tunnel {
	t.Helper()
	tun := &tunnel{Dir: t.TempDir(), HCs: opts.HCs, Keys: map[string]hcKeys{}}
	for _, hc := range opts.HCs {
		tun.Keys[hc.Name] = hcKeys{Apps: e2eKey(t), Onprem: e2eKey(t)}
	}
	tun.Audit = filepath.Join(tun.Dir, "audit.jsonl")
	tun.startRelay(t)
	tun.AgentConfig = writeFile(t, tun.Dir, "agent.yaml", tun.agentYAML())
	tun.Agent = tun.startAgent(t)
	maps := opts.Proxy
	if maps == nil {
		for _, hc := range opts.HCs {
			if hc.Endpoint != "" {
				maps = append(maps, proxyMap{Name: hc.Name})
			}
		}
	}
	tun.Proxy, tun.Listens, tun.ProxyConfig = tun.startProxy(t, "proxy", maps)
	tun.Listen = map[string]string{}
	for i, m := range maps {
		tun.Listen[m.Name] = tun.Listens[i]
	}
	return tun
}

func (tun *tunnel) relayYAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: debug}\nrelay:\n  namespace: %s\n  listen:\n", e2eNamespace)
	fmt.Fprintf(&b, "    control: 127.0.0.1:%d\n    data: 127.0.0.1:%d\n    http: 127.0.0.1:%d\n", tun.Control, tun.Data, tun.HTTP)
	b.WriteString("  connections:\n")
	for _, hc := range tun.HCs {
		k := tun.Keys[hc.Name]
		fmt.Fprintf(&b, "    - name: %s\n      keys:\n", hc.Name)
		fmt.Fprintf(&b, "        - {name: apps, rights: [send], primary: %q}\n", k.Apps)
		fmt.Fprintf(&b, "        - {name: onprem, rights: [listen], primary: %q}\n", k.Onprem)
	}
	return b.String()
}

func (tun *tunnel) relayLine() string {
	return fmt.Sprintf("{host: 127.0.0.1, control: %d, data: %d, http: %d, namespace: %s}", tun.Control, tun.Data, tun.HTTP, e2eNamespace)
}

func (tun *tunnel) agentYAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: debug}\nagent:\n  relays:\n    - %s\n  audit: %s\n  connections:\n", tun.relayLine(), tun.Audit)
	for _, hc := range tun.served() {
		fmt.Fprintf(&b, "    - name: %s\n      endpoint: %s\n      key_name: onprem\n      key: %q\n", hc.Name, hc.Endpoint, tun.Keys[hc.Name].Onprem)
	}
	return b.String()
}

func (tun *tunnel) proxyYAML(maps []proxyMap, listens []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: debug}\nproxy:\n  relay: %s\n  connections:\n", tun.relayLine())
	for i, m := range maps {
		keyName, key := m.KeyName, m.Key
		if keyName == "" {
			keyName = "apps"
		}
		if key == "" {
			key = tun.Keys[m.Name].Apps
		}
		fmt.Fprintf(&b, "    - name: %s\n      listen: %s\n      key_name: %s\n      key: %q\n", m.Name, listens[i], keyName, key)
		if m.Endpoint != "" {
			fmt.Fprintf(&b, "      endpoint: %s\n", m.Endpoint)
		}
	}
	return b.String()
}

// served returns the HCs the agent publishes.
func (tun *tunnel) served() []hcDef {
	var out []hcDef
	for _, hc := range tun.HCs {
		if hc.Endpoint != "" {
			out = append(out, hc)
		}
	}
	return out
}

var e2eAddrInUse = regexp.MustCompile(`(?i)address already in use`)

func (tun *tunnel) startRelay(t testing.TB) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		tun.Control, tun.Data, tun.HTTP = freePort(t), freePort(t), freePort(t)
		tun.RelayConfig = writeFile(t, tun.Dir, "relay.yaml", tun.relayYAML())
		tun.Relay = startProcWith(t, ProcConfig{Label: fmt.Sprintf("relay-%d", tun.Control)}, "hybrid", "relay", "--config", tun.RelayConfig)
		err := e2eWaitOutput(tun.Relay, "relay listening", e2eStartTimeout)
		if err == nil {
			return
		}
		if tun.Relay.Exited() && attempt < e2eStartAttempts && e2eAddrInUse.MatchString(tun.Relay.Output()) {
			t.Logf("relay could not bind its ports (taken meanwhile?), retrying")
			continue
		}
		t.Fatalf("relay did not start: %v\n%s", err, tailLines(tun.Relay.Output(), 50))
	}
}

// startAgent starts an agent process from AgentConfig and waits until it
// listens for every HC it serves.
func (tun *tunnel) startAgent(t testing.TB) *Proc {
	t.Helper()
	p := startProcWith(t, ProcConfig{Label: fmt.Sprintf("agent-%d", procSeq.Add(1))}, "hybrid", "agent", "--config", tun.AgentConfig)
	for _, hc := range tun.served() {
		p.WaitLog(t, regexp.MustCompile(`agent: listening: relay=\S+ hc=`+regexp.QuoteMeta(hc.Name)+` endpoint=`), e2eStartTimeout)
	}
	return p
}

// startProxy writes a proxy config named name.yaml with maps (each on a
// fresh 127.0.0.2 port), starts it and waits until every mapping forwards.
func (tun *tunnel) startProxy(t testing.TB, name string, maps []proxyMap) (*Proc, []string, string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		listens := make([]string, len(maps))
		for i := range maps {
			listens[i] = freeAddr(t, "127.0.0.2")
		}
		// Extra proxies get a directory of their own: the running roles
		// watch tun.Dir for live reload.
		dir := tun.Dir
		if name != "proxy" {
			dir = t.TempDir()
		}
		cfg := writeFile(t, dir, name+".yaml", tun.proxyYAML(maps, listens))
		p := startProcWith(t, ProcConfig{Label: fmt.Sprintf("%s-%d", name, procSeq.Add(1))}, "hybrid", "proxy", "--config", cfg)
		var err error
		for _, l := range listens {
			if err = e2eWaitOutput(p, "forwarding: listen="+l+" ", e2eStartTimeout); err != nil {
				break
			}
		}
		if err == nil {
			return p, listens, cfg
		}
		if p.Exited() && attempt < e2eStartAttempts && e2eAddrInUse.MatchString(p.Output()) {
			t.Logf("proxy could not bind (port taken meanwhile?), retrying")
			continue
		}
		t.Fatalf("proxy %s did not start: %v\n%s", name, err, tailLines(p.Output(), 50))
	}
}

// e2eWaitOutput is WaitLog returning an error instead of failing the test.
func e2eWaitOutput(p *Proc, substr string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		changed := p.out.changed()
		if strings.Contains(p.Output(), substr) {
			return nil
		}
		select {
		case <-changed:
		case <-p.Done():
			if strings.Contains(p.Output(), substr) {
				return nil
			}
			return fmt.Errorf("%s exited (%s) without printing %q", p.Label, p.exitDesc(), substr)
		case <-deadline.C:
			return fmt.Errorf("%s: no %q after %v", p.Label, substr, timeout)
		}
	}
}

// endpoint is the relay as the Go client addresses it.
func (tun *tunnel) endpoint() relayclient.Endpoint {
	return relayclient.Endpoint{Host: "127.0.0.1", Control: tun.Control, Data: tun.Data, HTTP: tun.HTTP, Namespace: e2eNamespace}
}

// client returns a native Go client for the relay.
func (tun *tunnel) client() relayclient.Client { return relayclient.New(tun.endpoint()) }

// e2eToken mints a SAS token for hc, valid for an hour.
func e2eToken(hc, keyName, key string) string {
	return sas.NewToken(sas.ResourceURI(e2eNamespace, hc), keyName, key, time.Now().Add(time.Hour))
}

// auditLine is the part of an agent audit line the tests look at.
type auditLine struct {
	Event    string `json:"event"`
	HC       string `json:"hc"`
	Stream   string `json:"stream"`
	Target   string `json:"target"`
	Endpoint string `json:"endpoint"`
	Reason   string `json:"reason"`
	BytesIn  int64  `json:"bytes_to_resource"`
	BytesOut int64  `json:"bytes_from_resource"`
	Method   string `json:"method"` // HTTP mode
	Path     string `json:"path"`
	Status   int    `json:"status"`
}

// e2eReadAudit parses the audit log (a missing file is empty). A line that is
// not JSON fails the test: the audit log is for machines.
func e2eReadAudit(t testing.TB, path string) []auditLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		t.Fatalf("audit: %v", err)
	}
	lines := strings.Split(string(b), "\n")
	lines = lines[:len(lines)-1] // the part after the last newline is incomplete (or empty)
	out := make([]auditLine, 0, len(lines))
	for _, line := range lines {
		var a auditLine
		if err := json.Unmarshal([]byte(line), &a); err != nil {
			t.Fatalf("audit: line %q is not JSON: %v", line, err)
		}
		out = append(out, a)
	}
	return out
}

// e2eWaitAudit waits until the audit log has a line for which match is true
// and returns every line.
func e2eWaitAudit(t testing.TB, path, what string, timeout time.Duration, match func(auditLine) bool) []auditLine {
	t.Helper()
	var lines []auditLine
	waitFor(t, "audit log "+path+": "+what, timeout, func() bool {
		lines = e2eReadAudit(t, path)
		for _, l := range lines {
			if match(l) {
				return true
			}
		}
		return false
	})
	return lines
}

// e2eEcho runs a small echo through addr (a proxy listen address of a
// sink/source HC) and fails the test unless it comes back intact.
func e2eEcho(t testing.TB, addr string, n int64) {
	t.Helper()
	sent, got := echoAndHash(t, addr, n)
	if sent != got {
		t.Fatalf("echo of %d bytes through %s: sha256 differs", n, addr)
	}
}

// e2ePort returns addr's port.
func e2ePort(t testing.TB, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
