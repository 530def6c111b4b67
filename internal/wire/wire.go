// Package wire implements hybrid's native binary protocol: the frames spoken
// on the relay's control port (agent or proxy ⇄ relay), at the start of
// every connection to its data port (proxy → relay, agent → relay), and on
// the peer connections between the relays of a fleet. It knows frames only;
// what they mean is decided by the relay core, the fleet and the clients.
//
// Protocol flow, version 2 (docs/protocol.md has the full specification; a
// version 1 preface is answered RESULT{Version}):
//
//	control channel, one per agent (or proxy) per relay, frames until either side closes:
//	  client → relay  preface "HYB\x02", HELLO{role, name, version}
//	  relay → client  WELCOME{session, relay, ping_ms}   (or RESULT{code} refusing;
//	                  role probe: WELCOME, then the relay closes)
//	  client → relay  ATTACH{hc, token}          listen (agent) or send (proxy) right
//	  relay → client  ATTACHED{hc, code, msg}    (also sent unprompted on revocation/expiry)
//	  client → relay  RENEW{hc, token}           before the token expires → ATTACHED
//	  client → relay  DETACH{hc}
//	  relay → agent   ACCEPT{id, hc, target, key, addr, early}   a sender wants a stream
//	                  (early is always empty on the control channel)
//	  agent → relay   ACK{id}                    alive, still dialling the resource
//	  agent → relay   REJECT{id, code, msg}      the agent will not serve it
//	  agent → relay   HEALTH{hc, code, msg}      its endpoint is (un)reachable
//	  relay → client  GOAWAY{code, msg}          relay stopping: connect a new channel now
//	  either          PING{n} → PONG{n}
//
//	data connection, one per stream; frames, then raw bytes:
//	  proxy → relay   preface, OPEN{hc, token, target, session, early}
//	  relay → proxy   PROGRESS (zero or more: an agent is dialling, or the
//	                  stream moved to another agent), then RESULT{code, msg}
//	  agent → relay   preface, JOIN{id, hc, token}      after ACCEPT on the control channel
//	  relay → agent   RESULT{code, msg}, then the early data as raw bytes
//	  agent → relay   preface, PARK{session}    a pre-opened connection for the next stream
//	  relay → agent   ACCEPT{..., early}        on the parked connection, when a stream comes
//	  agent → relay   ACK (optional), then RESULT{code, msg}
//	  proxy → relay   preface, WARM{session}    a pre-opened connection; OPEN follows later
//	  after an ok RESULT each side carries raw bytes.
//
//	peer connection, relay to relay in a fleet (preface "HYF\x01"):
//	  B → A   PEERHELLO{relay, nonce}
//	  A → B   PEERCHALLENGE{relay, nonce, mac}   mac proves A holds the fleet secret
//	  B → A   PEERAUTH{mac}                      B's proof
//	  A → B   RESULT{code}
//	  then, on an idle authenticated connection, one of:
//	  B → A   PEEROPEN{hc, target, key, value, expiry, addr, early, relay,
//	          session, headers, tracking, suffix, query, azure}   a stream for A's agents
//	          A → B   PROGRESS*, RESULT; raw bytes follow
//	  B → A   PEERPIPE{kind}, then a client's whole connection as B read it
//	          (a JOIN or PARK naming A's stream or session; a WebSocket
//	          rendezvous for A's stream): A serves it as if it had landed on A
//
//	data connection for a credentials check (hybrid diagnose), nothing after:
//	  client → relay  preface, CHECK{hc, token, right}
//	  relay → client  RESULT{code, msg}
//
// Every frame is a 5-byte header — type (1 byte) and payload length (uint32,
// big endian) — and a payload of fields: strings as uint16 length + bytes,
// byte strings as uint32 length + bytes, codes as one byte, PING nonces as
// uint64, stream and session ids and peer nonces as 16 bytes, MACs as 32.
// Read never reads past the end of the frame it returns, so a data
// connection can turn into a raw byte stream right after its handshake with
// nothing lost.
package wire

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/hybridconn/hybrid/internal/status"
)

// Preface opens every connection to the relay's native ports: the protocol
// name and version 2. A peer that sends anything else is refused before any
// frame is parsed.
const Preface = "HYB\x02"

// MuxPreface opens a data-port connection that carries many streams:
// after it, yamux (see internal/mux), each stream starting with Preface as a
// connection of its own would. Clients use it on TLS links, where a stream
// of its own would cost a TLS handshake.
const MuxPreface = "HYM\x01"

// PeerPreface opens a relay-to-relay connection in a fleet.
const PeerPreface = "HYF\x01"

// PrefaceV1 is the preface of protocol version 1. A relay answers it with a
// RESULT of status.Version, so an old client says why it cannot connect.
const PrefaceV1 = "HYB\x01"

// MaxPayload caps a frame's payload. Handshake frames are small (a token is
// well under 1 KiB, early data at most MaxEarly); the cap bounds what a
// hostile peer can make us allocate.
const MaxPayload = 32 << 10

// MaxString caps each string field.
const MaxString = 4 << 10

// MaxEarly caps the early data an OPEN or ACCEPT carries: the app's first
// bytes, sent with the handshake so they need no round trip of their own.
const MaxEarly = 16 << 10

const headerLen = 5

// Type identifies a frame.
type Type uint8

// Frame types. Values are part of the protocol: never renumber.
const (
	TypeHello    Type = 0x01
	TypeAttach   Type = 0x02
	TypeDetach   Type = 0x03
	TypeRenew    Type = 0x04
	TypePing     Type = 0x05
	TypePong     Type = 0x06
	TypeReject   Type = 0x07
	TypeHealth   Type = 0x08
	TypeAck      Type = 0x09
	TypeAccept   Type = 0x11
	TypeAttached Type = 0x12
	TypeWelcome  Type = 0x13
	TypeGoAway   Type = 0x14
	TypeOpen     Type = 0x21
	TypeJoin     Type = 0x22
	TypeResult   Type = 0x23
	TypeCheck    Type = 0x24
	TypePark     Type = 0x25
	TypeWarm     Type = 0x26
	TypeProgress Type = 0x27

	TypePeerHello     Type = 0x31
	TypePeerChallenge Type = 0x32
	TypePeerAuth      Type = 0x33
	TypePeerOpen      Type = 0x34
	TypePeerPipe      Type = 0x35
)

var typeNames = map[Type]string{
	TypeHello: "HELLO", TypeAttach: "ATTACH", TypeDetach: "DETACH", TypeRenew: "RENEW",
	TypePing: "PING", TypePong: "PONG", TypeReject: "REJECT", TypeHealth: "HEALTH", TypeAck: "ACK",
	TypeAccept: "ACCEPT", TypeAttached: "ATTACHED", TypeWelcome: "WELCOME", TypeGoAway: "GOAWAY",
	TypeOpen: "OPEN", TypeJoin: "JOIN", TypeResult: "RESULT", TypeCheck: "CHECK",
	TypePark: "PARK", TypeWarm: "WARM", TypeProgress: "PROGRESS",
	TypePeerHello: "PEERHELLO", TypePeerChallenge: "PEERCHALLENGE", TypePeerAuth: "PEERAUTH",
	TypePeerOpen: "PEEROPEN", TypePeerPipe: "PEERPIPE",
}

// String returns the frame type's name.
func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type 0x%02x", uint8(t))
}

// Errors returned by Read and ReadPreface.
var (
	ErrBadPreface = errors.New("wire: not a hybrid native connection (bad preface)")
	ErrOldVersion = errors.New("wire: hybrid protocol version 1 (this side speaks version 2)")
	// ErrMux is returned by ReadPreface for MuxPreface: the connection
	// carries multiplexed streams, not one.
	ErrMux       = errors.New("wire: a multiplexed connection (mux preface)")
	ErrTooLarge  = errors.New("wire: frame too large")
	ErrMalformed = errors.New("wire: malformed frame")
	ErrUnknown   = errors.New("wire: unknown frame type")
)

// StreamID names one stream at a relay. It is random, so it cannot be guessed
// by anyone who did not receive the ACCEPT on an authenticated control channel.
type StreamID [16]byte

// String returns the id in hex.
func (id StreamID) String() string { return hex.EncodeToString(id[:]) }

// SessionID names one control channel at a relay. It is random and only
// travels inside that channel's WELCOME: a PARK or WARM carrying it comes
// from the same client.
type SessionID [16]byte

// String returns the id in hex.
func (id SessionID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is the zero id ("no session").
func (id SessionID) IsZero() bool { return id == SessionID{} }

// Role says what a control channel's client is.
type Role uint8

// Roles of HELLO.
const (
	RoleAgent  Role = 1 // serves hybrid connections (listen right)
	RoleSender Role = 2 // opens streams (send right): the proxy
	RoleProbe  Role = 3 // only asks whether the native protocol answers; the relay closes after WELCOME
)

// Frame is one protocol message.
type Frame interface {
	// Type returns the frame's type byte.
	Type() Type
	appendPayload(b []byte) []byte
	decode(d *decoder)
}

// Hello opens a control channel.
type Hello struct {
	Role    Role
	Name    string // a stable name for logs and status, e.g. agent.id or the host name
	Version string // the client's software version
}

// Welcome accepts a Hello.
type Welcome struct {
	Session SessionID // this channel's id, for PARK and WARM
	Relay   string    // the relay's id (its fleet id or host name)
	PingMS  uint32    // the relay pings this often; silence for two intervals ends the channel
}

// GoAway tells a client the relay is stopping: it should open a new
// control channel (here or elsewhere) now. The relay keeps this one, and
// the streams on it, for a while.
type GoAway struct {
	Code status.Code
	Msg  string
}

// Attach asks to listen for (agent) or send to (proxy) a hybrid connection
// with a token.
type Attach struct{ HC, Token string }

// Detach stops listening for a hybrid connection.
type Detach struct{ HC string }

// Renew replaces the token of an attached hybrid connection.
type Renew struct{ HC, Token string }

// Attached answers Attach and Renew, and is sent unprompted when the relay
// ends an attachment (revoked key, expired token): Code is then not OK.
type Attached struct {
	HC   string
	Code status.Code
	Msg  string
}

// Health reports whether the agent reaches what it publishes for HC: OK,
// or status.Unreachable while its dials fail.
type Health struct {
	HC   string
	Code status.Code
	Msg  string
}

// Ping asks the peer to answer with a Pong carrying the same nonce.
type Ping struct{ Nonce uint64 }

// Pong answers a Ping.
type Pong struct{ Nonce uint64 }

// Accept tells an agent that a sender opened a stream it should serve.
type Accept struct {
	ID         StreamID
	HC         string
	Target     string // requested host:port; empty means "the published endpoint"
	SenderKey  string // key name the sender authenticated with
	SenderAddr string // sender's address as seen by the relay
	Early      []byte // the app's first bytes (on a parked connection only)
}

// Ack tells the relay the agent is alive and dialling the resource of
// stream ID: the relay then waits for the dial rather than trying another
// agent.
type Ack struct{ ID StreamID }

// Reject tells the relay the agent will not serve stream ID.
type Reject struct {
	ID   StreamID
	Code status.Code
	Msg  string
}

// Open starts a stream from a sender.
type Open struct {
	HC, Token, Target string
	// Session links the stream to the sender's control channel, so that
	// the channel's later proofs of a rotated key keep it alive; zero for
	// none.
	Session SessionID
	// Early holds the app's first bytes, at most MaxEarly.
	Early []byte
}

// Join attaches an agent's data connection to stream ID.
type Join struct {
	ID    StreamID
	HC    string
	Token string
}

// Park offers a data connection for the next stream of the session's agent.
type Park struct{ Session SessionID }

// Warm opens a data connection for a later OPEN of the session's sender.
type Warm struct{ Session SessionID }

// Progress tells a sender its stream is being set up (the agent is dialling
// the resource): keep waiting.
type Progress struct{}

// PeerHello opens a peer connection: who dials, and a fresh nonce.
type PeerHello struct {
	Relay string
	Nonce [16]byte
}

// PeerChallenge answers PeerHello with the listener's nonce and its proof
// (an HMAC of both nonces and the TLS session, keyed by the fleet secret;
// zero without a secret).
type PeerChallenge struct {
	Relay string
	Nonce [16]byte
	MAC   [32]byte
}

// PeerAuth is the dialler's proof.
type PeerAuth struct{ MAC [32]byte }

// PeerOpen carries a stream authorised at the sending relay to a relay
// whose agents listen for HC: the sender's grant travels as its key name,
// the fingerprint of the key value and the token's expiry, so the
// receiving relay can judge it after a reload (revocation) like its own.
type PeerOpen struct {
	HC, Target  string
	SenderKey   string // the key (rule) name
	Value       string // fingerprint of the key value
	Expiry      uint64 // unix seconds; 0 for none
	SenderAddr  string
	Early       []byte
	SenderRelay string    // the relay the sender is on, for logs
	Session     SessionID // the sender's session (of any relay of the fleet), or zero
	// Headers are a WebSocket sender's connect headers, as JSON; empty
	// for a native sender.
	Headers string
	// Tracking, Suffix and Query are a WebSocket sender's Azure details
	// (its sb-hc-id, path suffix and non-sb- query), empty otherwise.
	Tracking, Suffix, Query string
	Azure                   bool // the sender came over Azure's protocol
}

// Pipe kinds of PeerPipe.
const (
	PipeData uint8 = 1 // a data-port connection (its preface and frame follow)
	PipeHTTP uint8 = 2 // an HTTP connection (its request follows)
)

// PeerPipe hands a whole client connection to the peer. Remote is the
// client's address as the forwarding relay saw it ("ip:port"), so the peer
// logs and limits the client, not the relay.
type PeerPipe struct {
	Kind   uint8
	Remote string
}

// Check asks the relay whether token grants Right (1 listen, 2 send) on HC,
// without opening anything: it is how `hybrid diagnose` tests a key.
type Check struct {
	HC    string
	Token string
	Right uint8
}

// Result answers Hello (as a refusal), Open, Join, Check, a refused Park or
// Warm, an ACCEPT on a parked connection, PeerAuth and PeerOpen. After an OK
// Result on a data connection, the connection carries raw stream bytes.
type Result struct {
	Code status.Code
	Msg  string
}

// Err returns nil for OK, else a *status.Error.
func (r *Result) Err() error {
	if r.Code == status.OK {
		return nil
	}
	return &status.Error{Code: r.Code, Msg: r.Msg}
}

func (*Hello) Type() Type    { return TypeHello }
func (*Welcome) Type() Type  { return TypeWelcome }
func (*GoAway) Type() Type   { return TypeGoAway }
func (*Attach) Type() Type   { return TypeAttach }
func (*Detach) Type() Type   { return TypeDetach }
func (*Renew) Type() Type    { return TypeRenew }
func (*Attached) Type() Type { return TypeAttached }
func (*Health) Type() Type   { return TypeHealth }
func (*Ping) Type() Type     { return TypePing }
func (*Pong) Type() Type     { return TypePong }
func (*Accept) Type() Type   { return TypeAccept }
func (*Ack) Type() Type      { return TypeAck }
func (*Reject) Type() Type   { return TypeReject }
func (*Open) Type() Type     { return TypeOpen }
func (*Join) Type() Type     { return TypeJoin }
func (*Park) Type() Type     { return TypePark }
func (*Warm) Type() Type     { return TypeWarm }
func (*Progress) Type() Type { return TypeProgress }
func (*Result) Type() Type   { return TypeResult }
func (*Check) Type() Type    { return TypeCheck }

func (*PeerHello) Type() Type     { return TypePeerHello }
func (*PeerChallenge) Type() Type { return TypePeerChallenge }
func (*PeerAuth) Type() Type      { return TypePeerAuth }
func (*PeerOpen) Type() Type      { return TypePeerOpen }
func (*PeerPipe) Type() Type      { return TypePeerPipe }

func (f *PeerHello) appendPayload(b []byte) []byte {
	return append(appendStr(b, f.Relay), f.Nonce[:]...)
}
func (f *PeerChallenge) appendPayload(b []byte) []byte {
	return append(append(appendStr(b, f.Relay), f.Nonce[:]...), f.MAC[:]...)
}
func (f *PeerAuth) appendPayload(b []byte) []byte { return append(b, f.MAC[:]...) }
func (f *PeerOpen) appendPayload(b []byte) []byte {
	b = appendStr(appendStr(appendStr(appendStr(b, f.HC), f.Target), f.SenderKey), f.Value)
	b = binary.BigEndian.AppendUint64(b, f.Expiry)
	b = appendBytes(appendStr(b, f.SenderAddr), f.Early)
	b = append(appendStr(b, f.SenderRelay), f.Session[:]...)
	b = appendStr(appendStr(appendStr(appendStr(b, f.Headers), f.Tracking), f.Suffix), f.Query)
	if f.Azure {
		return append(b, 1)
	}
	return append(b, 0)
}
func (f *PeerPipe) appendPayload(b []byte) []byte { return appendStr(append(b, f.Kind), f.Remote) }

func (f *PeerHello) decode(d *decoder) { f.Relay, f.Nonce = d.str(), d.id() }
func (f *PeerChallenge) decode(d *decoder) {
	f.Relay, f.Nonce = d.str(), d.id()
	copy(f.MAC[:], d.take(32))
}
func (f *PeerAuth) decode(d *decoder) { copy(f.MAC[:], d.take(32)) }
func (f *PeerOpen) decode(d *decoder) {
	f.HC, f.Target, f.SenderKey, f.Value = d.str(), d.str(), d.str(), d.str()
	f.Expiry, f.SenderAddr, f.Early = d.u64(), d.str(), d.bytes()
	f.SenderRelay, f.Session = d.str(), SessionID(d.id())
	f.Headers, f.Tracking, f.Suffix, f.Query = d.str(), d.str(), d.str(), d.str()
	f.Azure = d.u8() == 1
}
func (f *PeerPipe) decode(d *decoder) { f.Kind, f.Remote = d.u8(), d.str() }

func (f *Hello) appendPayload(b []byte) []byte {
	return appendStr(appendStr(append(b, byte(f.Role)), f.Name), f.Version)
}
func (f *Welcome) appendPayload(b []byte) []byte {
	return binary.BigEndian.AppendUint32(appendStr(append(b, f.Session[:]...), f.Relay), f.PingMS)
}
func (f *GoAway) appendPayload(b []byte) []byte { return appendStr(append(b, byte(f.Code)), f.Msg) }
func (f *Attach) appendPayload(b []byte) []byte { return appendStr(appendStr(b, f.HC), f.Token) }
func (f *Detach) appendPayload(b []byte) []byte { return appendStr(b, f.HC) }
func (f *Renew) appendPayload(b []byte) []byte  { return appendStr(appendStr(b, f.HC), f.Token) }
func (f *Attached) appendPayload(b []byte) []byte {
	return appendStr(append(appendStr(b, f.HC), byte(f.Code)), f.Msg)
}
func (f *Health) appendPayload(b []byte) []byte {
	return appendStr(append(appendStr(b, f.HC), byte(f.Code)), f.Msg)
}
func (f *Ping) appendPayload(b []byte) []byte { return binary.BigEndian.AppendUint64(b, f.Nonce) }
func (f *Pong) appendPayload(b []byte) []byte { return binary.BigEndian.AppendUint64(b, f.Nonce) }
func (f *Accept) appendPayload(b []byte) []byte {
	b = append(b, f.ID[:]...)
	b = appendStr(appendStr(appendStr(appendStr(b, f.HC), f.Target), f.SenderKey), f.SenderAddr)
	return appendBytes(b, f.Early)
}
func (f *Ack) appendPayload(b []byte) []byte { return append(b, f.ID[:]...) }
func (f *Reject) appendPayload(b []byte) []byte {
	return appendStr(append(append(b, f.ID[:]...), byte(f.Code)), f.Msg)
}
func (f *Open) appendPayload(b []byte) []byte {
	b = appendStr(appendStr(appendStr(b, f.HC), f.Token), f.Target)
	return appendBytes(append(b, f.Session[:]...), f.Early)
}
func (f *Join) appendPayload(b []byte) []byte {
	return appendStr(appendStr(append(b, f.ID[:]...), f.HC), f.Token)
}
func (f *Park) appendPayload(b []byte) []byte     { return append(b, f.Session[:]...) }
func (f *Warm) appendPayload(b []byte) []byte     { return append(b, f.Session[:]...) }
func (f *Progress) appendPayload(b []byte) []byte { return b }
func (f *Result) appendPayload(b []byte) []byte   { return appendStr(append(b, byte(f.Code)), f.Msg) }
func (f *Check) appendPayload(b []byte) []byte {
	return append(appendStr(appendStr(b, f.HC), f.Token), f.Right)
}

func (f *Hello) decode(d *decoder) { f.Role, f.Name, f.Version = Role(d.u8()), d.str(), d.str() }
func (f *Welcome) decode(d *decoder) {
	f.Session, f.Relay, f.PingMS = SessionID(d.id()), d.str(), d.u32()
}
func (f *GoAway) decode(d *decoder)   { f.Code, f.Msg = d.code(), d.str() }
func (f *Attach) decode(d *decoder)   { f.HC, f.Token = d.str(), d.str() }
func (f *Detach) decode(d *decoder)   { f.HC = d.str() }
func (f *Renew) decode(d *decoder)    { f.HC, f.Token = d.str(), d.str() }
func (f *Attached) decode(d *decoder) { f.HC, f.Code, f.Msg = d.str(), d.code(), d.str() }
func (f *Health) decode(d *decoder)   { f.HC, f.Code, f.Msg = d.str(), d.code(), d.str() }
func (f *Ping) decode(d *decoder)     { f.Nonce = d.u64() }
func (f *Pong) decode(d *decoder)     { f.Nonce = d.u64() }
func (f *Accept) decode(d *decoder) {
	f.ID, f.HC, f.Target, f.SenderKey, f.SenderAddr = d.id(), d.str(), d.str(), d.str(), d.str()
	f.Early = d.bytes()
}
func (f *Ack) decode(d *decoder)    { f.ID = d.id() }
func (f *Reject) decode(d *decoder) { f.ID, f.Code, f.Msg = d.id(), d.code(), d.str() }
func (f *Open) decode(d *decoder) {
	f.HC, f.Token, f.Target, f.Session, f.Early = d.str(), d.str(), d.str(), SessionID(d.id()), d.bytes()
}
func (f *Join) decode(d *decoder)     { f.ID, f.HC, f.Token = d.id(), d.str(), d.str() }
func (f *Park) decode(d *decoder)     { f.Session = SessionID(d.id()) }
func (f *Warm) decode(d *decoder)     { f.Session = SessionID(d.id()) }
func (f *Progress) decode(d *decoder) {}
func (f *Result) decode(d *decoder)   { f.Code, f.Msg = d.code(), d.str() }
func (f *Check) decode(d *decoder)    { f.HC, f.Token, f.Right = d.str(), d.str(), d.u8() }

func newFrame(t Type) Frame {
	switch t {
	case TypeHello:
		return new(Hello)
	case TypeWelcome:
		return new(Welcome)
	case TypeGoAway:
		return new(GoAway)
	case TypeAttach:
		return new(Attach)
	case TypeDetach:
		return new(Detach)
	case TypeRenew:
		return new(Renew)
	case TypeAttached:
		return new(Attached)
	case TypeHealth:
		return new(Health)
	case TypePing:
		return new(Ping)
	case TypePong:
		return new(Pong)
	case TypeAccept:
		return new(Accept)
	case TypeAck:
		return new(Ack)
	case TypeReject:
		return new(Reject)
	case TypeOpen:
		return new(Open)
	case TypeJoin:
		return new(Join)
	case TypePark:
		return new(Park)
	case TypeWarm:
		return new(Warm)
	case TypeProgress:
		return new(Progress)
	case TypeResult:
		return new(Result)
	case TypeCheck:
		return new(Check)
	case TypePeerHello:
		return new(PeerHello)
	case TypePeerChallenge:
		return new(PeerChallenge)
	case TypePeerAuth:
		return new(PeerAuth)
	case TypePeerOpen:
		return new(PeerOpen)
	case TypePeerPipe:
		return new(PeerPipe)
	}
	return nil
}

// Append appends f's encoding (header and payload) to b. Strings longer than
// MaxString are truncated so that every frame we send is one we would accept.
func Append(b []byte, f Frame) []byte {
	start := len(b)
	b = append(b, byte(f.Type()), 0, 0, 0, 0)
	b = f.appendPayload(b)
	binary.BigEndian.PutUint32(b[start+1:], uint32(len(b)-start-headerLen))
	return b
}

// Write writes f to w in a single Write call.
func Write(w io.Writer, f Frame) error {
	_, err := w.Write(Append(nil, f))
	if err != nil {
		return fmt.Errorf("write %s: %w", f.Type(), err)
	}
	return nil
}

// WritePreface writes the connection preface.
func WritePreface(w io.Writer) error {
	_, err := io.WriteString(w, Preface)
	return err
}

// ReadPreface reads exactly len(Preface) bytes and checks them.
func ReadPreface(r io.Reader) error {
	var b [len(Preface)]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("read preface: %w", err)
	}
	switch string(b[:]) {
	case Preface:
		return nil
	case PrefaceV1:
		return ErrOldVersion
	case MuxPreface:
		return ErrMux
	}
	return ErrBadPreface
}

// ReadPeerPreface reads a peer connection's preface.
func ReadPeerPreface(r io.Reader) error {
	var b [len(PeerPreface)]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("read preface: %w", err)
	}
	if string(b[:]) != PeerPreface {
		return ErrBadPreface
	}
	return nil
}

// Read reads one frame. It reads exactly the frame's bytes and nothing more,
// so bytes that follow stay unread in r.
func Read(r io.Reader) (Frame, error) {
	var h [headerLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > MaxPayload {
		return nil, fmt.Errorf("%w: %d bytes (max %d)", ErrTooLarge, n, MaxPayload)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read %s payload: %w", Type(h[0]), err)
	}
	return Decode(Type(h[0]), payload)
}

// Decode parses the payload of a frame of type t.
func Decode(t Type, payload []byte) (Frame, error) {
	f := newFrame(t)
	if f == nil {
		return nil, fmt.Errorf("%w 0x%02x", ErrUnknown, uint8(t))
	}
	d := decoder{b: payload}
	f.decode(&d)
	if d.err != nil {
		return nil, fmt.Errorf("%w: %s: %s", ErrMalformed, t, d.err)
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: %s: %d trailing bytes", ErrMalformed, t, len(d.b))
	}
	return f, nil
}

// appendBytes appends a byte string, truncated to MaxEarly.
func appendBytes(b, v []byte) []byte {
	if len(v) > MaxEarly {
		v = v[:MaxEarly]
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

func appendStr(b []byte, s string) []byte {
	if len(s) > MaxString {
		s = s[:MaxString]
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// decoder consumes fields from a payload; the first error sticks and makes
// every later field read a zero value.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.err = errors.New("truncated")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string {
	l := d.take(2)
	if l == nil {
		return ""
	}
	n := int(binary.BigEndian.Uint16(l))
	if n > MaxString {
		d.err = fmt.Errorf("string of %d bytes (max %d)", n, MaxString)
		return ""
	}
	return string(d.take(n))
}

// bytes reads a byte string of at most MaxEarly bytes; an empty one is nil.
func (d *decoder) bytes() []byte {
	l := d.take(4)
	if l == nil {
		return nil
	}
	n := binary.BigEndian.Uint32(l)
	if n > MaxEarly {
		d.err = fmt.Errorf("byte string of %d bytes (max %d)", n, MaxEarly)
		return nil
	}
	if n == 0 {
		return nil
	}
	return d.take(int(n))
}

func (d *decoder) u8() uint8 {
	b := d.take(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (d *decoder) u32() uint32 {
	b := d.take(4)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (d *decoder) code() status.Code {
	b := d.take(1)
	if b == nil {
		return 0
	}
	c := status.Code(b[0])
	if !c.Valid() {
		d.err = fmt.Errorf("unknown code %d", b[0])
	}
	return c
}

func (d *decoder) u64() uint64 {
	b := d.take(8)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func (d *decoder) id() [16]byte {
	var id [16]byte
	copy(id[:], d.take(16))
	return id
}
