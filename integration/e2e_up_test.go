package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// TestE2EUpEmbeddedDemo runs what `make run` runs: `hybrid up` in a
// directory with no hybrid.yaml, so the embedded demo config (the repo's
// hybrid.yaml) brings up relay, agent and proxy in one process; a request to
// the proxy's 127.0.0.2:8081 reaches the demo resource on 127.0.0.1:8081,
// and the log warns that the demo keys are public.
//
// The demo's ports are fixed (5671, 9352, 8080, 8081, 127.0.0.2:5432). As
// root (CI), the test runs them in a private network namespace of its own,
// where they are always free, whatever else runs on the machine. Otherwise
// it uses the host's loopback and fails, naming the port, when one is taken.
func TestE2EUpEmbeddedDemo(t *testing.T) {
	ns := newNetns(t)
	name, args := demoCommand(t, ns, "up")

	var ln net.Listener
	var err error
	ns.do(func() { ln, err = net.Listen("tcp", "127.0.0.1:8081") })
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "on-prem says hello to %s", r.URL.Path)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	up := startProcWith(t, ProcConfig{Dir: t.TempDir()}, name, args...)
	up.WaitLog(t, "running the built-in DEMO config, whose keys are public", 30*time.Second)
	up.WaitLog(t, "agent: listening: relay=127.0.0.1:5671 hc=demo", 30*time.Second)
	up.WaitLog(t, "forwarding: listen=127.0.0.2:8081 hc=demo", 30*time.Second)

	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		ns.do(func() { c, err = (&net.Dialer{}).DialContext(ctx, network, addr) })
		return c, err
	}}
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	resp, err := c.Get("http://127.0.0.2:8081/through-the-tunnel")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "on-prem says hello to /through-the-tunnel") {
		t.Fatalf("got %q", body)
	}
	tr.CloseIdleConnections() // else the kept-alive stream holds the grace period
	if code := up.Stop(t); code != 0 {
		t.Fatalf("hybrid up exited %d after SIGTERM", code)
	}
}

// netns is a private network namespace with its loopback up, held by one
// locked OS thread for the test's duration. A nil *netns is the host's
// network: do runs f where it is.
type netns struct {
	path string      // /proc/PID/task/TID/ns/net, for nsenter --net
	run  chan func() // f to run on the thread inside the namespace
}

// newNetns makes a private network namespace, or returns nil (the host's
// network) when it cannot: not root, or unshare refused.
// demoCommand is how to run `hybrid <args>` with the embedded demo config:
// in ns when there is one (root), else here, once the demo's fixed ports
// are found free.
func demoCommand(t *testing.T, ns *netns, args ...string) (string, []string) {
	t.Helper()
	if ns != nil {
		return "nsenter", append([]string{"--net=" + ns.path, hybridBinary(t)}, args...)
	}
	for _, addr := range []string{"127.0.0.1:5671", "127.0.0.1:9352", "127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.2:8081", "127.0.0.2:5432"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("the demo's fixed port %s is taken here (%v): stop what holds it (make run? hybrid up?), "+
				"or run the test as root, which gives it a network namespace of its own", addr, err)
		}
		ln.Close()
	}
	return "hybrid", args
}

// TestE2ERolesWarnOnDemo: each role started with no --config and no
// ./hybrid.yaml says, before anything else, that it runs the built-in demo
// config with public keys, and runs it.
func TestE2ERolesWarnOnDemo(t *testing.T) {
	for _, role := range []struct{ name, running string }{
		{"relay", "relay listening"},
		{"agent", ""}, // no relay runs: it keeps trying
		{"proxy", "proxy: forwarding: listen=127.0.0.2:5432 hc=postgres"},
	} {
		t.Run(role.name, func(t *testing.T) {
			name, args := demoCommand(t, newNetns(t), role.name)
			p := startProcWith(t, ProcConfig{Dir: t.TempDir()}, name, args...)
			p.WaitLog(t, "running the built-in DEMO config, whose keys are public", 30*time.Second)
			if role.running != "" {
				p.WaitLog(t, role.running, 30*time.Second)
			}
			time.Sleep(500 * time.Millisecond)
			if p.Exited() {
				t.Fatalf("exited: %s", tailLines(p.Output(), 20))
			}
			if code := p.Stop(t); code != 0 {
				t.Fatalf("exit %d", code)
			}
		})
	}
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	ns := &netns{run: make(chan func())}
	ready, done := make(chan error, 1), make(chan struct{})
	go func() {
		// Never unlocked: when this goroutine returns, its thread ends and
		// takes the namespace with it, and no other goroutine runs there.
		runtime.LockOSThread()
		if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
			ready <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		if err := loopbackUp(); err != nil {
			ready <- fmt.Errorf("bring lo up: %w", err)
			return
		}
		ns.path = fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), syscall.Gettid())
		ready <- nil
		for {
			select {
			case f := <-ns.run:
				f()
			case <-done:
				return
			}
		}
	}()
	if err := <-ready; err != nil {
		t.Logf("no private network namespace (%v): using the host's loopback", err)
		return nil
	}
	t.Cleanup(func() { close(done) })
	return ns
}

// do runs f inside the namespace: sockets f makes belong to it.
func (ns *netns) do(f func()) {
	if ns == nil {
		f()
		return
	}
	finished := make(chan struct{})
	ns.run <- func() { defer close(finished); f() }
	<-finished
}

// loopbackUp sets IFF_UP on lo in the calling thread's network namespace
// (SIOCSIFFLAGS; no iproute2 needed).
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr struct {
		name  [syscall.IFNAMSIZ]byte
		flags uint16
		_     [22]byte // the rest of struct ifreq's union
	}
	copy(ifr.name[:], "lo")
	ioctl := func(req uintptr) error {
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&ifr))); e != 0 {
			return e
		}
		return nil
	}
	if err := ioctl(syscall.SIOCGIFFLAGS); err != nil {
		return err
	}
	ifr.flags |= syscall.IFF_UP | syscall.IFF_RUNNING
	return ioctl(syscall.SIOCSIFFLAGS)
}
