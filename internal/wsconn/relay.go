package wsconn

import (
	"crypto/rand"
	"errors"
	"io"
	"math"
	"sync"
)

// copyBufs are buffers of chunk bytes (and room for a frame header), taken
// only while bytes move.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, chunk+14); return &b }}

// ReadFrom copies r into c; io.Copy uses it, and so stream.Pipe and the
// relay's stream joints. When r is another WebSocket (a *Conn, something
// with a WebSocket() *Conn method, or an *io.LimitedReader of either, as
// io.CopyN makes), it copies frames as they are: data frames with their
// type, fragmentation and boundaries, pings and pongs, and the close frame
// with its code and reason, after which it returns (a close frame ends only
// its own direction: WebSocket's half-close, which the .NET SDK's
// ShutdownAsync and azbridge rely on). It stops at a frame boundary once
// the limit is reached or passed. When r fails without a close frame, c's
// close code becomes 1001 (going away: its peer is gone), or 1002 after a
// protocol error, for when the caller closes it.
//
// Any other r is copied as bytes, one binary frame per read.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	limit := int64(math.MaxInt64)
	src := r
	if lr, ok := r.(*io.LimitedReader); ok {
		src, limit = lr.R, lr.N
	}
	var ws *Conn
	switch s := src.(type) {
	case *Conn:
		ws = s
	case interface{ WebSocket() *Conn }:
		ws = s.WebSocket()
	}
	if ws != nil {
		n, err := relayFrames(ws, c, limit)
		if err != nil {
			code, reason := CloseGoingAway, "peer connection lost"
			if errors.Is(err, ErrProtocol) {
				code, reason = CloseProtocolError, "peer broke the protocol"
			}
			c.SetCloseStatus(code, reason)
		}
		return n, err
	}
	return copyChunks(c, r)
}

// idleBufs hold a copy's place while it waits for bytes.
var idleBufs = sync.Pool{New: func() any { b := make([]byte, 1<<10); return &b }}

// copyChunks writes what r gives to w, one Write (one frame) per read;
// io.EOF is a clean end. While r is idle it waits with a small buffer, and
// reads into a large pooled one only while reads fill the small one.
func copyChunks(w io.Writer, r io.Reader) (int64, error) {
	var n int64
	for {
		sp := idleBufs.Get().(*[]byte)
		k, err := r.Read(*sp)
		if k > 0 {
			if _, werr := w.Write((*sp)[:k]); werr != nil {
				idleBufs.Put(sp)
				return n, werr
			}
			n += int64(k)
		}
		full := k == len(*sp)
		idleBufs.Put(sp)
		for full && err == nil {
			bp := copyBufs.Get().(*[]byte)
			buf := (*bp)[:chunk]
			k, err = r.Read(buf)
			if k > 0 {
				if _, werr := w.Write(buf[:k]); werr != nil {
					copyBufs.Put(bp)
					return n, werr
				}
				n += int64(k)
			}
			full = k == len(buf)
			copyBufs.Put(bp)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// relayFrames copies src's frames to dst until src's close frame has been
// passed on or limit payload bytes are passed (nil), or something fails.
func relayFrames(src, dst *Conn, limit int64) (int64, error) {
	var n int64
	for n < limit {
		if src.readEOF {
			return n, nil // its close was passed on already
		}
		h, err := src.nextHeader()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			src.readErr = err
			return n, err
		}
		if isControl(h.op) {
			p, err := src.readControl(h)
			if err != nil {
				return n, err
			}
			if h.op == OpClose {
				code, reason, perr := parseClose(p)
				if perr != nil {
					return n, perr
				}
				src.mu.Lock()
				src.closeCode, src.closeReason = code, reason
				src.mu.Unlock()
				src.readEOF = true
				// Pass the peer's words on exactly; an empty close stays
				// empty.
				if code == CloseNoStatus {
					code = 0
				}
				if err := dst.WriteClose(code, reason); err != nil {
					return n, err
				}
				return n, nil
			}
			if err := dst.writeFrame(true, h.op, p); err != nil && !errors.Is(err, ErrClosed) {
				return n, err
			}
			continue
		}
		// A data frame: same header, payload streamed through a pooled
		// buffer, taken once the header is in (unmasked from a client,
		// masked towards a server).
		bp := copyBufs.Get().(*[]byte)
		err = dst.relayData(src, h, (*bp)[:chunk])
		copyBufs.Put(bp)
		if err != nil {
			return n, err
		}
		n += h.length
	}
	return n, nil
}

// relayData writes data frame h, whose payload is read from src, to c.
func (c *Conn) relayData(src *Conn, h header, buf []byte) error {
	c.lock()
	defer c.unlock()
	if c.sentClose {
		return ErrClosed
	}
	var key [4]byte
	var mk *[4]byte
	if !c.server {
		if _, err := rand.Read(key[:]); err != nil {
			return err
		}
		mk = &key
	}
	hdr := appendHeader(buf[:0], h.fin, h.op, int(h.length), mk)
	if _, err := c.raw.Write(hdr); err != nil {
		return err
	}
	left := h.length
	srcPos, dstPos := 0, 0
	for left > 0 {
		p := buf[:min(int64(len(buf)), left)]
		k, err := io.ReadFull(src.br, p)
		if k > 0 {
			if h.masked {
				srcPos = maskBytes(h.mask, srcPos, p[:k])
			}
			if mk != nil {
				dstPos = maskBytes(key, dstPos, p[:k])
			}
			if _, werr := c.raw.Write(p[:k]); werr != nil {
				return werr
			}
			left -= int64(k)
		}
		if err != nil {
			src.readErr = noEOF(err)
			return src.readErr
		}
	}
	return nil
}
