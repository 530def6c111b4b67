//go:build bench

package integration

// The floor: three plain forwarder processes in a row, each accepting a
// connection, dialling the next and copying both ways with io.Copy (splice
// on Linux) and half-close — the least any design with hybrid's shape
// (proxy, relay, agent: three processes, three extra hops) can cost on this
// machine. Its row has no targets; it shows how much of hybrid's figures
// is the shape and how much is hybrid.

import (
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// benchForwardEnv makes the bench binary a forwarder: "listen=dial,…".
const benchForwardEnv = "HYBRID_BENCH_FORWARD"

func init() {
	if spec := os.Getenv(benchForwardEnv); spec != "" {
		benchForward(spec) // serves until killed
		os.Exit(2)
	}
}

// benchForward serves every listen=dial pair of spec.
func benchForward(spec string) {
	done := make(chan struct{})
	for _, pair := range strings.Split(spec, ",") {
		listen, dial, _ := strings.Cut(pair, "=")
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(2)
		}
		go func() {
			defer close(done)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go forwardOne(c, dial)
			}
		}()
	}
	<-done
}

// forwardOne carries c to dial, both ways, with half-close.
func forwardOne(c net.Conn, dial string) {
	d, err := net.Dial("tcp", dial)
	if err != nil {
		c.Close()
		return
	}
	half := func(dst, src net.Conn) {
		io.Copy(dst, src)
		dst.(*net.TCPConn).CloseWrite()
	}
	up := make(chan struct{})
	go func() { half(d, c); close(up) }()
	half(c, d)
	<-up
	c.Close()
	d.Close()
}

// startBenchFloor starts the three forwarders: app → f1 → f2 → f3 → the
// resource, for the echo and the blast.
func startBenchFloor(t *testing.T, res *benchResource) *benchSetup {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	echo, blast := res.Echo, res.Blast
	var procs []*Proc
	for i := 3; i >= 1; i-- {
		e, b := freeAddr(t, "127.0.0.1"), freeAddr(t, "127.0.0.1")
		spec := e + "=" + echo + "," + b + "=" + blast
		procs = append(procs, startProcWith(t, ProcConfig{Label: "forwarder", Env: []string{benchForwardEnv + "=" + spec}}, bin))
		for _, a := range []string{e, b} {
			waitFor(t, "a forwarder to listen", 30*time.Second, func() bool { return waitTCPErr(a, time.Second) == nil })
		}
		echo, blast = e, b
	}
	return &benchSetup{Key: "floor", Name: "3 forwarders", Echo: echo, Blast: blast, procs: procs}
}
