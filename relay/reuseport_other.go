//go:build !linux

package relay

import "net"

// listen opens a TCP listener on addr. SO_REUSEPORT hand-over is Linux
// only; elsewhere a restart briefly refuses connections.
func listen(addr string, _ bool) (net.Listener, error) { return net.Listen("tcp", addr) }

// successorListening cannot tell off Linux: the handover wait runs out.
func successorListening(net.Addr) bool { return false }
