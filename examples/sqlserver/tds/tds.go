package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// TDS (MS-TDS, the protocol of Microsoft SQL Server) as far as its first
// exchange, PRELOGIN: the client sends a PRELOGIN packet (type 0x12), the
// server answers with a tabular-result packet (type 0x04) holding its own
// PRELOGIN options. Every TDS packet starts with an 8-byte header.
const (
	headerLen = 8

	typePrelogin = 0x12 // client -> server: PRELOGIN
	typeReply    = 0x04 // server -> client: tabular result (the PRELOGIN answer)
	typeLogin7   = 0x10 // client -> server: LOGIN7, which this example stops before

	statusEOM = 0x01 // last packet of the message

	// maxPacket is TDS's default negotiated packet size; a PRELOGIN is far
	// smaller.
	maxPacket = 4096
)

// PRELOGIN option tokens (MS-TDS 2.2.6.5).
const (
	optVersion    = 0x00
	optEncryption = 0x01
	optInstOpt    = 0x02
	optThreadID   = 0x03
	optMARS       = 0x04
	optTerminator = 0xFF
)

// Encryption values of the ENCRYPTION option.
const (
	encryptOff    = 0x00
	encryptOn     = 0x01
	encryptNotSup = 0x02
	encryptReq    = 0x03
)

// encryptionName names an ENCRYPTION value as the specification does.
func encryptionName(b byte) string {
	switch b {
	case encryptOff:
		return "ENCRYPT_OFF"
	case encryptOn:
		return "ENCRYPT_ON"
	case encryptNotSup:
		return "ENCRYPT_NOT_SUP"
	case encryptReq:
		return "ENCRYPT_REQ"
	}
	return fmt.Sprintf("0x%02x", b)
}

// packet is one TDS packet.
type packet struct {
	typ, status byte
	payload     []byte
}

// writePacket writes p with its header (SPID 0, packet id 1, window 0).
func writePacket(w io.Writer, p packet) error {
	if len(p.payload)+headerLen > maxPacket {
		return fmt.Errorf("packet of %d bytes: over %d", len(p.payload)+headerLen, maxPacket)
	}
	b := make([]byte, headerLen, headerLen+len(p.payload))
	b[0], b[1] = p.typ, p.status
	binary.BigEndian.PutUint16(b[2:], uint16(headerLen+len(p.payload)))
	b[6] = 1 // packet id
	_, err := w.Write(append(b, p.payload...))
	return err
}

// readPacket reads one TDS packet.
func readPacket(r io.Reader) (packet, error) {
	var h [headerLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return packet{}, err
	}
	n := int(binary.BigEndian.Uint16(h[2:]))
	if n < headerLen || n > maxPacket {
		return packet{}, fmt.Errorf("TDS header says %d bytes: want %d..%d", n, headerLen, maxPacket)
	}
	p := packet{typ: h[0], status: h[1], payload: make([]byte, n-headerLen)}
	if _, err := io.ReadFull(r, p.payload); err != nil {
		return packet{}, fmt.Errorf("TDS packet of %d bytes: %w", n, err)
	}
	return p, nil
}

// options maps PRELOGIN option tokens to their data.
type options map[byte][]byte

// encodeOptions lays options out as PRELOGIN does: a table of (token,
// offset, length) entries in token order, 0xFF, then the data.
func encodeOptions(o options) []byte {
	tokens := make([]int, 0, len(o))
	for t := range o {
		tokens = append(tokens, int(t))
	}
	sort.Ints(tokens)
	table := make([]byte, 0, 5*len(tokens)+1)
	var data []byte
	offset := 5*len(tokens) + 1
	for _, t := range tokens {
		d := o[byte(t)]
		table = append(table, byte(t), byte((offset+len(data))>>8), byte(offset+len(data)), byte(len(d)>>8), byte(len(d)))
		data = append(data, d...)
	}
	return append(append(table, optTerminator), data...)
}

// errOptions is returned for a malformed PRELOGIN option table.
var errOptions = errors.New("malformed PRELOGIN options")

// decodeOptions parses a PRELOGIN payload.
func decodeOptions(b []byte) (options, error) {
	o := options{}
	for i := 0; ; i += 5 {
		if i >= len(b) {
			return nil, fmt.Errorf("%w: no terminator", errOptions)
		}
		if b[i] == optTerminator {
			return o, nil
		}
		if i+5 > len(b) {
			return nil, fmt.Errorf("%w: short option entry", errOptions)
		}
		off, n := int(binary.BigEndian.Uint16(b[i+1:])), int(binary.BigEndian.Uint16(b[i+3:]))
		if off+n > len(b) {
			return nil, fmt.Errorf("%w: option 0x%02x data at %d+%d, payload %d bytes", errOptions, b[i], off, n, len(b))
		}
		if _, dup := o[b[i]]; dup {
			return nil, fmt.Errorf("%w: option 0x%02x twice", errOptions, b[i])
		}
		o[b[i]] = b[off : off+n]
	}
}

// version is the VERSION option: major.minor.build.subbuild.
type version struct {
	major, minor    byte
	build, subbuild uint16
}

func (v version) bytes() []byte {
	b := []byte{v.major, v.minor, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(b[2:], v.build)
	binary.LittleEndian.PutUint16(b[4:], v.subbuild)
	return b
}

func parseVersion(b []byte) (version, error) {
	if len(b) != 6 {
		return version{}, fmt.Errorf("VERSION of %d bytes, want 6", len(b))
	}
	return version{b[0], b[1], binary.BigEndian.Uint16(b[2:]), binary.LittleEndian.Uint16(b[4:])}, nil
}

func (v version) String() string {
	return fmt.Sprintf("%d.%d.%d.%d", v.major, v.minor, v.build, v.subbuild)
}

// clientPrelogin is the PRELOGIN a driver sends that does not offer TLS:
// its version, ENCRYPT_NOT_SUP, the default instance, a thread id, no MARS.
func clientPrelogin(threadID uint32) packet {
	tid := make([]byte, 4)
	binary.BigEndian.PutUint32(tid, threadID)
	return packet{typ: typePrelogin, status: statusEOM, payload: encodeOptions(options{
		optVersion:    version{major: 1}.bytes(),
		optEncryption: {encryptNotSup},
		optInstOpt:    {0x00}, // the default instance
		optThreadID:   tid,
		optMARS:       {0x00},
	})}
}

// serverVersion is what the responder says it is: SQL Server 2019 RTM
// (15.0.2000), as a real one answers.
var serverVersion = version{major: 15, build: 2000}

// serverReply answers a client's PRELOGIN options as SQL Server does
// without a TLS certificate: its version; ENCRYPT_NOT_SUP, unless the client
// requires encryption (then an error: SQL Server closes the connection);
// INSTOPT 0x00 ("the instance you named is me") for the default instance;
// an empty THREADID; MARS off.
func serverReply(client options) (packet, error) {
	if _, ok := client[optVersion]; !ok {
		return packet{}, fmt.Errorf("%w: no VERSION", errOptions)
	}
	if e := client[optEncryption]; len(e) == 1 && (e[0] == encryptReq || e[0] == encryptOn) {
		return packet{}, fmt.Errorf("the client requires encryption (%s); this responder has no certificate", encryptionName(e[0]))
	}
	inst := byte(0x00)
	if name := client[optInstOpt]; len(name) > 1 {
		inst = 0x01 // a named instance: not this one
	}
	return packet{typ: typeReply, status: statusEOM, payload: encodeOptions(options{
		optVersion:    serverVersion.bytes(),
		optEncryption: {encryptNotSup},
		optInstOpt:    {inst},
		optThreadID:   {},
		optMARS:       {0x00},
	})}, nil
}
