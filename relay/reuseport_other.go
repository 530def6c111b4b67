//go:build !linux

package relay

import "net"

// listen opens a TCP listener on addr. SO_REUSEPORT hand-over is Linux
// only; elsewhere a restart briefly refuses connections.
func listen(addr string, _ bool) (net.Listener, error) { return net.Listen("tcp", addr) }

// handover says whether a successor can share the ports: not off Linux.
const handover = false

// successorListening cannot tell off Linux.
func successorListening(net.Addr) bool { return false }
