package validate

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const systemdDir = "../systemd"

// unit is a parsed unit file: section -> key -> values, in order (a key
// may repeat, as SystemCallFilter= does).
type unit map[string]map[string][]string

func parseUnit(data []byte) (unit, error) {
	u := unit{}
	var section string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		case strings.HasSuffix(line, "\\"):
			return nil, fmt.Errorf("line %d: continuation lines are not handled here", n)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				return nil, fmt.Errorf("line %d: %q", n, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u, sc.Err()
}

// last is the effective value of a single-valued key.
func (u unit) last(section, key string) string {
	vs := u[section][key]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

var spanPart = regexp.MustCompile(`(\d+)\s*([a-z]*)`)

// systemdSpan parses a systemd time span ("11min", "30s", "1min 30s").
func systemdSpan(s string) (time.Duration, error) {
	units := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "": time.Second,
		"s": time.Second, "sec": time.Second, "m": time.Minute, "min": time.Minute, "h": time.Hour, "hr": time.Hour}
	var total time.Duration
	parts := spanPart.FindAllStringSubmatch(s, -1)
	if len(parts) == 0 || strings.TrimSpace(spanPart.ReplaceAllString(s, "")) != "" {
		return 0, fmt.Errorf("time span %q", s)
	}
	for _, p := range parts {
		n, _ := strconv.Atoi(p[1])
		u, ok := units[p[2]]
		if !ok {
			return 0, fmt.Errorf("time span %q: unit %q", s, p[2])
		}
		total += time.Duration(n) * u
	}
	return total, nil
}

// roleUnits maps each unit file to the role it runs.
var roleUnits = map[string]string{
	"hybrid-relay.service":  "relay",
	"hybrid-relay@.service": "relay",
	"hybrid-agent.service":  "agent",
	"hybrid-proxy.service":  "proxy",
}

// TestSystemdUnits checks each unit's hardening and stop/reload contract
// against its example config, and that the two relay units run the same
// service.
func TestSystemdUnits(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(systemdDir, "*.service"))
	if len(files) != len(roleUnits) {
		t.Errorf("units %v, want exactly %d (roleUnits)", files, len(roleUnits))
	}
	units := map[string]unit{}
	for _, f := range files {
		name := filepath.Base(f)
		role, ok := roleUnits[name]
		if !ok {
			t.Errorf("%s: not in roleUnits", name)
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		u, err := parseUnit(data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		units[name] = u
		t.Run(name, func(t *testing.T) { checkUnit(t, u, role) })
	}
	if a, b := units["hybrid-relay.service"], units["hybrid-relay@.service"]; a != nil && b != nil {
		for k, v := range a["Service"] {
			if !slices.Equal(b["Service"][k], v) {
				t.Errorf("hybrid-relay@.service: [Service] %s=%v, hybrid-relay.service has %v: keep them the same", k, b["Service"][k], v)
			}
		}
		for k := range b["Service"] {
			if _, ok := a["Service"][k]; !ok {
				t.Errorf("hybrid-relay@.service: [Service] %s, which hybrid-relay.service lacks", k)
			}
		}
	}
}

func checkUnit(t *testing.T, u unit, role string) {
	s := func(k string) string { return u.last("Service", k) }
	want := map[string]string{
		"Type":                    "exec",
		"ExecStart":               fmt.Sprintf("/usr/local/bin/hybrid %s --config /etc/hybrid/%s.yaml", role, role),
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"KillSignal":              "SIGTERM",
		"Restart":                 "on-failure",
		"User":                    "hybrid",
		"Group":                   "hybrid",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"RestrictNamespaces":      "yes",
		"MemoryDenyWriteExecute":  "yes",
		"SystemCallArchitectures": "native",
		"UMask":                   "0077",
	}
	for k, v := range want {
		if got := s(k); got != v {
			t.Errorf("%s=%q, want %q", k, got, v)
		}
	}
	if f := u["Service"]["SystemCallFilter"]; len(f) == 0 || f[0] != "@system-service" {
		t.Errorf("SystemCallFilter=%v: want @system-service first", f)
	}
	if u.last("Unit", "After") != "network-online.target" || u.last("Unit", "Wants") != "network-online.target" {
		t.Errorf("want Wants= and After=network-online.target (the roles dial out or bind addresses at start)")
	}
	if u.last("Install", "WantedBy") != "multi-user.target" {
		t.Errorf("WantedBy=%q", u.last("Install", "WantedBy"))
	}
	if len(u["Service"]["ReadWritePaths"]) > 0 {
		t.Errorf("ReadWritePaths=%v: the only writable place is LogsDirectory= (the audit log)", u["Service"]["ReadWritePaths"])
	}

	// The example config this unit runs.
	data, err := os.ReadFile(filepath.Join(systemdDir, role+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := parseHybridConfig(data)
	if err != nil {
		t.Fatalf("%s.yaml: %v", role, err)
	}

	// CAP_NET_BIND_SERVICE exactly when a listener is below 1024.
	low := false
	var listeners []string
	switch role {
	case "relay":
		listeners = []string{"relay.listen.control", "relay.listen.data", "relay.listen.http", "relay.admin"}
	default:
		listeners = []string{role + ".admin", role + ".socks"}
		for i := 0; ; i++ {
			if _, ok := cfg.get(fmt.Sprintf("%s.connections.%d", role, i)); !ok {
				break
			}
			listeners = append(listeners, fmt.Sprintf("%s.connections.%d.listen", role, i))
		}
	}
	for _, l := range listeners {
		if a := cfg.str(l); a != "" {
			if p, err := port(a); err == nil && p < 1024 {
				low = true
			}
		}
	}
	caps := ""
	if low {
		caps = "CAP_NET_BIND_SERVICE"
	}
	if s("CapabilityBoundingSet") != caps || s("AmbientCapabilities") != caps || len(u["Service"]["CapabilityBoundingSet"]) != 1 {
		t.Errorf("CapabilityBoundingSet=%q AmbientCapabilities=%q: want %q for both (a port below 1024: %v)",
			s("CapabilityBoundingSet"), s("AmbientCapabilities"), caps, low)
	}

	// Stop: the relay drains for drain_grace after its hand-over.
	stop, err := systemdSpan(s("TimeoutStopSec"))
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	need := 2 * roleGrace
	if role == "relay" {
		drain := 10 * time.Minute
		if d := cfg.str("relay.drain_grace"); d != "" {
			if drain, err = hybridDuration(d); err != nil {
				t.Fatalf("relay.drain_grace: %v", err)
			}
		}
		need = handover + drain + graceMargin
	}
	if stop < need {
		t.Errorf("TimeoutStopSec=%s (%v): want at least %v, or systemd kills streams the role still lets finish", s("TimeoutStopSec"), stop, need)
	}

	// The audit log: the one writable directory, and only where it is.
	audit := cfg.str("agent.audit")
	logs := s("LogsDirectory")
	switch {
	case audit != "" && (logs == "" || path.Dir(audit) != "/var/log/"+logs):
		t.Errorf("agent.audit %s: want LogsDirectory= naming its directory (the only place the agent may write)", audit)
	case audit == "" && logs != "":
		t.Errorf("LogsDirectory=%s: nothing writes there", logs)
	}
}

// TestSystemdAnalyze runs `systemd-analyze verify` on every unit, in a
// throwaway root holding the units, a stand-in for /usr/local/bin/hybrid
// and /bin/kill, and the host's own system units (verify loads the
// dependencies): any message fails. Then `systemd-analyze security` scores
// each unit offline, which must stay at "OK" exposure or better.
func TestSystemdAnalyze(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		skipOrFail(t, "systemd-analyze not found (Debian package systemd)")
	}
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "usr/lib/systemd", "usr/local/bin", "etc/systemd/system"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range [][2]string{{"usr/bin", "bin"}, {"usr/lib", "lib"}} {
		if err := os.Symlink(l[0], filepath.Join(root, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"usr/local/bin/hybrid", "usr/bin/kill"} {
		if err := os.WriteFile(filepath.Join(root, f), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	hostUnits := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(hostUnits, "multi-user.target")); err != nil {
		skipOrFail(t, "no systemd units at %s to verify against (%v)", hostUnits, err)
	}
	if err := copyTree(hostUnits, filepath.Join(root, "usr/lib/systemd/system")); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(systemdDir, "*.service"))
	var names []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "etc/systemd/system", filepath.Base(f)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(f)
		if strings.HasSuffix(name, "@.service") {
			name = strings.TrimSuffix(name, "@.service") + "@a.service" // verify takes instances, not templates
		}
		names = append(names, name)
	}
	if len(names) == 0 {
		t.Fatal("no units")
	}

	out, err := exec.Command(sa, append([]string{"verify", "--root=" + root}, names...)...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify %v: %v\n%s", names, err, out)
	}

	score := regexp.MustCompile(`Overall exposure level for \S+: (\d+\.\d+) (\S+)`)
	for _, n := range names {
		// --threshold is ten times the exposure: 20 means 2.0, "OK".
		out, err := exec.Command(sa, "security", "--offline=true", "--threshold=20", "--root="+root, n).CombinedOutput()
		m := score.FindSubmatch(out)
		if m == nil {
			t.Errorf("systemd-analyze security %s: %v, no exposure level in:\n%s", n, err, out)
			continue
		}
		t.Logf("%s: exposure %s %s", n, m[1], m[2])
		if err != nil {
			t.Errorf("%s: exposure %s %s is above 2.0: %v", n, m[1], m[2], err)
		}
	}
}

// copyTree copies the directory src to dst, keeping symlinks as they are.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, 0o644)
		}
		return nil // sockets, FIFOs: none in a unit directory
	})
}

// TestSystemdConfigs runs `hybrid check` on each example config of
// deploy/systemd, laid out as /etc/hybrid: the key files it names made
// up beside it, and the environment empty, as a unit gives it.
func TestSystemdConfigs(t *testing.T) {
	for _, role := range []string{"relay", "agent", "proxy"} {
		t.Run(role, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(systemdDir, role+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := parseHybridConfig(data)
			if err != nil {
				t.Fatal(err)
			}
			etc := t.TempDir()
			for field, p := range cfg.files() {
				if path.IsAbs(p) {
					t.Errorf("%s: %s: want a path relative to /etc/hybrid", field, p)
					continue
				}
				f := filepath.Join(etc, p)
				if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(f, []byte(secretValue(role, path.Base(p))), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			file := filepath.Join(etc, role+".yaml")
			if err := os.WriteFile(file, data, 0o640); err != nil {
				t.Fatal(err)
			}
			r := hybridCheck(t, file, []string{})
			if !strings.Contains(r.summary, role) {
				t.Errorf("hybrid check: %q, want one naming the %s section", r.summary, role)
			}
			for _, other := range []string{"relay", "agent", "proxy"} {
				if _, ok := cfg.get(other); ok != (other == role) {
					t.Errorf("%s.yaml: %s section present: %v", role, other, ok)
				}
			}
		})
	}
}
