package proxy

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/testenv"
	"github.com/hybridconn/hybrid/rules"
)

var testRange = netip.MustParsePrefix("127.77.0.0/16")

func TestDeriveAddrs(t *testing.T) {
	// Derived from the name alone: the same on every start, machine and
	// version. Changing this breaks users' running setups.
	got, err := deriveAddrs(testRange, []string{"intranet.corp.invalid", "pg.corp.local"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"pg.corp.local": "127.77.239.123", "intranet.corp.invalid": "127.77.223.3"}
	for name, a := range want {
		if got[name].String() != a {
			t.Errorf("%s -> %v, want %s", name, got[name], a)
		}
	}
	// Other names do not move a name (barring a collision).
	alone, _ := deriveAddrs(testRange, []string{"pg.corp.local"})
	if alone["pg.corp.local"] != got["pg.corp.local"] {
		t.Errorf("pg.corp.local moved with other names: %v vs %v", alone, got)
	}

	// A /30 has two usable addresses (not its first and last): two names
	// fill it, distinctly; a third does not fit.
	small := netip.MustParsePrefix("127.1.2.4/30")
	two, err := deriveAddrs(small, []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if two["a"] == two["b"] {
		t.Errorf("collision not resolved: %v", two)
	}
	for n, a := range two {
		if a != netip.MustParseAddr("127.1.2.5") && a != netip.MustParseAddr("127.1.2.6") {
			t.Errorf("%s -> %v: outside the usable part of %v", n, a, small)
		}
	}
	if _, err := deriveAddrs(small, []string{"a", "b", "c"}); err == nil || !strings.Contains(err.Error(), "do not fit") {
		t.Errorf("three names in a /30: %v", err)
	}

	// Many names: all distinct, inside the range, never 127.0.0.1.
	var names []string
	for i := range 2000 {
		names = append(names, "host"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+".corp"+string(rune('a'+i/26%26))+string(rune('a'+i/676)))
	}
	many, err := deriveAddrs(netip.MustParsePrefix("127.77.0.0/20"), names)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]string{}
	for n, a := range many {
		if prev, dup := seen[a]; dup {
			t.Fatalf("%s and %s both got %v", n, prev, a)
		}
		seen[a] = n
	}
}

func entries(pairs ...string) []hostsEntry {
	var out []hostsEntry
	for i := 0; i < len(pairs); i += 2 {
		out = append(out, hostsEntry{Name: pairs[i], Addr: netip.MustParseAddr(pairs[i+1])})
	}
	return out
}

const (
	userPart = "127.0.0.1\tlocalhost\n# a comment the admin wrote\n::1  localhost ip6-localhost\n\n10.0.0.5 files.corp.local   # trailing\n"
	block1   = hostsBegin + "\n127.77.239.123\tpg.corp.local\n" + hostsEnd + "\n"
)

func TestEditHosts(t *testing.T) {
	one := entries("pg.corp.local", "127.77.239.123")
	tests := []struct {
		name    string
		in      string
		entries []hostsEntry
		want    string
	}{
		{"empty file", "", one, block1},
		{"appended after the user's lines", userPart, one, userPart + block1},
		{"last line without newline gets one", "127.0.0.1 localhost", one, "127.0.0.1 localhost\n" + block1},
		{"replaced where it was", "a\n" + hostsBegin + "\n127.77.1.1\told.corp\n" + hostsEnd + "\nb\n", one, "a\n" + block1 + "b\n"},
		{"unchanged", userPart + block1, one, userPart + block1},
		{"removed when no entries", "a\n" + block1 + "b\n", nil, "a\nb\n"},
		{"nothing to remove", userPart, nil, userPart},
		{"empty stays empty", "", nil, ""},
		{"several entries, sorted as given", userPart,
			entries("a.corp", "127.77.0.9", "b.corp", "127.77.0.10"),
			userPart + hostsBegin + "\n127.77.0.9\ta.corp\n127.77.0.10\tb.corp\n" + hostsEnd + "\n"},
		{"crash left BEGIN without END: only our lines go",
			"a\n" + hostsBegin + "\n127.77.1.1\told.corp\n127.77.1.2\tolder.corp\n10.0.0.1 mine\nb\n", one,
			"a\n" + block1 + "10.0.0.1 mine\nb\n"},
		{"crash left BEGIN at the very end", "a\n" + hostsBegin, one, "a\n" + block1},
		{"crash left a torn entry line", "a\n" + hostsBegin + "\n127.77.1.1\told.co", one, "a\n" + block1},
		{"stray END dropped", "a\n" + hostsEnd + "\nb\n", one, "a\nb\n" + block1},
		{"two blocks become one", block1 + "x\n" + block1, one, block1 + "x\n"},
		{"indented markers are ours too", "  " + hostsBegin + "\n1.2.3.4 x\n\t" + hostsEnd + "\nz\n", nil, "z\n"},
		{"CRLF user lines kept", "a\r\nb\r\n", one, "a\r\nb\r\n" + block1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := editHosts([]byte(tt.in), tt.entries, testRange)
			if string(got) != tt.want {
				t.Errorf("got:\n%q\nwant:\n%q", got, tt.want)
			}
			// Editing is idempotent, and removing gives back the user's part.
			again, _ := editHosts(got, tt.entries, testRange)
			if string(again) != string(got) {
				t.Errorf("second edit changed it:\n%q", again)
			}
		})
	}
}

func TestEditHostsShadowed(t *testing.T) {
	in := "10.0.0.9 PG.corp.local. pg\n# 10.0.0.8 pg.corp.local\n10.0.0.7 other # pg.corp.local\n" + block1
	_, shadowed := editHosts([]byte(in), entries("pg.corp.local", "127.77.239.123"), testRange)
	if len(shadowed) != 1 || !strings.HasPrefix(shadowed[0], "line 1: 10.0.0.9") {
		t.Errorf("shadowed = %q", shadowed)
	}
}

func TestUpdateHostsFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hosts")
	if err := os.WriteFile(path, []byte(userPart), 0o640); err != nil {
		t.Fatal(err)
	}
	one := entries("pg.corp.local", "127.77.239.123")
	changed, inPlace, _, err := updateHostsFile(path, one, testRange)
	if err != nil || !changed || inPlace {
		t.Fatalf("update: changed=%v inPlace=%v err=%v", changed, inPlace, err)
	}
	b, _ := os.ReadFile(path)
	if string(b) != userPart+block1 {
		t.Errorf("file:\n%s", b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640 kept", fi.Mode().Perm())
	}
	if changed, _, _, err := updateHostsFile(path, one, testRange); err != nil || changed {
		t.Errorf("no-op update: changed=%v err=%v", changed, err)
	}
	if changed, _, _, err := updateHostsFile(path, nil, testRange); err != nil || !changed {
		t.Errorf("remove: changed=%v err=%v", changed, err)
	}
	if b, _ := os.ReadFile(path); string(b) != userPart {
		t.Errorf("after removal:\n%q\nwant the user's part back:\n%q", b, userPart)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".hosts.hybrid-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// A missing file is created only when there is something to write.
	missing := filepath.Join(dir, "none")
	if changed, _, _, err := updateHostsFile(missing, nil, testRange); err != nil || changed {
		t.Errorf("missing, nothing to write: changed=%v err=%v", changed, err)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("missing file created: %v", err)
	}
	if _, _, _, err := updateHostsFile(missing, one, testRange); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(missing); string(b) != block1 {
		t.Errorf("created:\n%q", b)
	}
	// Not a file at all.
	if _, _, _, err := updateHostsFile(dir, one, testRange); err == nil {
		t.Errorf("a directory as hosts file: no error")
	}
}

// TestUpdateHostsFileSymlink: a hosts file that is a symbolic link (as
// /etc/hosts is on some distributions) is written through to its target;
// the link stays a link, and stays put when the block is removed.
func TestUpdateHostsFileSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "etc-hosts-real")
	if err := os.WriteFile(target, []byte(userPart), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "hosts")
	if err := os.Symlink("etc-hosts-real", link); err != nil {
		t.Fatal(err)
	}
	one := entries("pg.corp.local", "127.77.239.123")
	for i, want := range []string{userPart + block1, userPart} {
		var es []hostsEntry
		if i == 0 {
			es = one
		}
		if changed, _, _, err := updateHostsFile(link, es, testRange); err != nil || !changed {
			t.Fatalf("step %d: changed=%v err=%v", i, changed, err)
		}
		if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("step %d: %s is no longer a symbolic link (%v)", i, link, err)
		}
		if b, _ := os.ReadFile(target); string(b) != want {
			t.Fatalf("step %d: target holds:\n%s", i, b)
		}
	}
}

// In place is what happens on a mount point (the integration test has one).
// Here the temporary file cannot be made: its name, longer than the file's,
// is too long for the file system.
func TestWriteHostsFileInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), strings.Repeat("h", 250))
	if err := os.WriteFile(path, []byte("a much longer original content\n"), 0o644); err != nil {
		testenv.SkipOrFail(t, "cannot make a 250-character file name here: %v", err)
	}
	inPlace, err := writeHostsFile(path, []byte("short\n"))
	if err != nil || !inPlace {
		t.Fatalf("inPlace=%v err=%v", inPlace, err)
	}
	if b, _ := os.ReadFile(path); string(b) != "short\n" {
		t.Errorf("got %q", b)
	}
}

func hostsConfig(file string, cs ...rules.ProxyConnection) *rules.Proxy {
	cfg := baseConfig()
	cfg.Socks = ""
	cfg.Hosts = &rules.Hosts{File: file, Range: testRange}
	cfg.Connections = conns(cs...)
	return cfg
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestHostsMode(t *testing.T) {
	echo := echoServer(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "hosts")
	// What a crash left behind: a stale entry, an unterminated block.
	if err := os.WriteFile(file, []byte(userPart+hostsBegin+"\n127.77.1.1\tstale.corp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pg := rules.ProxyConnection{Name: "pg", Endpoint: "pg.corp.local:5432"}
	cfg := hostsConfig(file,
		pg,
		rules.ProxyConnection{Name: "pg2", Endpoint: "pg.corp.local:5433"},                      // same name, other port
		rules.ProxyConnection{Name: "ip", Endpoint: "10.0.0.5:1433", Listen: "127.0.0.1:0"},     // IPs have no name to map
		rules.ProxyConnection{Name: "local", Endpoint: "localhost:6543", Listen: "127.0.0.1:0"}, // never redirect localhost
		rules.ProxyConnection{Name: "named-with-listen", Endpoint: "files.corp.local:445", Listen: "127.0.0.1:0"},
	)
	tp := startTestProxy(t, cfg, dialEcho(echo))
	want := userPart + hostsBegin + "\n127.77.48.72\tfiles.corp.local\n127.77.239.123\tpg.corp.local\n" + hostsEnd + "\n"
	if got := readFile(t, file); got != want {
		t.Fatalf("hosts file after start:\n%s\nwant:\n%s", got, want)
	}
	if !strings.Contains(tp.logs.String(), "also mapped outside the managed block") {
		t.Errorf("the user's own files.corp.local line is not reported as shadowing ours")
	}
	// Listening on the derived address, on each endpoint's own port.
	for _, addr := range []string{"127.77.239.123:5432", "127.77.239.123:5433", "127.77.48.72:445"} {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		roundTrip(t, c, "via "+addr)
		c.Close()
	}
	if got := *tp.lastTarget.Load(); got != "files.corp.local:445" {
		t.Errorf("opened %q", got)
	}
	live, err := net.Dial("tcp", "127.77.239.123:5432")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	roundTrip(t, live, "live")

	// Reload: pg goes, intranet comes; the live stream is undisturbed.
	next := hostsConfig(file, rules.ProxyConnection{Name: "intranet", Endpoint: "Intranet.Corp.Invalid:8080"})
	next.Connections[0].Endpoint = "intranet.corp.invalid:8080" // as rules canonicalises it
	if err := tp.Apply(next); err != nil {
		t.Fatal(err)
	}
	want = userPart + hostsBegin + "\n127.77.223.3\tintranet.corp.invalid\n" + hostsEnd + "\n"
	if got := readFile(t, file); got != want {
		t.Fatalf("hosts file after reload:\n%s\nwant:\n%s", got, want)
	}
	if c, err := net.DialTimeout("tcp", "127.77.239.123:5432", time.Second); err == nil {
		c.Close()
		t.Errorf("removed mapping still listens")
	}
	roundTrip(t, live, "still live")
	c, err := net.Dial("tcp", "127.77.223.3:8080")
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, "intranet")
	c.Close()

	// A reload repairs hand edits inside the block.
	os.WriteFile(file, []byte(strings.Replace(want, "127.77.223.3", "127.77.9.9", 1)), 0o644)
	if err := tp.Apply(next); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, file); got != want {
		t.Errorf("hand edit not repaired:\n%s", got)
	}

	// The file moves: the old one is cleaned, the new one written.
	file2 := filepath.Join(dir, "hosts2")
	moved := hostsConfig(file2, next.Connections...)
	if err := tp.Apply(moved); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, file); got != userPart {
		t.Errorf("old file not cleaned:\n%s", got)
	}
	if got := readFile(t, file2); got != hostsBegin+"\n127.77.223.3\tintranet.corp.invalid\n"+hostsEnd+"\n" {
		t.Errorf("new file:\n%s", got)
	}

	// Clean exit removes the block and leaves the rest.
	os.WriteFile(file2, []byte("# mine\n"+readFile(t, file2)+"# also mine\n"), 0o644)
	tp.stop(t)
	if got := readFile(t, file2); got != "# mine\n# also mine\n" {
		t.Errorf("after exit:\n%q", got)
	}
}

func TestHostsModeOffAndFailures(t *testing.T) {
	echo := echoServer(t)
	file := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(file, []byte(userPart), 0o644)
	cfg := hostsConfig(file, rules.ProxyConnection{Name: "pg", Endpoint: "pg.corp.local:5432"})
	tp := startTestProxy(t, cfg, dialEcho(echo))

	// A hosts file that cannot be written: the reload fails, nothing changes.
	bad := hostsConfig(filepath.Join(file, "not-a-dir"), rules.ProxyConnection{Name: "x", Endpoint: "x.corp.local:1"})
	if err := tp.Apply(bad); err == nil {
		t.Fatal("Apply with an unwritable hosts file succeeded")
	}
	if c, err := net.DialTimeout("tcp", "127.77.239.123:5432", time.Second); err != nil {
		t.Errorf("failed reload closed a mapping: %v", err)
	} else {
		c.Close()
	}
	if tp.Addrs()["x"] != "" {
		t.Errorf("failed reload left a listener: %v", tp.Addrs())
	}

	// Hosts mode off: block removed, listeners closed.
	off := hostsConfig(file, cfg.Connections...)
	off.Hosts = nil
	if err := tp.Apply(off); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, file); got != userPart {
		t.Errorf("block left after hosts mode off:\n%s", got)
	}
	if len(tp.Addrs()) != 0 {
		t.Errorf("listeners left: %v", tp.Addrs())
	}
}

// A hosts file that cannot be written stops the start.
func TestHostsModeStartFails(t *testing.T) {
	cfg := hostsConfig(filepath.Join(t.TempDir(), "missing-dir", "hosts"), rules.ProxyConnection{Name: "pg", Endpoint: "pg.corp.local:5432"})
	p, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := p.Run(ctx); err == nil || !strings.Contains(err.Error(), "hosts mode") {
		t.Fatalf("Run = %v, want a hosts mode error", err)
	}
	if c, err := net.DialTimeout("tcp", "127.77.239.123:5432", time.Second); err == nil {
		c.Close()
		t.Errorf("listener left open after a failed start")
	}
}

// FuzzEditHosts: whatever the file holds, editing is idempotent, leaves
// exactly one block when there are entries and none when there are not.
func FuzzEditHosts(f *testing.F) {
	f.Add([]byte(userPart))
	f.Add([]byte(userPart + block1))
	f.Add([]byte("a\n" + hostsBegin + "\n127.77.1.1\told\n"))
	f.Add([]byte(hostsEnd + "\n" + hostsBegin + hostsBegin + "\r\n\x00"))
	f.Add([]byte("no newline at the end"))
	one := entries("pg.corp.local", "127.77.239.123")
	count := func(b []byte, prefix string) int {
		n := 0
		for _, l := range strings.Split(string(b), "\n") {
			if isBlockLine(l, prefix) {
				n++
			}
		}
		return n
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, es := range [][]hostsEntry{one, nil} {
			out, _ := editHosts(data, es, testRange)
			again, _ := editHosts(out, es, testRange)
			if string(again) != string(out) {
				t.Fatalf("not idempotent:\n%q\n%q", out, again)
			}
			want := 0
			if es != nil {
				want = 1
			}
			if b, e := count(out, hostsBeginPrefix), count(out, hostsEndPrefix); b != want || e != want {
				t.Fatalf("%d BEGIN and %d END lines, want %d:\n%q", b, e, want, out)
			}
		}
	})
}
