package relay

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// listen opens a TCP listener on addr; with reusePort a new relay process
// may bind the same address while this one drains (SO_REUSEPORT: the
// kernel spreads new connections over both until this one closes).
func listen(addr string, reusePort bool) (net.Listener, error) {
	lc := net.ListenConfig{}
	if reusePort {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	return lc.Listen(context.Background(), "tcp", addr)
}

// handover says whether a successor can share the ports (SO_REUSEPORT).
const handover = true

// successorListening reports whether more than one socket listens on
// addr's port: this relay's, and a new process's that took it over.
func successorListening(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return false
	}
	port := fmt.Sprintf(":%04X", ta.Port)
	n := 0
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		file, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(file)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local_address rem_address st ...; st 0A is LISTEN
			if len(fields) > 3 && fields[3] == "0A" && strings.HasSuffix(fields[1], port) {
				n++
			}
		}
		file.Close()
	}
	return n > 1
}
