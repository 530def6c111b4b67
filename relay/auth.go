package relay

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
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
	revokes     map[string]bool       // hc + "\x00" + rule name: its removed values are revoked, not rotated

	namesOnce sync.Once
	names     []string // connection names, longest first (see lookup)
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
		revokes:     map[string]bool{},
	}
	for _, c := range cfg.Connections {
		rs, err := convertRules(c.Keys)
		if err != nil {
			return nil, fmt.Errorf("relay.connections %q: %w", c.Name, err)
		}
		a.connections[c.Name] = append(rs, ns...)
		for _, k := range append(append([]rules.Key{}, c.Keys...), cfg.Keys...) {
			if k.Revoke {
				a.revokes[c.Name+"\x00"+k.Name] = true
			}
		}
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
	value  string     // fingerprint of the key value that signed the token
	Need   sas.Rights // the right it was used for
	Expiry time.Time  // the token's expiry
	// Rotated is when a reload replaced the value while its rule stayed
	// (zero: current). Past Rotated plus the rotation grace the grant ends,
	// unless its client proves the rule's current value first.
	Rotated time.Time
}

// Value returns the fingerprint of the key value that signed the grant.
func (g Grant) Value() string { return g.value }

// RemoteGrant rebuilds a sender's grant that another relay of the fleet
// verified, from its parts.
func RemoteGrant(hc, rule, value string, expiry time.Time) Grant {
	return Grant{HC: hc, Rule: rule, value: value, Need: sas.Send, Expiry: expiry}
}

// fingerprint names a key value without keeping it: grants outlive the
// config they came from and must not hold secrets.
func fingerprint(v string) string {
	if v == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(v))
	return hex.EncodeToString(sum[:16])
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
		g := Grant{HC: hc, Rule: m.Rule, value: fingerprint(r.Primary), Need: need, Expiry: m.Expiry}
		if m.Secondary {
			g.value = fingerprint(r.Secondary)
		}
		return g, nil
	case errors.Is(err, sas.ErrWrongResource), errors.Is(err, sas.ErrNoRight):
		return Grant{}, &status.Error{Code: status.Forbidden, Msg: err.Error()}
	default:
		return Grant{}, &status.Error{Code: status.Unauthorized, Msg: err.Error()}
	}
}

// standing is what a reload makes of a grant.
type standing int

const (
	holds   standing = iota // the rule still has the value and the right
	rotated                 // the rule stays, its value was replaced: ends after the grace
	revoked                 // the rule, the connection or the right is gone, or the value was removed with revoke: ends now
)

// judge says where g stands under these rules.
func (a *Auth) judge(g Grant) standing {
	for _, r := range a.connections[g.HC] {
		if r.Name != g.Rule {
			continue
		}
		if !r.Rights.Has(g.Need) || g.value == "" {
			return revoked
		}
		if fingerprint(r.Primary) == g.value || fingerprint(r.Secondary) == g.value {
			return holds
		}
		if a.revokes[g.HC+"\x00"+r.Name] {
			return revoked
		}
		return rotated
	}
	return revoked
}
