// Package sas mints and verifies Shared Access Signature tokens in the Azure
// Service Bus / Relay format, byte-compatible with the tokens Azure's SDKs mint:
//
//	SharedAccessSignature sr=<enc(uri)>&sig=<enc(base64(HMAC-SHA256(key, enc(uri)+"\n"+se)))>&se=<unix expiry>&skn=<key name>
//
// As in Azure, the HMAC key is the UTF-8 bytes of the key string (not its
// base64 decoding), and the string signed is the sr field exactly as it
// appears in the token, i.e. still URL-encoded: encoders differ in the letter
// case of their %-escapes (hyco-ws writes %3A, the .NET SDK %3a), so the
// verifier must never re-encode it.
//
// A token authorises a right on a resource: the relay asks, through
// Verifier.Verify, whether a token authorises Listen or Send on one hybrid
// connection (HC) of its namespace, given the rules (named keys) that apply to
// that HC. Resource matching is done by Covers.
package sas

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Prefix starts every token.
const Prefix = "SharedAccessSignature "

// MaxTokenLen is the largest token, in bytes, that ParseToken accepts.
const MaxTokenLen = 4096

// Errors returned (wrapped, with details) by ParseToken and Verifier.Verify.
// Test with errors.Is.
var (
	// ErrMalformed: the token is not a well-formed SAS token.
	ErrMalformed = errors.New("sas: malformed token")
	// ErrExpired: the token's expiry (se) is not after the current time.
	ErrExpired = errors.New("sas: token expired")
	// ErrUnknownKey: no candidate rule has the token's key name (skn).
	ErrUnknownKey = errors.New("sas: unknown key name")
	// ErrBadSignature: a rule has the key name but none of its values
	// produced the token's signature.
	ErrBadSignature = errors.New("sas: bad signature")
	// ErrWrongResource: the token's resource (sr) does not cover the
	// requested hybrid connection.
	ErrWrongResource = errors.New("sas: token not valid for this resource")
	// ErrNoRight: the token is valid but the rule that signed it lacks the
	// requested right.
	ErrNoRight = errors.New("sas: key lacks the required right")
)

// Rights is a set of rights a rule grants.
type Rights uint8

// The rights. Manage is both Listen and Send.
const (
	// Listen lets an agent register as the listener of a hybrid connection.
	Listen Rights = 1 << iota
	// Send lets a client open a stream through a hybrid connection.
	Send
	// Manage grants both Listen and Send.
	Manage = Listen | Send
)

// ParseRights returns the union of the named rights: "listen", "send" or
// "manage" (case-insensitive). It fails on an unknown name or an empty list.
func ParseRights(names ...string) (Rights, error) {
	if len(names) == 0 {
		return 0, errors.New("sas: no rights given (want listen, send or manage)")
	}
	var r Rights
	for _, n := range names {
		switch strings.ToLower(n) {
		case "listen":
			r |= Listen
		case "send":
			r |= Send
		case "manage":
			r |= Manage
		default:
			return 0, fmt.Errorf("sas: unknown right %q (want listen, send or manage)", n)
		}
	}
	return r, nil
}

// Has reports whether r includes every right in need; it is false when need
// is empty.
func (r Rights) Has(need Rights) bool {
	return need != 0 && r&need == need
}

// String returns "listen", "send", "manage" or "none".
func (r Rights) String() string {
	switch r & Manage {
	case Listen:
		return "listen"
	case Send:
		return "send"
	case Manage:
		return "manage"
	}
	return "none"
}

// Rule is a named key with its rights and two values, so that rollover is
// seamless: a token signed with either value is valid. An empty value never
// matches.
type Rule struct {
	Name               string
	Rights             Rights
	Primary, Secondary string
}

// Match tells which rule validated a token.
type Match struct {
	// Rule is the matched rule's name, Index its position in the rules given
	// to Verify.
	Rule  string
	Index int
	// Secondary is true when the secondary value matched.
	Secondary bool
	// Expiry is the token's expiry; the token is valid while now < Expiry.
	Expiry time.Time
}

// Token is a parsed, not yet verified, SAS token.
type Token struct {
	// Resource is the URL-decoded sr field.
	Resource string
	// Signature is the URL-decoded sig field (base64).
	Signature string
	// Expiry is the se field as a time.
	Expiry time.Time
	// KeyName is the URL-decoded skn field.
	KeyName string

	signed []byte // the raw sr and se as received, joined by "\n"
	mac    []byte // the decoded signature
}

// ResourceURI returns the resource URI of hybrid connection hc in namespace:
// "sb://<namespace>/<hc>", or "sb://<namespace>/" when hc is empty (a token
// for it covers every HC of the namespace).
func ResourceURI(namespace, hc string) string {
	return "sb://" + namespace + "/" + hc
}

// NewToken mints a token for resourceURI, signed with the key named keyName
// whose value is key, valid until expiry (truncated to the second). It
// encodes sr, sig and skn like Azure's SDKs (upper-case %-escapes).
func NewToken(resourceURI, keyName, key string, expiry time.Time) string {
	sr := url.QueryEscape(resourceURI)
	se := strconv.FormatInt(expiry.Unix(), 10)
	sig := base64.StdEncoding.EncodeToString(sign(key, sr+"\n"+se))
	return Prefix + "sr=" + sr + "&sig=" + url.QueryEscape(sig) + "&se=" + se + "&skn=" + url.QueryEscape(keyName)
}

func sign(key, s string) []byte {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(s))
	return m.Sum(nil)
}

// ParseToken parses s; its error wraps ErrMalformed. The fields sr, sig, se
// and skn may come in any order; each must appear exactly once, non-empty, and
// no other field is allowed.
func ParseToken(s string) (*Token, error) {
	bad := func(format string, a ...any) (*Token, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, a...)...)
	}
	if len(s) > MaxTokenLen {
		return bad("longer than %d bytes", MaxTokenLen)
	}
	rest, ok := strings.CutPrefix(s, Prefix)
	if !ok {
		return bad("does not start with %q", Prefix)
	}
	var raw [4]string // sr, sig, se, skn
	var seen [4]bool
	for _, f := range strings.Split(rest, "&") {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return bad("field without '='")
		}
		i := -1
		switch k {
		case "sr":
			i = 0
		case "sig":
			i = 1
		case "se":
			i = 2
		case "skn":
			i = 3
		default:
			return bad("unknown field %.20q", k)
		}
		if seen[i] {
			return bad("duplicate field %q", k)
		}
		if v == "" {
			return bad("empty field %q", k)
		}
		seen[i], raw[i] = true, v
	}
	for i, k := range [4]string{"sr", "sig", "se", "skn"} {
		if !seen[i] {
			return bad("missing field %q", k)
		}
	}
	t := &Token{signed: []byte(raw[0] + "\n" + raw[2])}
	var err error
	if t.Resource, err = url.QueryUnescape(raw[0]); err != nil {
		return bad("bad encoding in sr")
	}
	// PathUnescape keeps a literal '+', which in a signature can only be a
	// base64 '+' that the encoder forgot to escape.
	if t.Signature, err = url.PathUnescape(raw[1]); err != nil {
		return bad("bad encoding in sig")
	}
	if t.mac, err = base64.StdEncoding.Strict().DecodeString(t.Signature); err != nil || len(t.mac) != sha256.Size {
		return bad("sig is not a base64 HMAC-SHA256")
	}
	if t.KeyName, err = url.QueryUnescape(raw[3]); err != nil {
		return bad("bad encoding in skn")
	}
	se := raw[2]
	if len(se) > 18 {
		return bad("se out of range")
	}
	for i := 0; i < len(se); i++ {
		if se[i] < '0' || se[i] > '9' {
			return bad("se is not a decimal number")
		}
	}
	n, err := strconv.ParseInt(se, 10, 64)
	if err != nil {
		return bad("se out of range")
	}
	t.Expiry = time.Unix(n, 0)
	return t, nil
}

// SignedWith reports, in constant time, whether the token was signed with the
// key value key. It is false for an empty key.
func (t *Token) SignedWith(key string) bool {
	if key == "" {
		return false
	}
	m := hmac.New(sha256.New, []byte(key))
	m.Write(t.signed)
	return hmac.Equal(m.Sum(nil), t.mac)
}

// Verifier verifies tokens presented to a relay. It is safe for concurrent
// use as long as its fields are not modified.
type Verifier struct {
	// Namespace is the relay's namespace host name (no port), compared
	// case-insensitively with the host of a token's resource.
	Namespace string
	// Ports are the relay's own ports: a token's resource may name one of
	// them, or 80 or 443, and still be the same resource.
	Ports []int
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Verify checks that token authorises need (Listen, Send or both) on
// hybrid connection hc of v.Namespace. rules are the candidates, HC rules
// first then namespace rules; rules with the token's key name are tried in
// order, and a rule counts as matching when one of its values produced the
// signature. The checks, and so the error returned, come in this order:
// ErrMalformed, ErrUnknownKey, ErrBadSignature, ErrExpired, ErrWrongResource,
// ErrNoRight. On success, Match tells which rule and value matched.
func (v *Verifier) Verify(token, hc string, need Rights, rules []Rule) (Match, error) {
	if need == 0 || need&^Manage != 0 {
		return Match{}, fmt.Errorf("sas: invalid right requested (%d)", need)
	}
	t, err := ParseToken(token)
	if err != nil {
		return Match{}, err
	}
	named, signed := false, false
	var m Match
	for i, r := range rules {
		if r.Name != t.KeyName {
			continue
		}
		named = true
		secondary := false
		switch {
		case t.SignedWith(r.Primary):
		case t.SignedWith(r.Secondary):
			secondary = true
		default:
			continue
		}
		if !signed {
			signed = true
			m = Match{Rule: r.Name, Index: i, Secondary: secondary, Expiry: t.Expiry}
		}
		if r.Rights.Has(need) {
			m = Match{Rule: r.Name, Index: i, Secondary: secondary, Expiry: t.Expiry}
			break
		}
	}
	switch {
	case !named:
		return Match{}, fmt.Errorf("%w %.64q", ErrUnknownKey, t.KeyName)
	case !signed:
		return Match{}, fmt.Errorf("%w for key %.64q", ErrBadSignature, t.KeyName)
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	if !now().Before(t.Expiry) {
		return Match{}, fmt.Errorf("%w at %s", ErrExpired, t.Expiry.UTC().Format(time.RFC3339))
	}
	if !Covers(t.Resource, v.Namespace, hc, v.Ports) {
		return Match{}, fmt.Errorf("%w: token for %.200q, requested %.200q", ErrWrongResource, t.Resource, hc)
	}
	if !rules[m.Index].Rights.Has(need) {
		return Match{}, fmt.Errorf("%w: key %.64q has %s, needs %s", ErrNoRight, m.Rule, rules[m.Index].Rights, need)
	}
	return m, nil
}

// Covers reports whether a token for resource tokenResource (the decoded sr)
// covers hybrid connection hc of namespace, on a relay listening on ports.
//
// The resource is normalised first: its scheme must be one of sb, http,
// https, ws, wss (all equivalent); its host must equal namespace ignoring
// case; a port is dropped when it is 80, 443 or one of ports, and any other
// port makes it a different resource; a leading "$hc" path segment, the
// query, the fragment and a trailing slash are dropped. Then its path must be
// a prefix of hc on whole segments, compared ignoring ASCII case: "sb://ns/"
// covers every HC, "sb://ns/postgres" covers "postgres" and "postgres/x" but
// not "postgres2". Paths with empty, "." or ".." segments cover nothing.
func Covers(tokenResource, namespace, hc string, ports []int) bool {
	u, err := url.Parse(tokenResource)
	if err != nil || u.Opaque != "" || u.User != nil {
		return false
	}
	switch u.Scheme { // url.Parse lower-cases the scheme
	case "sb", "http", "https", "ws", "wss":
	default:
		return false
	}
	if namespace == "" || !strings.EqualFold(u.Hostname(), namespace) {
		return false
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || strconv.Itoa(n) != p || !portOK(n, ports) {
			return false
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return false // empty port
	}
	have, ok := segments(u.Path)
	if !ok {
		return false
	}
	if len(have) > 0 && asciiEqualFold(have[0], "$hc") {
		have = have[1:]
	}
	want, ok := segments(hc)
	if !ok || len(have) > len(want) {
		return false
	}
	for i := range have {
		if !asciiEqualFold(have[i], want[i]) {
			return false
		}
	}
	return true
}

func portOK(n int, ports []int) bool {
	if n == 80 || n == 443 {
		return true
	}
	for _, p := range ports {
		if p == n {
			return true
		}
	}
	return false
}

// segments splits a path on "/", ignoring one leading and one trailing slash.
func segments(p string) ([]string, bool) {
	p = strings.TrimPrefix(p, "/")
	p = strings.TrimSuffix(p, "/")
	if p == "" {
		return nil, true
	}
	s := strings.Split(p, "/")
	for _, x := range s {
		if x == "" || x == "." || x == ".." {
			return nil, false
		}
	}
	return s, true
}

func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
