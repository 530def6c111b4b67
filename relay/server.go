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
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hybridconn/hybrid/internal/admin"
	"github.com/hybridconn/hybrid/internal/safefile"
	"github.com/hybridconn/hybrid/rules"
)

// maxPEM bounds a certificate chain or key file.
const maxPEM = 1 << 20

// DefaultGrace is how long live streams may go on after a stop is asked for.
const DefaultGrace = 10 * time.Second

// Server runs a relay section: its listeners, front doors and core.
type Server struct {
	log   hclog.Logger
	cfg   atomic.Pointer[rules.Relay]
	core  *Core
	door  *nativeDoor
	ws    *wsDoor
	tls   *tls.Config // nil without TLS; its certificate is swapped on reload
	cert  atomic.Pointer[tls.Certificate]
	admin *admin.Admin  // set by Register: served on the http listener
	Grace time.Duration // zero means DefaultGrace
}

// New validates cfg into a server. It does not listen yet.
func New(cfg *rules.Relay, log hclog.Logger) (*Server, error) {
	auth, err := NewAuth(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{log: log}
	s.cfg.Store(cfg)
	s.core = NewCore(log, auth)
	s.door = newNativeDoor(s.core, log)
	s.ws = newWSDoor(s.core, log, cfg.TLS != nil)
	if cfg.TLS != nil {
		if err := s.loadCert(cfg.TLS); err != nil {
			return nil, err
		}
		s.tls = &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				return s.cert.Load(), nil
			},
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
	s.core.SetAuth(auth)
	return nil
}

// Core returns the server's core.
func (s *Server) Core() *Core { return s.core }

// Listeners are the relay's three listening sockets.
type Listeners struct {
	Control, Data, HTTP net.Listener
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
		ln, err = net.Listen("tcp", addr)
		if err != nil {
			err = fmt.Errorf("relay %s listener: %w", name, err)
			return nil
		}
		return ln
	}
	l.Control = open("control", cfg.Listen.Control)
	l.Data = open("data", cfg.Listen.Data)
	l.HTTP = open("http", cfg.Listen.HTTP)
	if err != nil {
		for _, ln := range []net.Listener{l.Control, l.Data, l.HTTP} {
			if ln != nil {
				ln.Close()
			}
		}
		return nil, err
	}
	return &l, nil
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
	control, data := l.Control, l.Data
	if s.tls != nil {
		control, data = tls.NewListener(control, s.tls), tls.NewListener(data, s.tls)
	}
	s.log.Info("relay listening", "control", l.Control.Addr().String(), "data", l.Data.Addr().String(),
		"http", l.HTTP.Addr().String(), "namespace", s.cfg.Load().Namespace, "tls", s.tls != nil)

	mux := http.NewServeMux()
	if s.admin != nil {
		s.admin.Mount(mux)
	} else {
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintln(w, "ok")
		})
	}
	mux.Handle("/$hc/", s.ws)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: HandshakeTimeout, ErrorLog: s.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})}

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errc <- err
			}
		}()
	}
	run(func() error { return s.door.serve(ctx, control, s.door.serveControl) })
	run(func() error { return s.door.serve(ctx, data, s.door.serveData) })
	run(func() error {
		var err error
		if s.tls != nil {
			err = hs.Serve(tls.NewListener(l.HTTP, s.tls))
		} else {
			err = hs.Serve(l.HTTP)
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
	expiryCtx, stopExpiry := context.WithCancel(ctx)
	go s.core.RunExpiry(expiryCtx)
	defer stopExpiry()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	s.log.Info("relay stopping")
	control.Close()
	data.Close()
	grace := s.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	gctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	s.ws.shutdown() // hijacked control channels: hs.Shutdown ignores them
	hs.Shutdown(gctx)
	s.core.Shutdown(gctx)
	s.door.closeAll()
	wg.Wait()
	s.log.Info("relay stopped")
	return runErr
}
