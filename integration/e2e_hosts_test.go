package integration

// Transparent hosts mode, end to end: psql and curl on the app's machine use
// the on-premises name in their connection strings, unchanged, with no proxy
// settings at all.
//
// Two private mount namespaces, each with its own temporary file
// bind-mounted over /etc/hosts (see e2e_socks_test.go): the agent's ("on-prem
// DNS": the names resolve to 127.0.0.1, where the resources listen) and the
// app machine's, where the proxy runs with `hosts: {file: /etc/hosts}` and
// the clients are started inside it with nsenter. The proxy writes its block
// into the app machine's file through the bind mount — in place, as it must
// for a mount point, exactly as in a container whose /etc/hosts is
// bind-mounted. The test reads and edits the same file by its temporary path.
// The real /etc/hosts is never written, and the test checks it is unchanged.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The app machine's own hosts file: the proxy must keep every byte of it.
const appHostsUser = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n# the app machine's hosts file (test copy)\n10.20.30.40 files.example.invalid   # kept as is\n"

const (
	hostsBlockBegin = "# BEGIN hybrid-proxy hosts mode (managed by hybrid proxy; edits inside are overwritten)\n"
	hostsBlockEnd   = "# END hybrid-proxy hosts mode\n"
)

var reMapped = regexp.MustCompile(`proxy: hosts: mapped: name=(\S+) address=(\S+)`)

func TestE2EHostsMode(t *testing.T) {
	needMountNamespace(t)
	realHosts, _ := os.ReadFile("/etc/hosts")

	pg := startPostgres(t)
	web := namedHTTPResource(t, "hello from the intranet")
	pgEP := fmt.Sprintf("pg.corp.invalid:%d", pg.Port)
	webEP := fmt.Sprintf("intranet.corp.invalid:%d", web)
	tun := startRelayAndAgent(t, []hcDef{{Name: "pg", Endpoint: pgEP}, {Name: "intranet", Endpoint: webEP}},
		"pg.corp.invalid", "intranet.corp.invalid")

	appHosts := writeFile(t, tun.Dir, "app-hosts", appHostsUser)
	os.Chmod(appHosts, 0o644)
	proxyYAML := func(cs ...socksMapping) string {
		return tun.proxyConfigYAML("  hosts: {file: /etc/hosts, range: 127.77.0.0/16}\n", cs)
	}
	pgConn, webConn := socksMapping{Name: "pg", Endpoint: pgEP}, socksMapping{Name: "intranet", Endpoint: webEP}
	proxyCfg := writeFile(t, tun.Dir, "proxy.yaml", proxyYAML(pgConn))
	startProxy := func() *Proc {
		t.Helper()
		p := startWithHosts(t, fmt.Sprintf("proxy-hosts-%d", procSeq.Add(1)), appHosts, "proxy", "--config", proxyCfg)
		p.WaitLog(t, regexp.MustCompile(`proxy: forwarding: listen=127\.77\.\d+\.\d+:`+strconv.Itoa(pg.Port)+` hc=pg`), e2eStartTimeout)
		return p
	}
	proxy := startProxy()

	addrOf := func(p *Proc, name string) string {
		t.Helper()
		for _, m := range reMapped.FindAllStringSubmatch(p.Output(), -1) {
			if m[1] == name {
				if a, err := netip.ParseAddr(m[2]); err != nil || !netip.MustParsePrefix("127.77.0.0/16").Contains(a) {
					t.Fatalf("%s mapped to %q, outside the range", name, m[2])
				}
				return m[2]
			}
		}
		t.Fatalf("no mapping logged for %s:\n%s", name, tailLines(p.Output(), 30))
		return ""
	}
	pgAddr := addrOf(proxy, "pg.corp.invalid")
	// /etc/hosts is a mount point here, as in a container: rename cannot
	// replace it, so the proxy rewrote it in place.
	proxy.WaitLog(t, "hosts: file updated: file=/etc/hosts entries=1 in_place=true", 10*time.Second)
	block := func(lines ...string) string {
		return hostsBlockBegin + strings.Join(lines, "") + hostsBlockEnd
	}
	wantFile := func(want string) {
		t.Helper()
		waitFor(t, "the app machine's hosts file to read\n"+want, 10*time.Second, func() bool {
			b, _ := os.ReadFile(appHosts)
			return string(b) == want
		})
	}
	wantFile(appHostsUser + block(pgAddr+"\tpg.corp.invalid\n"))

	// psql on the app machine, with the on-prem name and port, nothing else.
	psqlApp := func(p *Proc) (string, int) {
		t.Helper()
		dsn := fmt.Sprintf("host=pg.corp.invalid port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=10", pg.Port)
		return runClient(t, 60*time.Second, nil, "nsenter", "-t", strconv.Itoa(p.Pid()), "-m", "--",
			pgBin(t, "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", dsn, "-c", "select 'answer ' || 6*7 || ' from port ' || inet_server_port()")
	}
	curlApp := func(p *Proc) (string, int) {
		t.Helper()
		return runClient(t, 60*time.Second, nil, "nsenter", "-t", strconv.Itoa(p.Pid()), "-m", "--",
			"curl", "-sS", "--max-time", "20", "--noproxy", "*", fmt.Sprintf("http://intranet.corp.invalid:%d/", web))
	}
	wantPsql := fmt.Sprintf("answer 42 from port %d", pg.Port)
	if out, code := psqlApp(proxy); code != 0 || !strings.Contains(out, wantPsql) {
		t.Fatalf("psql by on-prem name: exit %d, %q", code, out)
	}
	e2eWaitAudit(t, tun.Audit, "an open for pg with its target", 10*time.Second, func(l auditLine) bool {
		return l.Event == "open" && l.HC == "pg" && l.Target == pgEP
	})

	reload := func(cs ...socksMapping) {
		t.Helper()
		mark := proxy.Mark()
		writeFile(t, tun.Dir, "proxy.yaml", proxyYAML(cs...))
		proxy.Signal(syscall.SIGHUP)
		proxy.WaitLogAfter(t, mark, "config reloaded", 20*time.Second)
	}

	// Reload adds an entry (and its listener) ...
	reload(pgConn, webConn)
	webAddr := addrOf(proxy, "intranet.corp.invalid")
	wantFile(appHostsUser + block(webAddr+"\tintranet.corp.invalid\n", pgAddr+"\tpg.corp.invalid\n"))
	if out, code := curlApp(proxy); code != 0 || !strings.Contains(out, "hello from the intranet") {
		t.Fatalf("curl by on-prem name after reload: exit %d, %q", code, out)
	}
	// ... and removes one: the name no longer resolves on the app machine.
	reload(webConn)
	wantFile(appHostsUser + block(webAddr+"\tintranet.corp.invalid\n"))
	if out, code := psqlApp(proxy); code == 0 || !strings.Contains(out, "pg.corp.invalid") {
		t.Errorf("psql after its entry was removed: exit %d, %q", code, out)
	}

	// kill -9: the block stays behind. Make it worse, as a crash in the
	// middle of an in-place rewrite would (no END line), and let the admin
	// add a line of their own after it meanwhile.
	proxy.Kill()
	b, _ := os.ReadFile(appHosts)
	if !bytes.Contains(b, []byte(hostsBlockBegin)) {
		t.Fatalf("block gone after kill -9? %q", b)
	}
	torn := strings.Replace(string(b), hostsBlockEnd, "", 1) + "10.9.8.7 added-by-admin.example.invalid\n"
	if err := os.WriteFile(appHosts, []byte(torn), 0o644); err != nil {
		t.Fatal(err)
	}
	// The restart (with pg back in the file) repairs it: one block, as
	// configured, where the old one was; the admin's line kept.
	writeFile(t, tun.Dir, "proxy.yaml", proxyYAML(pgConn, webConn))
	proxy = startProxy()
	if a := addrOf(proxy, "pg.corp.invalid"); a != pgAddr {
		t.Errorf("pg.corp.invalid moved across restarts: %s -> %s", pgAddr, a)
	}
	repaired := appHostsUser + block(webAddr+"\tintranet.corp.invalid\n", pgAddr+"\tpg.corp.invalid\n") + "10.9.8.7 added-by-admin.example.invalid\n"
	wantFile(repaired)
	if out, code := psqlApp(proxy); code != 0 || !strings.Contains(out, wantPsql) {
		t.Fatalf("psql after restart: exit %d, %q", code, out)
	}
	if out, code := curlApp(proxy); code != 0 || !strings.Contains(out, "hello from the intranet") {
		t.Fatalf("curl after restart: exit %d, %q", code, out)
	}

	// A clean exit removes the block, and only the block.
	if code := proxy.Stop(t); code != 0 {
		t.Errorf("proxy exit %d after SIGTERM", code)
	}
	wantFile(appHostsUser + "10.9.8.7 added-by-admin.example.invalid\n")

	if now, _ := os.ReadFile("/etc/hosts"); sha256.Sum256(now) != sha256.Sum256(realHosts) {
		t.Errorf("the real /etc/hosts changed:\nbefore %q\nafter  %q", realHosts, now)
	}
}
