package integration

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Redis: many small requests, from many clients, pipelined or not.

// startRedis starts a throwaway redis-server on 127.0.0.1 at a free port, in
// the foreground, with no persistence, and returns its port.
func startRedis(t testing.TB) int {
	t.Helper()
	server := needProgram(t, "redis-server", "redis-server")
	dir := t.TempDir()
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		start := time.Now()
		p := startProcWith(t, ProcConfig{Label: fmt.Sprintf("redis-%d", port), Dir: dir}, server,
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--protected-mode", "no",
			"--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", dir, "--logfile", "")
		err := e2eWaitOutput(p, "Ready to accept connections", 30*time.Second)
		if err == nil {
			t.Logf("redis-server ready on 127.0.0.1:%d after %v", port, time.Since(start).Round(time.Millisecond))
			return port
		}
		if p.Exited() && attempt < 3 && e2eAddrInUse.MatchString(p.Output()) {
			continue
		}
		t.Fatalf("redis-server did not start: %v\n%s", err, tailLines(p.Output(), 30))
	}
}

var reRedisRPS = regexp.MustCompile(`^([A-Za-z0-9_ ()]+): ([0-9.]+) requests per second`)

// redisBench runs redis-benchmark with args against host:port and returns the
// requests per second of each test in the order they ran. Any error printed,
// a non-zero exit or no result at all fails the test.
func redisBench(t *testing.T, bench, host string, port int, args ...string) ([]string, []float64) {
	t.Helper()
	argv := append([]string{"-h", host, "-p", strconv.Itoa(port)}, args...)
	start := time.Now()
	out, err := runResourceTool(t, 5*time.Minute, nil, bench, argv...)
	took := time.Since(start)
	// -q rewrites a progress line with \r; the results end with \n.
	var names []string
	var rps []float64
	for _, line := range strings.FieldsFunc(out, func(r rune) bool { return r == '\r' || r == '\n' }) {
		if m := reRedisRPS.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			v, _ := strconv.ParseFloat(m[2], 64)
			names = append(names, m[1])
			rps = append(rps, v)
		}
	}
	if err != nil || strings.Contains(strings.ToLower(out), "error") || len(rps) == 0 {
		t.Fatalf("redis-benchmark %s through the tunnel: %v after %v; output:\n%s", strings.Join(args, " "), err, took, out)
	}
	t.Logf("redis-benchmark %s through the tunnel: %d tests, no errors, %v", strings.Join(args, " "), len(rps), took.Round(time.Millisecond))
	return names, rps
}

// TestE2EResourceRedis: redis-benchmark's full default suite (50 clients,
// every command type) and a pipelined run complete through the tunnel with no
// error.
func TestE2EResourceRedis(t *testing.T) {
	cli := needProgram(t, "redis-tools", "redis-cli")
	bench := needProgram(t, "redis-tools", "redis-benchmark")
	port := startRedis(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "redis", Endpoint: fmt.Sprintf("127.0.0.1:%d", port)}}})
	host, lport := "127.0.0.2", e2ePort(t, tun.Listen["redis"])

	// The app talks to the on-prem server.
	out, err := runResourceTool(t, time.Minute, nil, cli, "-h", host, "-p", strconv.Itoa(lport), "INFO", "server")
	if err != nil || !strings.Contains(out, fmt.Sprintf("tcp_port:%d", port)) {
		t.Fatalf("redis-cli INFO server through the tunnel: want tcp_port:%d; %v\n%s", port, err, out)
	}
	out, err = runResourceTool(t, time.Minute, nil, cli, "-h", host, "-p", strconv.Itoa(lport), "SET", "greeting", "hello through hybrid")
	if err != nil || strings.TrimSpace(out) != "OK" {
		t.Fatalf("redis-cli SET: %q, %v", out, err)
	}
	out, err = runResourceTool(t, time.Minute, nil, cli, "-h", host, "-p", strconv.Itoa(lport), "GET", "greeting")
	if err != nil || strings.TrimSpace(out) != "hello through hybrid" {
		t.Fatalf("redis-cli GET: %q, %v", out, err)
	}

	names, rps := redisBench(t, bench, host, lport, "-q", "-n", "20000")
	if len(rps) < 15 {
		t.Errorf("redis-benchmark -q -n 20000: %d results, want the whole default suite (%v)", len(rps), names)
	}
	var summary []string
	for i := range names {
		summary = append(summary, fmt.Sprintf("%s %.0f", names[i], rps[i]))
	}
	t.Logf("requests per second: %s", strings.Join(summary, ", "))

	names, rps = redisBench(t, bench, host, lport, "-q", "-n", "100000", "-P", "16", "-t", "set,get")
	for i := range names {
		t.Logf("pipelined (-P 16) %s: %.0f requests per second", names[i], rps[i])
	}
}
