//go:build bench

package integration

import (
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestBench measures the tunnel against direct loopback in one run and
// prints ratios. It is built only with -tags bench (make bench), so that
// make test never sees it skip: figures, not pass/fail, and no test depends
// on timing.
func TestBench(t *testing.T) {
	resource := startSinkSource(t)
	tun := startBenchTunnel(t, resource)
	blast := startBlast(t)
	blastTun := startBenchTunnel(t, blast)

	type row struct {
		name, unit     string
		direct, tunnel float64
		higherIsBetter bool
	}
	var rows []row
	const size = 1 << 30
	mbps := func(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e6 }
	timeIt := func(f func()) time.Duration { s := time.Now(); f(); return time.Since(s) }

	down := func(addr string) float64 {
		var n int64
		d := timeIt(func() { n = blastTransfer(t, addr, 'Z', size) })
		return mbps(n, d)
	}
	up := func(addr string) float64 {
		var n int64
		d := timeIt(func() { n = blastTransfer(t, addr, 'S', size) })
		return mbps(n, d)
	}
	rows = append(rows, row{"download 1 GiB", "MB/s", down(blast), down(blastTun), true})
	rows = append(rows, row{"upload 1 GiB", "MB/s", up(blast), up(blastTun), true})
	rows = append(rows, row{"round trip, 1 byte (p50)", "µs", rtt(t, resource, 2000, 50), rtt(t, tun, 2000, 50), false})
	rows = append(rows, row{"round trip, 1 byte (p99)", "µs", rtt(t, resource, 2000, 99), rtt(t, tun, 2000, 99), false})
	rows = append(rows, row{"new stream + first byte (p50)", "µs", setup(t, resource, 300), setup(t, tun, 300), false})

	var b strings.Builder
	fmt.Fprintf(&b, "\n%-32s %14s %14s %10s\n", "measure", "direct", "tunnel", "ratio")
	for _, r := range rows {
		ratio := r.tunnel / r.direct
		fmt.Fprintf(&b, "%-32s %10.1f %-3s %10.1f %-3s %9.2fx\n", r.name, r.direct, r.unit, r.tunnel, r.unit, ratio)
	}
	b.WriteString("ratio = tunnel / direct (throughput: higher is better, max 1; times: lower is better, min 1)\n")
	t.Log(b.String())
}

// startBenchTunnel runs relay, agent and proxy as three processes publishing
// resource, and returns the proxy's local address.
func startBenchTunnel(t *testing.T, resource string) string {
	dir := t.TempDir()
	ctl, data, web := freePort(t), freePort(t), freePort(t)
	local := freeAddr(t, "127.0.0.2")
	relayEP := fmt.Sprintf("{host: 127.0.0.1, control: %d, data: %d, http: %d, namespace: bench}", ctl, data, web)
	const send, listen = "bench-send-key-0000000000000000", "bench-listen-key-000000000000000"
	relayCfg := writeFile(t, dir, "relay.yaml", fmt.Sprintf(`log: {level: warn}
relay:
  namespace: bench
  listen: {control: 127.0.0.1:%d, data: 127.0.0.1:%d, http: 127.0.0.1:%d}
  connections:
    - name: bench
      keys:
        - {name: apps, rights: [send], primary: %q}
        - {name: onprem, rights: [listen], primary: %q}
`, ctl, data, web, send, listen))
	agentCfg := writeFile(t, dir, "agent.yaml", fmt.Sprintf(`log: {level: info}
agent:
  relays: [%s]
  connections:
    - {name: bench, endpoint: %q, key_name: onprem, key: %q}
`, relayEP, resource, listen))
	proxyCfg := writeFile(t, dir, "proxy.yaml", fmt.Sprintf(`log: {level: info}
proxy:
  relay: %s
  connections:
    - {name: bench, listen: %q, key_name: apps, key: %q}
`, relayEP, local, send))
	startHybrid(t, "relay", "--config", relayCfg)
	waitTCP(t, fmt.Sprintf("127.0.0.1:%d", ctl), 30*time.Second)
	agent := startHybrid(t, "agent", "--config", agentCfg)
	agent.WaitLog(t, "listening: ", 30*time.Second)
	proxy := startHybrid(t, "proxy", "--config", proxyCfg)
	proxy.WaitLog(t, "forwarding", 30*time.Second)
	return local
}

// rtt returns the pct-th percentile of 1-byte echo round trips on one
// connection, in µs.
func rtt(t *testing.T, addr string, n, pct int) float64 {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := c.Write([]byte{'E'}); err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	var d []time.Duration
	for i := 0; i < n; i++ {
		s := time.Now()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		d = append(d, time.Since(s))
	}
	return percentile(d, pct)
}

// setup returns the median time to connect, open an echo stream and get one
// byte back, in µs.
func setup(t *testing.T, addr string, n int) float64 {
	var d []time.Duration
	for i := 0; i < n; i++ {
		s := time.Now()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		b := []byte{'E', 1}
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b[:1]); err != nil {
			t.Fatal(err)
		}
		d = append(d, time.Since(s))
		c.Close()
	}
	return percentile(d, 50)
}

func percentile(d []time.Duration, pct int) float64 {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	i := len(d) * pct / 100
	if i >= len(d) {
		i = len(d) - 1
	}
	return float64(d[i].Nanoseconds()) / 1e3
}

// startBlast serves raw throughput without hashing, so the figures measure
// the tunnel rather than the test's own CPU: after a 1-byte command, 'Z'
// writes zeros until the client closes, 'S' reads until EOF and answers with
// one byte.
func startBlast(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				cmd := []byte{0}
				if _, err := io.ReadFull(c, cmd); err != nil {
					return
				}
				switch cmd[0] {
				case 'Z':
					buf := make([]byte, 256<<10)
					for {
						if _, err := c.Write(buf); err != nil {
							return
						}
					}
				case 'S':
					io.Copy(io.Discard, c)
					c.Write([]byte{1})
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// blastTransfer moves n bytes in the direction cmd names and returns the
// bytes moved.
func blastTransfer(t *testing.T, addr string, cmd byte, n int64) int64 {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	if _, err := c.Write([]byte{cmd}); err != nil {
		t.Fatal(err)
	}
	if cmd == 'Z' {
		got, err := io.CopyN(io.Discard, c, n)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	buf := make([]byte, 256<<10)
	var sent int64
	for sent < n {
		m, err := c.Write(buf)
		if err != nil {
			t.Fatal(err)
		}
		sent += int64(m)
	}
	c.(*net.TCPConn).CloseWrite()
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		t.Fatal(err)
	}
	return sent
}
