package wsconn

import (
	"crypto/rand"
	"errors"
	"io"
	"sync"
)

// Counts are the payload bytes Relay moved each way.
type Counts struct {
	AToB, BToA int64
}

// Relay copies frames a→b and b→a as they are — data frames with their
// type, fragmentation and boundaries, pings and pongs, close frames with
// their code and reason — until both directions have carried a close frame
// (or one fails), then closes both connections.
//
// A close frame ends only its own direction: after a sends close, b may go
// on sending to a until b closes too. That is WebSocket's half-close, which
// the .NET SDK's ShutdownAsync (and azbridge on every TCP FIN) relies on.
// When a direction fails without a close frame (a reset, a protocol error),
// the other side is sent 1001 (going away: its peer is gone) and both
// connections are closed.
//
// Neither connection may be read by anyone else while Relay runs.
func Relay(a, b *Conn) Counts {
	var c Counts
	var wg sync.WaitGroup
	var once sync.Once
	abort := func(from, to *Conn, err error) {
		once.Do(func() {
			code, reason := CloseGoingAway, "peer connection lost"
			if errors.Is(err, ErrProtocol) {
				code, reason = CloseProtocolError, "peer broke the protocol"
			}
			to.WriteClose(code, reason)
			a.raw.Close()
			b.raw.Close()
		})
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		n, err := relayFrames(b, a)
		c.BToA = n
		if err != nil {
			abort(b, a, err)
		}
	}()
	n, err := relayFrames(a, b)
	c.AToB = n
	if err != nil {
		abort(a, b, err)
	}
	wg.Wait()
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	a.raw.Close()
	b.raw.Close()
	return c
}

// relayFrames copies src's frames to dst until src's close frame has been
// passed on (nil) or something fails.
func relayFrames(src, dst *Conn) (int64, error) {
	buf := make([]byte, chunk)
	var n int64
	for {
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
		// A data frame: same header, payload streamed through a reused
		// buffer (unmasked from a client, masked towards a server).
		if err := dst.relayData(src, h, buf); err != nil {
			return n, err
		}
		n += h.length
	}
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
