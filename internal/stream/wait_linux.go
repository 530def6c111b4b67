package stream

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// idleWait says this platform can wait for a socket without reading it.
const idleWait = true

// waitReadable blocks until the connection has bytes to read (or has
// ended, or failed), holding no buffer while it waits, and returns how
// many bytes are there (0 at the end or on an error: the next read says
// which).
func waitReadable(rc syscall.RawConn) (int, error) {
	var avail int
	var one [1]byte
	var sockErr error
	err := rc.Read(func(fd uintptr) bool {
		n, ierr := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if ierr == nil && n > 0 {
			avail = n
			return true
		}
		// Nothing queued: at the end, or not yet? A peek says, without
		// taking anything.
		m, _, perr := unix.Recvfrom(int(fd), one[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if perr == unix.EAGAIN || perr == unix.EWOULDBLOCK {
			return false // wait for the poller
		}
		// A peek that fails took the socket's error (a reset): it must
		// end the copy, as the read would have.
		sockErr = perr
		avail = max(m, 0)
		return true
	})
	if err == nil && sockErr != nil {
		err = sockErr
	}
	return avail, err
}
