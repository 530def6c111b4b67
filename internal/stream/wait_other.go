//go:build !linux

package stream

import "syscall"

// idleWait says this platform cannot wait for a socket without reading it:
// copies read with a small buffer while idle.
const idleWait = false

func waitReadable(syscall.RawConn) (int, error) { return 1, nil }
