// Package relay is the public rendezvous: agents and senders both dial out
// to it; it authenticates them with SAS tokens, pairs each sender's stream
// with a listening agent and then only moves bytes.
//
// The Core (core.go) holds the semantics and knows no wire format; front
// doors translate protocols into it: native.go for hybrid's binary protocol
// on the control and data ports, websocket.go for Azure Relay's Hybrid
// Connections protocol on the http port (under /$hc/).
package relay

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/admin"
	"github.com/hybridconn/hybrid/internal/connlimit"
	"github.com/hybridconn/hybrid/internal/safefile"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/internal/wire"
	"github.com/hybridconn/hybrid/rules"
)

// Bounds of the http listener.
const (
	httpReadTimeout = 2 * time.Minute
	httpIdleTimeout = 90 * time.Second
	maxHeaderBytes  = 64 << 10
)

// maxPEM bounds a certificate chain or key file.
const maxPEM = 1 << 20

// HandoverWait is how long a stopping relay keeps its listening sockets
// (with reuse_port) waiting for a new process to bind the same ports, so
// that no connection is refused during a restart.
const HandoverWait = 5 * time.Second

// sessionSettle is how long a stopping relay keeps its control channels
// after closing its listeners: clients told to go away have connected to
// the successor by then, and streams landing here meanwhile still pair.
const sessionSettle = time.Second

// Server runs a relay section: its listeners, front doors and core.
type Server struct {
	log   hclog.Logger
	cfg   atomic.Pointer[rules.Relay]
	core  *Core
	door  *nativeDoor
	ws    *wsDoor
	tls   *tls.Config // nil without TLS; its certificate is swapped on reload
	cert  atomic.Pointer[tls.Certificate]
	admin *admin.Admin // set by Register: served on the http listener
	// Grace, when positive, overrides relay.drain_grace: how long live
	// streams may go on after a stop is asked for.
	Grace time.Duration
	// Handover, when positive, overrides HandoverWait.
	Handover time.Duration

	mu      sync.Mutex
	limited map[string]*connlimit.Listener // by listener name, once serving
	inject  *injectListener                // HTTP connections handed over by the fleet
}

// New validates cfg into a server. It does not listen yet.
func New(cfg *rules.Relay, log hclog.Logger) (*Server, error) {
	auth, err := NewAuth(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{log: log, limited: map[string]*connlimit.Listener{}}
	s.cfg.Store(cfg)
	s.core = NewCore(log, auth, coreConfig(cfg))
	s.door = newNativeDoor(s.core, log)
	s.ws = newWSDoor(s.core, log, cfg)
	s.core.SetMaxListeners(cfg.MaxListeners)
	if cfg.TLS != nil {
		if err := s.loadCert(cfg.TLS); err != nil {
			return nil, err
		}
		s.tls = &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				return s.cert.Load(), nil
			},
			// Full-size records from the first byte: a multiplexed
			// connection is long-lived and bursty, and crypto/tls would
			// start every burst after a second's pause with small records.
			DynamicRecordSizingDisabled: true,
		}
	}
	return s, nil
}

// ReloadCertificate re-reads the TLS certificate and key files named in the
// current configuration (for SIGHUP: renewed files under the same names do
// not change the config). Without TLS it does nothing.
func (s *Server) ReloadCertificate() error {
	cfg := s.cfg.Load()
	if cfg.TLS == nil || s.tls == nil {
		return nil
	}
	if err := s.loadCert(cfg.TLS); err != nil {
		return err
	}
	s.log.Info("TLS certificate reloaded", "cert", cfg.TLS.Cert)
	return nil
}

func (s *Server) loadCert(t *rules.TLS) error {
	certPEM, err := safefile.Read(t.Cert, maxPEM)
	if err != nil {
		return fmt.Errorf("relay tls: %w", err)
	}
	keyPEM, err := safefile.Read(t.Key, maxPEM)
	if err != nil {
		return fmt.Errorf("relay tls: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("relay tls: %w", err)
	}
	s.cert.Store(&cert)
	return nil
}

// Apply replaces the relay's rules while it runs: connections and keys
// added or removed take effect for new sessions and streams at once, and
// every session and stream that authenticated with a removed key, key value
// or connection ends immediately. TLS certificates are reloaded. Listen
// addresses and turning TLS on or off need a restart; such changes are
// refused so the running relay stays as it is.
func (s *Server) Apply(cfg *rules.Relay) error {
	old := s.cfg.Load()
	if cfg.Listen != old.Listen {
		return fmt.Errorf("relay: listen addresses changed (%+v → %+v): restart the relay to apply", old.Listen, cfg.Listen)
	}
	if cfg.Admin != old.Admin {
		return fmt.Errorf("relay: admin listener changed (%q → %q): restart the relay to apply", old.Admin, cfg.Admin)
	}
	if !reflect.DeepEqual(cfg.Fleet, old.Fleet) {
		// Keys, connections and limits must still apply (a revocation
		// cannot wait for a restart): only the fleet part waits.
		s.log.Warn("relay.fleet changed: fleet settings apply at the next restart; the rest of this reload applies")
		next := *cfg
		next.Fleet = old.Fleet
		cfg = &next
	}
	if (cfg.TLS == nil) != (old.TLS == nil) {
		return errors.New("relay: tls turned on or off: restart the relay to apply")
	}
	auth, err := NewAuth(cfg)
	if err != nil {
		return err
	}
	if cfg.TLS != nil {
		if err := s.loadCert(cfg.TLS); err != nil {
			return err
		}
	}
	s.cfg.Store(cfg)
	s.core.SetConfig(coreConfig(cfg))
	s.core.SetAuth(auth)
	s.mu.Lock()
	for _, cl := range s.limited {
		cl.SetLimits(connlimit.Limits{Total: cfg.Limits.Connections, PerSource: cfg.Limits.PerSource})
	}
	s.mu.Unlock()
	s.ws.set.Store(settingsOf(cfg))
	s.core.SetMaxListeners(cfg.MaxListeners)
	return nil
}

// coreConfig takes the core's tunables from the relay section.
func coreConfig(cfg *rules.Relay) Config {
	id, _ := os.Hostname()
	if cfg.Fleet != nil && cfg.Fleet.ID != "" {
		id = cfg.Fleet.ID // the name the fleet knows this relay by
	}
	grace := cfg.RotationGrace
	if grace == 0 {
		grace = -1 // rotation_grace: 0 asks for none; the core's zero means its default
	}
	return Config{JoinTimeout: cfg.JoinTimeout, PingInterval: cfg.PingInterval, RotationGrace: grace,
		Pending: cfg.Limits.Pending, PendingPerKey: cfg.Limits.PendingPerKey, RelayID: id}
}

// awaitSuccessor waits, for at most the handover time, until another
// process listens on the relay's control port (a new relay binding it with
// SO_REUSEPORT), so that closing this one's sockets refuses no one. A relay
// with no client attached has no one to hand over to and stops at once.
func (s *Server) awaitSuccessor(l *Listeners) {
	if !handover {
		return // no successor can bind the ports while they are open
	}
	wait := HandoverWait
	if s.Handover > 0 {
		wait = s.Handover
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if successorListening(l.Control.Addr()) {
			s.log.Info("a new relay listens on the same ports; handing over")
			return
		}
		if s.core.sessionCount() == 0 {
			return // nobody attached: nobody to hand over to
		}
		// Until it hands over, new connections are shared between it and
		// the new process: look often.
		time.Sleep(10 * time.Millisecond)
	}
	s.log.Info("no new relay took over the ports", "waited", wait)
}

// TLSConfig returns the relay's TLS server configuration, nil without TLS.
func (s *Server) TLSConfig() *tls.Config { return s.tls }

// SetFleet joins the relay to a fleet (relay/fleet), with prefix for the
// ids it makes. Call it before Serve.
func (s *Server) SetFleet(f Fleet, prefix [4]byte) { s.core.SetFleet(f, prefix) }

// ServePeerOpen serves a stream another relay of the fleet authorised and
// carried here on conn (after its PEEROPEN): paired with a local agent,
// then copied; conn is the core's from here.
func (s *Server) ServePeerOpen(ctx context.Context, conn net.Conn, f *wire.PeerOpen) {
	var exp time.Time
	if f.Expiry > 0 {
		exp = time.Unix(int64(f.Expiry), 0)
	}
	remote := conn.RemoteAddr().String()
	var headers map[string]string
	if f.Headers != "" {
		json.Unmarshal([]byte(f.Headers), &headers)
	}
	var az *AzureOpen
	if f.Azure {
		az = &AzureOpen{Tracking: f.Tracking, Suffix: f.Suffix, Query: f.Query}
	}
	pr, err := s.core.OpenForwarded(ctx, RemoteOpen{HC: f.HC, Target: f.Target, SenderAddr: f.SenderAddr,
		Headers: headers, Azure: az,
		Grant: RemoteGrant(f.HC, f.SenderKey, f.Value, exp), Early: f.Early, Session: SessionID(f.Session),
		Progress: func() { writeFrame(conn, &wire.Progress{}) }}, remote)
	if err != nil {
		s.log.Warn("forwarded stream refused", "hc", f.HC, "from_relay", f.SenderRelay, "sender", f.SenderAddr, "error", err)
		s.door.refuse(conn, "", err)
		return
	}
	s.core.Splice(pr, Peer{Conn: conn, Addr: remote, Ready: func() error { return writeFrame(conn, &wire.Result{}) }})
}

// ServeDataConn serves a data-port connection another relay of the fleet
// handed over whole (a join or park for this relay), as if it had landed
// here.
func (s *Server) ServeDataConn(ctx context.Context, conn net.Conn) {
	s.door.track(conn, true)
	s.door.serveData(ctx, conn)
}

// ServeHTTPConn serves an HTTP connection another relay of the fleet
// handed over whole (a WebSocket rendezvous for this relay). It returns at
// once; false when the relay is not serving.
func (s *Server) ServeHTTPConn(conn net.Conn) bool {
	s.mu.Lock()
	in := s.inject
	s.mu.Unlock()
	return in != nil && in.give(conn)
}

// Core returns the server's core.
func (s *Server) Core() *Core { return s.core }

// Listeners are the relay's listening sockets. Admin is optional: the
// separate status/metrics listener.
type Listeners struct {
	Control, Data, HTTP net.Listener
	Admin               net.Listener
}

// Listen opens the listeners named in the configuration.
func (s *Server) Listen() (*Listeners, error) {
	cfg := s.cfg.Load()
	var l Listeners
	var err error
	open := func(name, addr string) net.Listener {
		if err != nil {
			return nil
		}
		var ln net.Listener
		ln, err = listen(addr, cfg.ReusePort)
		if err != nil {
			err = fmt.Errorf("relay %s listener: %w", name, err)
			return nil
		}
		return ln
	}
	l.Control = open("control", cfg.Listen.Control)
	l.Data = open("data", cfg.Listen.Data)
	l.HTTP = open("http", cfg.Listen.HTTP)
	if cfg.Admin != "" {
		l.Admin = open("admin", cfg.Admin)
	}
	if err != nil {
		for _, ln := range []net.Listener{l.Control, l.Data, l.HTTP, l.Admin} {
			if ln != nil {
				ln.Close()
			}
		}
		return nil, err
	}
	return &l, nil
}

// limit wraps a listener with the configured connection caps and keeps it
// for Apply and for metrics.
func (s *Server) limit(name string, ln net.Listener) *connlimit.Listener {
	lim := s.cfg.Load().Limits
	cl := connlimit.New(ln, connlimit.Limits{Total: lim.Connections, PerSource: lim.PerSource})
	log := s.log.With("listener", name)
	cl.OnRefuse = func(r connlimit.Refusal) {
		log.Warn("connections refused over limits", "refused", r.Count, "top_source", r.TopSource,
			"from_top_source", r.TopCount, "open", r.Total, "connections", s.cfg.Load().Limits.Connections, "per_source", s.cfg.Load().Limits.PerSource)
	}
	s.mu.Lock()
	s.limited[name] = cl
	s.mu.Unlock()
	return cl
}

// Run listens and serves until ctx is done, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	l, err := s.Listen()
	if err != nil {
		return err
	}
	return s.Serve(ctx, l)
}

// Serve serves on the given listeners until ctx is done: it then stops
// accepting, closes control channels, lets live streams finish for the grace
// period and closes what remains.
func (s *Server) Serve(ctx context.Context, l *Listeners) error {
	dataLimited := s.limit("data", l.Data)
	s.door.admit = dataLimited.Admit // streams of multiplexed connections count too
	var control, data, httpLn net.Listener = s.limit("control", l.Control), dataLimited, s.limit("http", l.HTTP)
	if s.tls != nil {
		control, data, httpLn = tls.NewListener(control, s.tls), tls.NewListener(data, s.tls), tls.NewListener(httpLn, s.tls)
	}
	s.log.Info("relay listening", "control", l.Control.Addr().String(), "data", l.Data.Addr().String(),
		"http", l.HTTP.Addr().String(), "namespace", s.cfg.Load().Namespace, "tls", s.tls != nil)

	mux := http.NewServeMux()
	if s.admin != nil {
		s.admin.MountGuarded(mux, func() string { return s.cfg.Load().AdminToken })
	} else {
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintln(w, "ok")
		})
	}
	mux.Handle("/$hc/", s.ws)
	mux.HandleFunc("/", s.ws.serveRequest) // HTTP mode: /<hc>[/suffix]
	// Timeouts: a request's head must arrive within HandshakeTimeout, a
	// whole request within httpReadTimeout, and an idle keep-alive
	// connection is closed after httpIdleTimeout, so slow or silent clients
	// cannot hold connections (upgraded WebSockets are hijacked: these no
	// longer apply to them).
	inject := newInjectListener(l.HTTP.Addr())
	hs := &http.Server{Handler: mux, ConnContext: inject.connContext, ReadHeaderTimeout: HandshakeTimeout, ReadTimeout: httpReadTimeout,
		IdleTimeout: httpIdleTimeout, MaxHeaderBytes: maxHeaderBytes,
		ErrorLog: s.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})}

	var wg sync.WaitGroup
	errc := make(chan error, 5)
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errc <- err
			}
		}()
	}
	adminCtx, stopAdmin := context.WithCancel(context.Background())
	defer stopAdmin()
	if l.Admin != nil && s.admin != nil {
		run(func() error { return admin.ServeListener(adminCtx, l.Admin, s.admin.Handler(), s.log.Named("admin")) })
	}
	// Streams being set up when a stop is asked for still complete: the
	// relay serves on until it hands over, so their context ends only when
	// the core shuts down.
	streamCtx, stopStreams := context.WithCancel(context.Background())
	defer stopStreams()
	run(func() error { return s.door.serve(ctx, control, s.door.serveControl) })
	run(func() error { return s.door.serve(streamCtx, data, s.door.serveData) })
	run(func() error {
		if err := hs.Serve(httpLn); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	s.mu.Lock()
	s.inject = inject
	s.mu.Unlock()
	run(func() error {
		if err := hs.Serve(inject); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	expiryCtx, stopExpiry := context.WithCancel(ctx)
	go s.core.RunExpiry(expiryCtx)
	defer stopExpiry()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	// A restart without an outage: every client is told to go away (it
	// connects a new channel, to the process taking over or another relay
	// of the fleet), while this relay goes on serving on its sockets until
	// a successor has bound the same ports; then it stops accepting, keeps
	// its channels a moment for streams already on their way, and lets
	// live streams drain.
	s.log.Info("relay stopping: telling every client to go away")
	s.core.GoAway(status.Errorf(status.ShuttingDown, "relay is stopping"))
	s.door.retireMux()
	if runErr == nil && s.cfg.Load().ReusePort {
		s.awaitSuccessor(l)
	}
	drain := s.cfg.Load().DrainGrace
	if s.Grace > 0 {
		drain = s.Grace
	}
	gctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	control.Close()
	data.Close()
	s.door.retireMux() // those that came while it waited for a successor
	httpDone := make(chan struct{})
	go func() { hs.Shutdown(gctx); close(httpDone) }() // closes the http listener at once
	if s.core.sessionCount() > 0 {
		time.Sleep(sessionSettle)
	}
	s.log.Info("relay stopped accepting; live streams drain", "drain_grace", drain)
	s.ws.shutdown() // hijacked control channels: hs.Shutdown ignores them
	stopStreams()
	s.core.Shutdown(gctx)
	<-httpDone
	s.door.closeAll()
	stopAdmin()
	wg.Wait()
	s.log.Info("relay stopped")
	return runErr
}
