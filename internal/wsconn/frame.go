// Package wsconn is hybrid's one door to WebSocket (RFC 6455), shared by the
// relay's front door and the relay client. It is the only package that
// imports golang.org/x/net/websocket, and it uses it for the opening
// handshakes only (handshake.go): a later change of library touches this
// package alone.
//
// The framing is our own (this file and conn.go), because the library's
// cannot do what Azure's Hybrid Connections protocol needs: it hides close
// codes and reasons (a close frame is just io.EOF), hides the FIN bit (so
// message boundaries are lost, and fragmented messages come out as separate
// frames), cannot write a fragment, has no ping API, and it masks one byte
// at a time into a fresh buffer for every frame. Here a Conn is at once:
//
//   - a net.Conn carrying a byte stream (Read/Write; CloseWrite sends a close
//     frame and keeps reading, which is WebSocket's half-close);
//   - a message connection (ReadMessage, NextReader, WriteMessage,
//     NewMessageWriter) for control channels and HTTP bodies;
//   - a frame relay: io.Copy from one Conn to another (Conn.ReadFrom)
//     copies frames as they are, boundaries, types, fragments, pings and
//     close codes intact, each close ending only its own direction.
//
// Frame flow, as on the wire (RFC 6455 section 5.2):
//
//	byte 0: FIN(1) RSV1-3(3) opcode(4)   byte 1: MASK(1) len(7)
//	len 126: 2 more bytes of length; len 127: 8 more (top bit 0)
//	MASK set: 4 bytes of masking key; then the payload
//
// Frames from a client are masked, frames from a server are not; control
// frames (close, ping, pong) carry at most 125 bytes and are never
// fragmented; no extension is ever negotiated, so RSV bits must be 0.
package wsconn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Opcodes.
const (
	OpContinuation byte = 0x0
	OpText         byte = 0x1
	OpBinary       byte = 0x2
	OpClose        byte = 0x8
	OpPing         byte = 0x9
	OpPong         byte = 0xA
)

// Close codes used by hybrid (RFC 6455 section 7.4.1; 1013 from the IANA
// registry).
const (
	CloseNormal        = 1000
	CloseGoingAway     = 1001
	CloseProtocolError = 1002
	CloseUnsupported   = 1003
	CloseNoStatus      = 1005 // never on the wire: a close frame without a code
	CloseAbnormal      = 1006 // never on the wire: the connection ended without a close frame
	CloseInvalidData   = 1007
	ClosePolicy        = 1008
	CloseTooBig        = 1009
	CloseInternal      = 1011
	CloseTryAgainLater = 1013
)

// maxControlPayload is the largest payload of a close, ping or pong frame.
const maxControlPayload = 125

// maxReason is the longest close reason that fits a close frame.
const maxReason = maxControlPayload - 2

// Errors of the framing layer.
var (
	// ErrProtocol is a frame that breaks RFC 6455: the peer is closed with
	// 1002.
	ErrProtocol = errors.New("websocket protocol error")
	// ErrTooBig is a message over the reader's limit: the peer is closed
	// with 1009.
	ErrTooBig = errors.New("websocket message too big")
	// ErrClosed is a write after this side sent its close frame.
	ErrClosed = errors.New("websocket closed for writing")
)

// header is one frame header.
type header struct {
	fin    bool
	op     byte
	length int64
	masked bool
	mask   [4]byte
}

func isControl(op byte) bool { return op&0x8 != 0 }

func validOp(op byte) bool {
	switch op {
	case OpContinuation, OpText, OpBinary, OpClose, OpPing, OpPong:
		return true
	}
	return false
}

// readHeader reads a frame header and checks it: known opcode, no RSV bits,
// control frames short and final, masking as the direction requires
// (wantMasked: we are the server). It reads exactly the header's bytes.
func readHeader(r io.Reader, buf *[14]byte, wantMasked bool) (header, error) {
	var h header
	b := buf[:2]
	if _, err := io.ReadFull(r, b); err != nil {
		return h, err
	}
	h.fin = b[0]&0x80 != 0
	if b[0]&0x70 != 0 {
		return h, fmt.Errorf("%w: reserved bits set", ErrProtocol)
	}
	h.op = b[0] & 0x0f
	if !validOp(h.op) {
		return h, fmt.Errorf("%w: unknown opcode %#x", ErrProtocol, h.op)
	}
	h.masked = b[1]&0x80 != 0
	n := int64(b[1] & 0x7f)
	switch n {
	case 126:
		if _, err := io.ReadFull(r, buf[:2]); err != nil {
			return h, noEOF(err)
		}
		n = int64(binary.BigEndian.Uint16(buf[:2]))
	case 127:
		if _, err := io.ReadFull(r, buf[:8]); err != nil {
			return h, noEOF(err)
		}
		u := binary.BigEndian.Uint64(buf[:8])
		if u>>63 != 0 {
			return h, fmt.Errorf("%w: frame length with the top bit set", ErrProtocol)
		}
		n = int64(u)
	}
	h.length = n
	if isControl(h.op) && (n > maxControlPayload || !h.fin) {
		return h, fmt.Errorf("%w: control frame %#x fragmented or over 125 bytes", ErrProtocol, h.op)
	}
	if h.masked != wantMasked {
		if wantMasked {
			return h, fmt.Errorf("%w: unmasked frame from a client", ErrProtocol)
		}
		return h, fmt.Errorf("%w: masked frame from a server", ErrProtocol)
	}
	if h.masked {
		if _, err := io.ReadFull(r, h.mask[:]); err != nil {
			return h, noEOF(err)
		}
	}
	return h, nil
}

// noEOF turns an EOF inside a frame into ErrUnexpectedEOF: only an EOF
// between frames is a clean end.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendHeader appends a frame header to b.
func appendHeader(b []byte, fin bool, op byte, length int, mask *[4]byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	var m byte
	if mask != nil {
		m = 0x80
	}
	switch {
	case length <= 125:
		b = append(b, b0, m|byte(length))
	case length <= 0xffff:
		b = append(b, b0, m|126, byte(length>>8), byte(length))
	default:
		b = append(b, b0, m|127)
		b = binary.BigEndian.AppendUint64(b, uint64(length))
	}
	if mask != nil {
		b = append(b, mask[:]...)
	}
	return b
}

// maskBytes XORs b with key, starting at key position pos, and returns the
// next position. It works a word at a time: the library this replaces did a
// byte at a time, which was the bottleneck of client-to-server throughput.
func maskBytes(key [4]byte, pos int, b []byte) int {
	if len(b) == 0 {
		return pos
	}
	// Head: bytes until the key position is 0 again.
	for pos&3 != 0 && len(b) > 0 {
		b[0] ^= key[pos&3]
		b = b[1:]
		pos++
	}
	k32 := binary.LittleEndian.Uint32(key[:])
	k64 := uint64(k32) | uint64(k32)<<32
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, binary.LittleEndian.Uint64(b)^k64)
		b = b[8:]
	}
	for i := range b {
		b[i] ^= key[i&3]
	}
	return (pos + len(b)) & 3
}

// closePayload encodes a close frame's payload. Code 0 means none (an empty
// payload); reasons are clipped to fit, on a UTF-8 boundary.
func closePayload(code int, reason string) []byte {
	if code == 0 || code == CloseNoStatus || code == CloseAbnormal {
		return nil
	}
	if len(reason) > maxReason {
		reason = clipUTF8(reason, maxReason)
	}
	b := make([]byte, 2, 2+len(reason))
	binary.BigEndian.PutUint16(b, uint16(code))
	return append(b, reason...)
}

// parseClose decodes a close frame's payload: (CloseNoStatus, "") when it
// is empty.
func parseClose(p []byte) (code int, reason string, err error) {
	switch {
	case len(p) == 0:
		return CloseNoStatus, "", nil
	case len(p) == 1:
		return 0, "", fmt.Errorf("%w: one-byte close payload", ErrProtocol)
	}
	code = int(binary.BigEndian.Uint16(p))
	if !validCloseCode(code) {
		return 0, "", fmt.Errorf("%w: close code %d not allowed on the wire", ErrProtocol, code)
	}
	return code, string(p[2:]), nil
}

// validCloseCode reports whether code may appear in a close frame.
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

func clipUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xc0 == 0x80 {
		n--
	}
	return s[:n]
}

// CloseError is the close frame a peer sent: its code and reason.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("websocket closed by peer: %d", e.Code)
	}
	return fmt.Sprintf("websocket closed by peer: %d %s", e.Code, e.Reason)
}

// Is makes errors.Is(err, io.EOF) true for a close from the peer: it is a
// clean end.
func (e *CloseError) Is(target error) bool { return target == io.EOF }
