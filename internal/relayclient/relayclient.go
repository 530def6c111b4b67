// Package relayclient is how agents and proxies talk to a relay. Both see
// one interface, Client; this package implements it over hybrid's native
// binary protocol (TCP, optionally TLS) and over Azure Relay's Hybrid
// Connections WebSocket protocol (websocket.go).
package relayclient

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wire"
)

// Endpoint is one relay as a client reaches it. The roles fill it from
// their configuration (rules.RelayEndpoint); this package knows no config
// file.
type Endpoint struct {
	// Host is the relay's DNS name or IP address (canonical: lower case, no
	// trailing dot). TLS server names are checked against it.
	Host string
	// Control, Data and HTTP are the native control port, the native data
	// port and the HTTP(S)/WebSocket port.
	Control, Data, HTTP int
	// TLS says whether every connection to the relay uses TLS.
	TLS bool
	// Namespace is the host put in the token URIs the client mints.
	Namespace string
	// RendezvousHosts are the host names, besides Host, that an accept
	// notice's rendezvous address may name (WebSocket transport): an entry
	// starting with "." matches any name ending with it, any other entry
	// only itself. Azure Relay hands out rendezvous addresses on gateway
	// hosts (g<n>-prod-...servicebus.windows.net); hybrid's relay only ever
	// names itself.
	RendezvousHosts []string
}

// Transports: the values WithTransport takes.
const (
	// TransportTCP is hybrid's native binary protocol on the control and
	// data ports.
	TransportTCP = "tcp"
	// TransportWebSocket is Azure Relay's Hybrid Connections protocol on
	// the HTTP(S) port.
	TransportWebSocket = "websocket"
	// TransportAuto is native when the control port answers, WebSocket
	// otherwise.
	TransportAuto = "auto"
)

// StreamID names a stream at the relay.
type StreamID = wire.StreamID

// Accept is a relay's request to serve a stream.
type Accept = wire.Accept

// Client is one relay as agents and proxies see it.
type Client interface {
	// Open opens a stream on hybrid connection hc as a sender, without a
	// session. The returned connection carries raw bytes. A refusal is a
	// *status.Error.
	Open(ctx context.Context, hc, token, target string) (net.Conn, error)
	// OpenStream opens a stream as a sender with everything a proxy uses:
	// early data, its session, a warm connection, a short first-answer
	// timeout.
	OpenStream(ctx context.Context, req OpenRequest) (net.Conn, error)
	// Listen opens a control channel as an agent named name.
	Listen(ctx context.Context, name, version string) (Control, error)
	// Connect opens a control channel as a sender (a proxy) named name: it
	// proves the proxy's keys, so that its streams survive a key rotation,
	// and carries the relay's GOAWAY. ErrUnsupported on WebSocket.
	Connect(ctx context.Context, name, version string) (Control, error)
	// Check asks whether token grants right (sas.Listen or sas.Send) on hc,
	// opening nothing. A refusal is a *status.Error.
	Check(ctx context.Context, hc, token string, right sas.Rights) error
	// Probe checks that the relay answers, opening nothing: its native
	// control port speaks the protocol, or (WebSocket) its http port
	// answers /healthz.
	Probe(ctx context.Context) error
	// Transport names the protocol in use now: TransportTCP or
	// TransportWebSocket (auto mode reports its current choice).
	Transport() string
	// String names the relay for logs.
	String() string
}

// ErrUnsupported is returned for what a transport cannot do (pre-opened
// connections and sender sessions on WebSocket).
var ErrUnsupported = errors.New("not supported on this transport")

// OpenRequest is a sender's stream request (see Client.OpenStream).
type OpenRequest struct {
	HC, Token, Target string
	// Early is the app's first bytes, at most wire.MaxEarly: they travel
	// with the OPEN and need no round trip of their own.
	Early []byte
	// Session links the stream to the sender's control channel (Control.Session).
	Session SessionID
	// Warm is a pre-opened connection to use (Control.Warm); nil dials.
	Warm *Warm
	// FirstAnswer bounds the wait for the relay's first word (a PROGRESS
	// or the RESULT); 0 means OpenTimeout. A PROGRESS extends the wait to
	// OpenTimeout.
	FirstAnswer time.Duration
}

// SessionID names a control channel at the relay.
type SessionID = wire.SessionID

// Control is a control channel to one relay: an agent's, or a sender's.
type Control interface {
	// Attach starts listening for hc (agent), or proves a send key for it
	// (sender); it waits for the relay's verdict.
	Attach(ctx context.Context, hc, token string) error
	// Renew replaces hc's token.
	Renew(ctx context.Context, hc, token string) error
	// Detach stops listening for hc.
	Detach(hc string) error
	// Events delivers stream requests, detach notices, dropped notices and
	// GOAWAY. It is closed when the channel ends.
	Events() <-chan Event
	// Reject refuses a stream request.
	Reject(id StreamID, code status.Code, msg string) error
	// Ack tells the relay the agent is alive and dialling for stream id.
	Ack(id StreamID) error
	// Health reports whether the agent reaches hc's endpoint (code OK or
	// status.Unreachable).
	Health(hc string, code status.Code, msg string) error
	// Join opens the agent's side of an accepted stream.
	Join(ctx context.Context, a *Accept, token string) (net.Conn, error)
	// Park opens a data connection parked at the relay for this agent's
	// next stream. ErrUnsupported on WebSocket.
	Park(ctx context.Context) (*Parked, error)
	// Warm opens a data connection for a later OpenStream of this sender.
	// ErrUnsupported on WebSocket.
	Warm(ctx context.Context) (*Warm, error)
	// Session returns the relay's id for the channel (zero on WebSocket).
	Session() SessionID
	// Transport names the protocol of the channel.
	Transport() string
	// Done is closed when the channel has ended; Err then says why.
	Done() <-chan struct{}
	// Err returns why the channel ended, nil while it is up.
	Err() error
	// Close ends the channel.
	Close() error
}

// Event is one notice from the relay: exactly one field is set.
type Event struct {
	Accept   *Accept
	Detached *Detached
	Dropped  *Dropped
	// GoAway says the relay is stopping: open a new channel now (it may
	// land on the relay that takes over, or another of the fleet); this
	// one keeps working until the relay closes it.
	GoAway *status.Error
	// Request is an HTTP-mode request (WebSocket transport only; see
	// httpreq.go).
	Request *Request
}

// Dropped is an accept notice the client refused to act on, because the
// relay told it to connect somewhere it must not (a WebSocket rendezvous
// address off the relay). Nothing was dialled, not even to reject it.
type Dropped struct {
	Accept  *Accept // what the notice asked for
	Address string  // the address it named, clipped for logs
	Reason  string  // why it was refused
}

// Detached says the relay ended an attachment (revoked key, expired token).
type Detached struct {
	HC  string
	Err error
}

// New returns a client for relay endpoint ep: native protocol by default
// (WithTransport("tcp")), Azure's WebSocket protocol on ep.HTTP with
// WithTransport("websocket"), or with WithTransport("auto") native when the
// control port answers a short probe and WebSocket otherwise.
func New(ep Endpoint, opts ...Option) Client {
	o := options{transport: TransportTCP}
	for _, f := range opts {
		f(&o)
	}
	if o.log == nil {
		o.log = hclog.NewNullLogger()
	}
	if o.probeTimeout == 0 {
		o.probeTimeout = ProbeTimeout
	}
	n := newNative(ep, o)
	switch o.transport {
	case TransportWebSocket:
		return newWS(n)
	case TransportAuto:
		return &auto{native: n, ws: newWS(n), log: o.log, probeTimeout: o.probeTimeout}
	}
	return n
}

type options struct {
	tls          *tls.Config
	proxyURL     string
	transport    string
	log          hclog.Logger
	probeTimeout time.Duration
	noMux        bool                                                              // WithoutMux
	dial         func(ctx context.Context, network, addr string) (net.Conn, error) // WithDialer
}

// WithTransport picks the protocol: TransportTCP (the default),
// TransportWebSocket or TransportAuto.
func WithTransport(t string) Option {
	return func(o *options) {
		if t != "" {
			o.transport = t
		}
	}
}

// WithTLSConfig sets the TLS configuration used when the endpoint has TLS
// (for private CAs and tests). Its ServerName defaults to the endpoint host.
func WithTLSConfig(c *tls.Config) Option { return func(o *options) { o.tls = c } }

// WithoutMux makes a TLS client open a TLS connection per data
// connection instead of multiplexing them on one (for comparisons and
// tests).
func WithoutMux() Option { return func(o *options) { o.noMux = true } }

// WithLogger gives the client a logger (auto mode logs its choice).
func WithLogger(l hclog.Logger) Option { return func(o *options) { o.log = l } }

// WithProbeTimeout sets how long auto mode waits for the native control
// port before it falls back to WebSocket (default ProbeTimeout).
func WithProbeTimeout(d time.Duration) Option { return func(o *options) { o.probeTimeout = d } }
