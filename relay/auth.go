package relay

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
	"github.com/hybridconn/hybrid/rules"
)

// Auth is an immutable set of authentication rules: which hybrid connections
// exist and which keys may listen on or send to them.
type Auth struct {
	verifier    sas.Verifier
	connections map[string][]sas.Rule // HC rules followed by namespace rules
}

// NewAuth builds the rules of a relay section.
func NewAuth(cfg *rules.Relay) (*Auth, error) {
	ns, err := convertRules(cfg.Keys)
	if err != nil {
		return nil, fmt.Errorf("relay.keys: %w", err)
	}
	a := &Auth{
		verifier:    sas.Verifier{Namespace: cfg.Namespace, Ports: listenPorts(cfg.Listen)},
		connections: make(map[string][]sas.Rule, len(cfg.Connections)),
	}
	for _, c := range cfg.Connections {
		rs, err := convertRules(c.Keys)
		if err != nil {
			return nil, fmt.Errorf("relay.connections %q: %w", c.Name, err)
		}
		a.connections[c.Name] = append(rs, ns...)
	}
	return a, nil
}

func convertRules(keys []rules.Key) ([]sas.Rule, error) {
	out := make([]sas.Rule, 0, len(keys))
	for _, k := range keys {
		r, err := sas.ParseRights(k.Rights...)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", k.Name, err)
		}
		out = append(out, sas.Rule{Name: k.Name, Rights: r, Primary: k.Primary, Secondary: k.Secondary})
	}
	return out, nil
}

// listenPorts returns the relay's own ports: a token's resource URI may name
// any of them and still mean this relay.
func listenPorts(l rules.RelayListen) []int {
	var ports []int
	for _, a := range []string{l.Control, l.Data, l.HTTP} {
		if _, p, err := net.SplitHostPort(a); err == nil {
			if n, err := strconv.Atoi(p); err == nil && n > 0 {
				ports = append(ports, n)
			}
		}
	}
	return ports
}

type authState struct{ *Auth }

// Grant records what authenticated a session's attachment or a stream's
// side, so that after a reload the relay can tell whether it still holds.
type Grant struct {
	HC     string
	Rule   string     // the key (rule) name
	value  string     // the key value that signed the token
	Need   sas.Rights // the right it was used for
	Expiry time.Time  // the token's expiry
}

// verify maps the SAS verdict onto status codes: a bad or unknown token is
// Unauthorized, a valid token for the wrong resource or right is Forbidden.
func (a *authState) verify(hc, token string, need sas.Rights) (Grant, error) {
	if a == nil || a.Auth == nil {
		return Grant{}, status.Errorf(status.Internal, "no rules loaded")
	}
	rs, ok := a.connections[hc]
	if !ok {
		return Grant{}, status.Errorf(status.NotFound, "no hybrid connection named %q", hc)
	}
	if token == "" {
		return Grant{}, status.Errorf(status.Unauthorized, "no token")
	}
	m, err := a.verifier.Verify(token, hc, need, rs)
	switch {
	case err == nil:
		r := rs[m.Index]
		g := Grant{HC: hc, Rule: m.Rule, value: r.Primary, Need: need, Expiry: m.Expiry}
		if m.Secondary {
			g.value = r.Secondary
		}
		return g, nil
	case errors.Is(err, sas.ErrWrongResource), errors.Is(err, sas.ErrNoRight):
		return Grant{}, &status.Error{Code: status.Forbidden, Msg: err.Error()}
	default:
		return Grant{}, &status.Error{Code: status.Unauthorized, Msg: err.Error()}
	}
}

// holds reports whether g is still granted by these rules: the connection
// exists and a rule of the same name still has the same value and the right.
func (a *Auth) holds(g Grant) bool {
	for _, r := range a.connections[g.HC] {
		if r.Name == g.Rule && r.Rights.Has(g.Need) && g.value != "" && (r.Primary == g.value || r.Secondary == g.value) {
			return true
		}
	}
	return false
}
