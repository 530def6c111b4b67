// Package rules loads, strictly decodes and validates hybrid's YAML config.
//
// One file may hold a log section and any of the relay, agent and proxy
// sections (see DESIGN.md for the contract). Parse and Load decode the file
// with their own strict walker over yaml.v3 nodes rather than through
// reflection, so that every problem is reported at once, each with its
// file:line and dotted field path: unknown keys (with a "did you mean"), wrong
// types (no weak typing: "80" is not a port, 1 is not a boolean), missing and
// invalid values, duplicates and conflicts. Secrets may be written as
// ${ENV_VAR} or read from a *_file; log.level and log.format may be
// overridden by HYBRID_LOG_LEVEL and HYBRID_LOG_FORMAT.
//
// A *Config returned by Parse or Load is complete (defaults applied, endpoints
// canonical, relative paths resolved, secrets expanded) and is an immutable
// snapshot: nothing in this package keeps or changes it after returning, and
// callers must treat it, its slices and its pointed-to sections as read-only so
// that it can be shared between goroutines and swapped atomically on reload.
package rules

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hybridconn/hybrid/internal/endpoint"
	"github.com/hybridconn/hybrid/internal/relayclient"
)

// EmbeddedFile is the File of a Config parsed from a built-in default rather
// than from a file: Parse(EmbeddedFile, data) resolves relative paths against
// the working directory.
const EmbeddedFile = "<embedded>"

// Defaults applied by Parse.
const (
	DefaultLevel  = "info" // log.level
	DefaultFormat = "text" // log.format

	DefaultListenControl = "127.0.0.1:5671" // relay.listen.control
	DefaultListenData    = "127.0.0.1:9352" // relay.listen.data
	DefaultListenHTTP    = "127.0.0.1:8080" // relay.listen.http

	DefaultControlPort = 5671 // relay endpoint control
	DefaultDataPort    = 9352 // relay endpoint data
	DefaultHTTPPort    = 443  // relay endpoint http

	DefaultTransport = TransportAuto // agent/proxy transport

	DefaultHostsRange = "127.77.0.0/16" // proxy.hosts.range; proxy.hosts.file: DefaultHostsFile()

	// DefaultLimitConnections caps the connections a relay holds open on
	// each of its listeners (relay.limits.connections).
	DefaultLimitConnections = 20000
	// DefaultLimitPerSource caps the connections one source address holds
	// on each relay listener (relay.limits.per_source).
	DefaultLimitPerSource = 2000
	// DefaultLimitPending caps the streams of one hybrid connection that
	// wait for their agent (relay.limits.pending).
	DefaultLimitPending = 1024
	// DefaultLimitPendingPerKey caps the waiting streams one sender key may
	// hold on a hybrid connection (relay.limits.pending_per_key).
	DefaultLimitPendingPerKey = 256
	// DefaultRotationGrace is how long a stream authenticated with a
	// rotated (replaced, not revoked) key value lives on unless its client
	// proves the new value (relay.rotation_grace).
	DefaultRotationGrace = 24 * time.Hour
	// DefaultJoinTimeout is relay.join_timeout.
	DefaultJoinTimeout = 2 * time.Second
	// DefaultPingInterval is relay.ping_interval.
	DefaultPingInterval = 5 * time.Second
	// DefaultDrainGrace is relay.drain_grace: database sessions outlive a
	// relay restart by this much.
	DefaultDrainGrace = 10 * time.Minute
	// DefaultPool is agent.pool and proxy.pool: connections kept ready at
	// each relay.
	DefaultPool = 4
	// MaxPool caps what a pool grows to under load.
	MaxPool = 64
	// DefaultHealthInterval and DefaultHealthTimeout are health_check's
	// defaults.
	DefaultHealthInterval = 2 * time.Second
	DefaultHealthTimeout  = 2 * time.Second
	// DefaultAgentMaxStreams caps an agent's streams: dials in flight plus
	// live streams (agent.max_streams).
	DefaultAgentMaxStreams = 1024
)

// Transports: the values of agent.transport and proxy.transport.
const (
	// TransportAuto probes the native control port and falls back to WebSocket.
	TransportAuto = "auto"
	// TransportTCP uses the native protocol only.
	TransportTCP = "tcp"
	// TransportWebSocket uses Azure's WebSocket protocol on the http port only.
	TransportWebSocket = "websocket"
)

// Rights: the values of a key's rights list.
const (
	RightListen = "listen" // may serve (listen on) a hybrid connection: agents
	RightSend   = "send"   // may open streams to a hybrid connection: proxies
	RightManage = "manage" // both listen and send
)

// Config is one parsed and validated config file. See the package doc: treat
// it as read-only.
type Config struct {
	// File is the path the config was loaded from, exactly as given to Load or
	// Parse, or EmbeddedFile for the built-in default. Used in messages.
	File string
	// Log is always set; its fields carry their defaults when absent.
	Log Log
	// Relay is nil when the file has no relay section.
	Relay *Relay
	// Agent is nil when the file has no agent section.
	Agent *Agent
	// Proxy is nil when the file has no proxy section.
	Proxy *Proxy
	// Warnings are things valid but likely unintended (a published endpoint
	// outside agent.allow), as "file:line: field: message"; nil when none.
	// `hybrid check` prints them and the roles log them.
	Warnings Errors

	lines map[string]int // field path -> line; read-only after Parse
}

// Line returns the line of field (a path as in Error.Field, such as
// "proxy.connections[2].listen") in File, or of its nearest ancestor that has
// one (a field left to its default has no line of its own), or 0. It lets
// callers report runtime problems, such as a listener that cannot bind, at the
// line that asked for it.
func (c *Config) Line(field string) int {
	if c == nil {
		return 0
	}
	return lineOf(c.lines, field)
}

// Log is the log section.
type Log struct {
	// Level is one of trace, debug, info, warn, error (lower case; "warning"
	// is rejected). Default "info". HYBRID_LOG_LEVEL overrides the file.
	Level string
	// Format is text or json. Default "text". HYBRID_LOG_FORMAT overrides the
	// file.
	Format string
}

// Relay is the relay section.
type Relay struct {
	// Namespace is the host inside token resource URIs (sb://<namespace>/<hc>),
	// canonical (lower case, no trailing dot). Default: the host of
	// Listen.Control; it must be given when that host is empty or unspecified
	// (0.0.0.0, ::), which names no host.
	Namespace string
	// Listen holds the relay's three listen addresses.
	Listen RelayListen
	// TLS is nil when the tls mapping is absent (plain TCP).
	TLS *TLS
	// Insecure allows non-loopback listen addresses without TLS.
	Insecure bool
	// Keys are namespace rules (yaml: keys), covering every connection. May be
	// empty.
	Keys []Key
	// Connections are the hybrid connections the relay serves. May be empty
	// when Keys is not.
	Connections []RelayConnection
	// Limits bound what any party can make the relay hold.
	Limits RelayLimits
	// Admin is the listen address of a separate status/metrics listener
	// (canonical host:port); "" means none. /status and /metrics are then
	// served there to anyone who can reach it (bind it to loopback or a
	// private network).
	Admin string
	// AdminToken (yaml: admin_token, ${ENV} or admin_token_file) lets a
	// request carrying "Authorization: Bearer <token>" read /status and
	// /metrics on the public http listener; "" means only requests from
	// loopback may.
	AdminToken string
	// RotationGrace is how long a stream or attachment authenticated with
	// a key value that was replaced (rotated) lives on unless its client
	// proves the rule's current value; DefaultRotationGrace when absent.
	// A value removed from a rule with revoke: true, or a rule removed,
	// ends its streams at once instead.
	RotationGrace time.Duration
	// JoinTimeout bounds the wait for an agent's first answer to a stream
	// (yaml: join_timeout); past it the agent is out of rotation and the
	// stream goes to the next agent. Default DefaultJoinTimeout.
	JoinTimeout time.Duration
	// PingInterval is how often the relay pings every control channel
	// (yaml: ping_interval); two silent intervals end a channel. Default
	// DefaultPingInterval.
	PingInterval time.Duration
	// DrainGrace is how long live streams may go on after SIGTERM (yaml:
	// drain_grace); 0 ends them at once. Default DefaultDrainGrace.
	DrainGrace time.Duration
	// ReusePort lets a new relay process bind the same ports while this
	// one drains (SO_REUSEPORT, Linux; yaml: reuse_port). Default true.
	ReusePort bool
	// Fleet joins this relay to a fleet sharing a directory in Redis; nil
	// means a lone relay.
	Fleet *Fleet
	// PublicURL (yaml: public_url) is how clients reach the http listener
	// from outside, "https://host[:port]" or "http://host[:port]", when
	// something in front (a TLS-terminating load balancer) changes scheme,
	// host or port: rendezvous addresses are built on it. "" means: the
	// listener's own Host header, wss when the relay has TLS or
	// X-Forwarded-Proto says https.
	PublicURL string
	// MaxListeners (yaml: max_listeners) caps the listeners (agents'
	// control channels) of one hybrid connection. Default
	// DefaultMaxListeners (Azure's limit); 0 means no cap.
	MaxListeners int
	// MaxHTTPBody (yaml: max_http_body: bytes, or a size such as 64MiB)
	// caps each request and each response body in HTTP mode. Default
	// DefaultMaxHTTPBody.
	MaxHTTPBody int64
}

// Fleet is relay.fleet: relays behind one address that share a directory
// in Redis and carry streams between them.
type Fleet struct {
	// Redis is the directory: redis://, rediss://, redis-sentinel://
	// [user:pass@]host:port,host:port/master[?db=N] or redis-cluster://
	// host:port,host:port (yaml: redis, may be ${ENV}). Required.
	Redis string
	// ID names this relay in the fleet: 1..64 of A-Z a-z 0-9 . _ -,
	// unique in the fleet. Default: the host name.
	ID string
	// Listen is the relay-to-relay listen address (canonical host:port).
	// Required.
	Listen string
	// Advertise is how other relays reach this one (host:port). Default:
	// Listen, which must then name a host (not 0.0.0.0 or ::).
	Advertise string
	// TLS authenticates peers by mutual TLS with a fleet CA (yaml: tls:
	// {cert, key, ca}); Secret (yaml: secret, ${ENV} or secret_file) by a
	// shared secret (an HMAC over each peer connection's challenge). One of
	// them is required; with both, peers need both.
	TLS    *FleetTLS
	Secret string
}

// FleetTLS is the fleet's mutual TLS: this relay's certificate and key,
// and the CA every peer's certificate must chain to. Paths are absolute.
type FleetTLS struct {
	Cert, Key, CA string
}

// RelayLimits bound the work one party can make the relay do (yaml: limits).
// Every field is positive; absent ones take their defaults.
type RelayLimits struct {
	// Connections caps the connections held open on each listener
	// (control, data, http). Default DefaultLimitConnections.
	Connections int
	// PerSource caps the connections one source IP holds on each
	// listener (yaml: per_source). Default DefaultLimitPerSource. Behind a
	// load balancer or NAT every client shares one source: raise it there.
	PerSource int
	// Pending caps the streams of one hybrid connection waiting for an
	// agent; beyond it opens are answered busy. Default DefaultLimitPending.
	Pending int
	// PendingPerKey caps the waiting streams of one sender key on one
	// hybrid connection (yaml: pending_per_key). Default
	// DefaultLimitPendingPerKey.
	PendingPerKey int
}

// RelayListen holds the relay's listen addresses, each canonical host:port
// text where host is empty (all interfaces), an IP address or localhost, and
// port is 0..65535 (0 picks a free port). No two of them conflict.
type RelayListen struct {
	// Control is the native control channel (yaml: control). Default
	// DefaultListenControl.
	Control string
	// Data is the native data channel (yaml: data). Default DefaultListenData.
	Data string
	// HTTP is the WebSocket fallback, /healthz, /metrics and status page
	// (yaml: http). Default DefaultListenHTTP.
	HTTP string
}

// TLS is a certificate and private key pair, both PEM files. Both are required
// when the tls mapping is present; relative paths are resolved against the
// config file's directory, so these are absolute. Existence is not checked
// here: the relay loads (and reloads) them.
type TLS struct {
	Cert string // yaml: cert
	Key  string // yaml: key
}

// Key is an authorisation rule: a name, rights and two values so that one can
// be rotated while clients use the other.
type Key struct {
	// Name is the key (rule) name: 1..256 of A-Z a-z 0-9 . _ -, unique within
	// its list.
	Name string
	// Rights holds at least one of RightListen, RightSend, RightManage, no
	// duplicates. Use Allows rather than comparing.
	Rights []string
	// Primary is the primary value (yaml: primary, ${ENV} or primary_file);
	// required, at least 16 characters.
	Primary string
	// Secondary is the secondary value (yaml: secondary, ${ENV} or
	// secondary_file); "" when absent, otherwise at least 16 characters.
	Secondary string
	// Revoke (yaml: revoke) makes values removed from this rule by a reload
	// a revocation: every stream and attachment they authenticated ends at
	// once. Without it a replaced value is a rotation (see
	// Relay.RotationGrace).
	Revoke bool
}

// Allows reports whether k grants right: RightManage grants RightListen and
// RightSend too.
func (k Key) Allows(right string) bool {
	return slices.Contains(k.Rights, right) ||
		(right == RightListen || right == RightSend) && slices.Contains(k.Rights, RightManage)
}

// RelayConnection is a hybrid connection served by the relay.
type RelayConnection struct {
	// Name is the hybrid connection's name: 1..128 characters, segments of
	// A-Z a-z 0-9 . _ - separated by single slashes (no leading or trailing
	// slash, no "." or ".." segment). Names are unique case-insensitively.
	Name string
	// Keys are the connection's own rules; may be empty when Relay.Keys is not.
	Keys []Key
}

// RelayEndpoint is one relay as seen by an agent or proxy: an entry of
// agent.relays or proxy.relay, written either as a host alone or as a mapping
// {host, control, data, http, tls, namespace}.
type RelayEndpoint struct {
	// Host is a DNS name or IP address, canonical (lower case, no trailing
	// dot, canonical IP text without brackets). Required.
	Host string
	// Control is the native control port. Default DefaultControlPort.
	Control int
	// Data is the native data port. Default DefaultDataPort.
	Data int
	// HTTP is the HTTP(S)/WebSocket port. Default DefaultHTTPPort.
	HTTP int
	// TLS says whether to use TLS. Default true, except for loopback hosts
	// (127.0.0.0/8, ::1, localhost), where it defaults to false.
	TLS bool
	// Namespace is the host put in the token URIs this client mints,
	// canonical. Default: Host.
	Namespace string
	// RendezvousHosts (yaml: rendezvous_hosts) are the hosts besides Host
	// that a WebSocket accept notice may send the agent to: ".example.com"
	// matches every name ending so, "example.com" only itself; canonical.
	// Default: [".servicebus.windows.net"] when Host is a
	// *.servicebus.windows.net namespace (Azure's rendezvous gateways),
	// else none.
	RendezvousHosts []string
}

// AzureRendezvousSuffix is the default rendezvous_hosts entry for Azure
// Relay namespaces, whose rendezvous gateways are g<n>-prod-<region>-...
// hosts of the same domain.
const AzureRendezvousSuffix = ".servicebus.windows.net"

// ClientEndpoint returns e as the relay client takes it.
func (e RelayEndpoint) ClientEndpoint() relayclient.Endpoint {
	return relayclient.Endpoint{Host: e.Host, Control: e.Control, Data: e.Data, HTTP: e.HTTP, TLS: e.TLS,
		Namespace: e.Namespace, RendezvousHosts: slices.Clone(e.RendezvousHosts)}
}

// Agent is the agent section.
type Agent struct {
	// Relays lists every relay of the fleet (yaml: relays); at least one, no
	// two with the same host and control port.
	Relays []RelayEndpoint
	// Transport is TransportAuto, TransportTCP or TransportWebSocket. Default
	// TransportAuto.
	Transport string
	// Allow is the administrator's cap on what may be published: canonical
	// endpoints. nil means no cap; a non-nil empty list allows nothing. Every
	// connection's Endpoint is in it when it is non-nil.
	Allow []string
	// Audit is the path of the JSON-lines audit log, absolute; "" means none.
	Audit string
	// Admin is the listen address of the status/metrics endpoint (canonical
	// host:port as in RelayListen); "" means none.
	Admin string
	// ProxyURL is an HTTP CONNECT proxy URL (yaml: proxy_url, http or https);
	// "" means use HTTPS_PROXY from the environment, if set.
	ProxyURL string
	// Connections are the hybrid connections this agent serves.
	Connections []AgentConnection
	// MaxStreams caps the agent's streams, dials in flight plus live ones
	// (yaml: max_streams); beyond it new streams are refused busy at once.
	// Default DefaultAgentMaxStreams.
	MaxStreams int
	// ID names the agent to relays (status, logs): 1..128 of A-Z a-z 0-9
	// . _ -. Default: the host name.
	ID string
	// Pool is how many connections the agent keeps parked at each relay
	// for the next streams (yaml: pool); it grows under load up to
	// MaxPool. 0 turns pre-opened connections off. Default DefaultPool.
	Pool int
}

// HealthCheck is how an agent checks a published endpoint while its dials
// fail (yaml: health_check): a TCP connect every Interval, each bounded by
// Timeout.
type HealthCheck struct {
	Interval time.Duration
	Timeout  time.Duration
}

// AgentConnection is a hybrid connection published by the agent.
type AgentConnection struct {
	// Name is the hybrid connection's name (rules as RelayConnection.Name),
	// unique within agent.connections.
	Name string
	// Endpoint is the one published host:port, canonical (see
	// internal/endpoint). Required.
	Endpoint string
	// KeyName is the key (rule) name (yaml: key_name). Required.
	KeyName string
	// Key is the key value (yaml: key, ${ENV} or key_file). Required, at
	// least 16 characters.
	Key string
	// MaxStreams caps this connection's streams (yaml: max_streams); 0
	// means only the agent's cap applies.
	MaxStreams int
	// HealthCheck, when set, checks the endpoint all the time rather than
	// only after a failed dial (yaml: health_check: {interval, timeout}).
	HealthCheck *HealthCheck
	// HTTP is "" for a TCP endpoint. For an HTTP one (yaml: endpoint:
	// http://host:port/base or https://...) it is that base URL,
	// normalised (scheme and host lower case, explicit port, no trailing
	// slash), and Endpoint is its host:port: HTTP-mode requests go to this
	// base with their path appended, streams to Endpoint.
	HTTP string
}

// Proxy is the proxy section.
type Proxy struct {
	// Relays lists the relays (yaml: relay — one entry or a list); at least
	// one, no two with the same host and control port.
	Relays []RelayEndpoint
	// Transport is TransportAuto, TransportTCP or TransportWebSocket. Default
	// TransportAuto.
	Transport string
	// Socks is the SOCKS5 listen address (canonical host:port); "" means no
	// SOCKS listener.
	Socks string
	// SocksAuth lists the username/password pairs (RFC 1929) of which a
	// SOCKS client must present one (yaml: socks_auth — one mapping or a
	// non-empty list); nil means no authentication. Only set when Socks is.
	SocksAuth []SocksUser
	// Hosts is the transparent hosts mode (yaml: hosts); nil means off.
	Hosts *Hosts
	// Admin is the listen address of the status/metrics endpoint; "" means
	// none.
	Admin string
	// ProxyURL is an HTTP CONNECT proxy URL (yaml: proxy_url); "" means use
	// HTTPS_PROXY from the environment, if set.
	ProxyURL string
	// Connections are the hybrid connections this proxy uses.
	Connections []ProxyConnection
	// RelayPolicy is RelayPolicySpread (new streams spread over the
	// healthy relays) or RelayPolicyPriority (the first healthy relay of
	// the list). Default RelayPolicySpread.
	RelayPolicy string
	// Pool is how many pre-opened connections the proxy keeps at each
	// relay (yaml: pool); 0 turns them off. Default DefaultPool.
	Pool int
}

// Relay policies: the values of proxy.relay_policy.
const (
	RelayPolicySpread   = "spread"
	RelayPolicyPriority = "priority"
)

// SocksUser is one SOCKS5 username/password pair of proxy.socks_auth.
type SocksUser struct {
	// Username is 1..255 of A-Z a-z 0-9 . _ -, unique within socks_auth.
	Username string
	// Password (yaml: password, ${ENV} or password_file) is 16..255 bytes.
	Password string
}

// Hosts is the transparent hosts mode: for every connection whose endpoint
// is a host name (see Maps), the proxy listens on an address of Range derived
// from the name, on the endpoint's own port, and maps the name to that
// address in a marked block of File, so that apps reach the endpoint by its
// on-premises name, unchanged.
type Hosts struct {
	// File is the hosts file holding the block (yaml: file), absolute.
	// Default DefaultHostsFile().
	File string
	// Range is the IPv4 prefix addresses are taken from (yaml: range):
	// masked, inside 127.0.0.0/8, /9 to /30, never containing 127.0.0.1.
	// Default DefaultHostsRange. No other proxy listen address lies inside
	// it.
	Range netip.Prefix
}

// Maps reports whether hosts mode maps ep (a canonical endpoint) and, if so,
// returns its host name and port: every endpoint whose host is a name, except
// localhost and *.localhost, which name the app's own machine and must never
// be redirected.
func (h *Hosts) Maps(ep string) (name string, port uint16, ok bool) {
	e, err := endpoint.Parse(ep)
	if err != nil || e.IsIP() || e.Host == "localhost" || strings.HasSuffix(e.Host, ".localhost") {
		return "", 0, false
	}
	return e.Host, e.Port, true
}

// ProxyConnection is a hybrid connection used by the proxy. At least one of
// Endpoint and Listen is set.
type ProxyConnection struct {
	// Name is the hybrid connection's name (rules as RelayConnection.Name),
	// unique within proxy.connections.
	Name string
	// Endpoint is the canonical host:port an app's connection string names,
	// used to match SOCKS targets; "" when absent. Unique within
	// proxy.connections.
	Endpoint string
	// Listen is the local port-forward listen address (canonical host:port);
	// "" when absent. No two proxy listeners (socks, admin, listen) conflict.
	Listen string
	// KeyName is the key (rule) name (yaml: key_name). Required.
	KeyName string
	// Key is the key value (yaml: key, ${ENV} or key_file). Required, at
	// least 16 characters.
	Key string
}
