package sas

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// vectorsPath is the shared test data beside the repo.
var vectorsPath = filepath.Join("..", "..", "..", "shared", "testdata", "sas-vectors.json")

type vector struct {
	Client            string `json:"client"`
	URI               string `json:"uri"`
	KeyName           string `json:"key_name"`
	Key               string `json:"key"`
	Expiry            int64  `json:"expiry"`
	Token             string `json:"token"`
	ResourceURISigned string `json:"resource_uri_signed"`
	Valid             bool   `json:"valid"`
}

func loadVectors(t *testing.T) []vector {
	t.Helper()
	b, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("SAS vectors missing: %v (expected the shared dir beside the repo: %s)", err, vectorsPath)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatalf("bad %s: %v", vectorsPath, err)
	}
	if len(vs) < 6 {
		t.Fatalf("%s: want at least 6 vectors, got %d", vectorsPath, len(vs))
	}
	return vs
}

// target derives, from a vector's uri, the namespace, relay ports, HC and the
// right the client asked for: "wss://host:8443/$hc/sql/suffix?sb-hc-action=listen"
// is HC "sql/suffix" on host, ports [8443], Listen.
func target(t *testing.T, uri string) (ns string, ports []int, hc string, need Rights) {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil {
			t.Fatal(err)
		}
		ports = []int{n}
	}
	hc = strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(u.Path, "/"), "$hc/"), "/")
	need = Send
	if u.Query().Get("sb-hc-action") == "listen" {
		need = Listen
	}
	return u.Hostname(), ports, hc, need
}

func at(sec int64) func() time.Time { return func() time.Time { return time.Unix(sec, 0) } }

func TestVectors(t *testing.T) {
	for i, vec := range loadVectors(t) {
		t.Run(strconv.Itoa(i)+"_"+vec.KeyName, func(t *testing.T) {
			ns, ports, hc, need := target(t, vec.URI)
			rules := []Rule{{Name: vec.KeyName, Rights: need, Primary: vec.Key}}
			tok, err := ParseToken(vec.Token)
			if err != nil {
				t.Fatalf("ParseToken: %v", err)
			}
			if tok.Resource != vec.ResourceURISigned || tok.KeyName != vec.KeyName || tok.Expiry.Unix() != vec.Expiry {
				t.Fatalf("parsed %+v, want resource %q key %q expiry %d", tok, vec.ResourceURISigned, vec.KeyName, vec.Expiry)
			}
			for _, c := range []struct {
				name string
				now  int64
			}{{"long_before", vec.Expiry - 3600}, {"last_second", vec.Expiry - 1}, {"at_expiry", vec.Expiry}, {"after", vec.Expiry + 1}} {
				t.Run(c.name, func(t *testing.T) {
					v := &Verifier{Namespace: ns, Ports: ports, Now: at(c.now)}
					m, err := v.Verify(vec.Token, hc, need, rules)
					switch {
					case !vec.Valid:
						if !errors.Is(err, ErrBadSignature) {
							t.Fatalf("tampered token: got %v, want ErrBadSignature", err)
						}
					case c.now >= vec.Expiry:
						if !errors.Is(err, ErrExpired) {
							t.Fatalf("got %v, want ErrExpired", err)
						}
					default:
						if err != nil {
							t.Fatalf("Verify(%q, %q): %v", vec.Token, hc, err)
						}
						if m.Rule != vec.KeyName || m.Index != 0 || m.Secondary || m.Expiry.Unix() != vec.Expiry {
							t.Fatalf("match %+v", m)
						}
					}
				})
			}
			if !vec.Valid {
				return
			}
			v := &Verifier{Namespace: ns, Ports: ports, Now: at(vec.Expiry - 1)}
			t.Run("other_hc", func(t *testing.T) {
				if _, err := v.Verify(vec.Token, hc+"2", need, rules); !errors.Is(err, ErrWrongResource) {
					t.Fatalf("got %v, want ErrWrongResource", err)
				}
			})
			t.Run("other_namespace", func(t *testing.T) {
				v := *v
				v.Namespace = "other." + ns
				if _, err := v.Verify(vec.Token, hc, need, rules); !errors.Is(err, ErrWrongResource) {
					t.Fatalf("got %v, want ErrWrongResource", err)
				}
			})
			if len(ports) > 0 {
				t.Run("port_not_ours", func(t *testing.T) {
					v := *v
					v.Ports = nil
					if _, err := v.Verify(vec.Token, hc, need, rules); !errors.Is(err, ErrWrongResource) {
						t.Fatalf("got %v, want ErrWrongResource", err)
					}
				})
			}
		})
	}
}

// TestVectorsSignedStringIsRawSR pins what the vectors need: the string signed
// is the sr field as it appears in the token, still URL-encoded (Azure signs
// the encoded URI), not resource_uri_signed (the decoded sr).
func TestVectorsSignedStringIsRawSR(t *testing.T) {
	mac := func(key, s string) string {
		m := hmac.New(sha256.New, []byte(key))
		m.Write([]byte(s))
		return base64.StdEncoding.EncodeToString(m.Sum(nil))
	}
	for i, vec := range loadVectors(t) {
		if !vec.Valid {
			continue
		}
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			tok, err := ParseToken(vec.Token)
			if err != nil {
				t.Fatal(err)
			}
			rawSR := strings.SplitN(strings.SplitN(vec.Token, "sr=", 2)[1], "&", 2)[0]
			se := strconv.FormatInt(vec.Expiry, 10)
			if got := mac(vec.Key, rawSR+"\n"+se); got != tok.Signature {
				t.Errorf("HMAC over raw sr = %s, token has %s", got, tok.Signature)
			}
			if got := mac(vec.Key, vec.ResourceURISigned+"\n"+se); got == tok.Signature {
				t.Errorf("HMAC over decoded sr unexpectedly matches")
			}
			if !tok.SignedWith(vec.Key) {
				t.Errorf("SignedWith(key) = false")
			}
		})
	}
}

// TestNewTokenMatchesHycoWS: our minting reproduces Microsoft's hyco-ws tokens
// byte for byte (upper-case escapes); the .NET-style vector differs only in
// escape case, which is why verification must not re-encode sr.
func TestNewTokenMatchesHycoWS(t *testing.T) {
	for i, vec := range loadVectors(t) {
		if !vec.Valid || !strings.HasPrefix(vec.Client, "hyco-ws") {
			continue
		}
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			got := NewToken(vec.ResourceURISigned, vec.KeyName, vec.Key, time.Unix(vec.Expiry, 0))
			if got != vec.Token {
				t.Fatalf("NewToken:\n got %s\nwant %s", got, vec.Token)
			}
		})
	}
}

// TestNewTokenIndependent pins the wire format against tokens computed outside
// this package, with Python:
//
//	python3 -c 'import hmac,hashlib,base64,urllib.parse as u,sys; uri,skn,key,se=sys.argv[1:]; sr=u.quote_plus(uri,safe=""); sig=base64.b64encode(hmac.new(key.encode(),(sr+"\n"+se).encode(),hashlib.sha256).digest()).decode(); print("SharedAccessSignature sr=%s&sig=%s&se=%s&skn=%s"%(sr,u.quote_plus(sig,safe=""),se,u.quote_plus(skn,safe="")))' URI SKN KEY SE
func TestNewTokenIndependent(t *testing.T) {
	for _, c := range []struct {
		name, uri, skn, key string
		se                  int64
		want                string
	}{
		{"hc", "sb://ns.example.com/postgres", "apps", "secret", 1767229200,
			"SharedAccessSignature sr=sb%3A%2F%2Fns.example.com%2Fpostgres&sig=FNh9hwB9VZbBR26YOXihpGLdq0Tap2L%2Bg3hcaNxsZ0E%3D&se=1767229200&skn=apps"},
		{"namespace", "sb://ns.example.com/", "RootManageSharedAccessKey", "AbC+/=", 2000000000,
			"SharedAccessSignature sr=sb%3A%2F%2Fns.example.com%2F&sig=cBMSamBnfgQfSO35TOSzqhUFUkte1XgnwBolpaUDpN4%3D&se=2000000000&skn=RootManageSharedAccessKey"},
		{"utf8_key_space_name", "sb://ns.example.com/sql/suffix", "my key", "clé-ünïcode-☃", 1767229200,
			"SharedAccessSignature sr=sb%3A%2F%2Fns.example.com%2Fsql%2Fsuffix&sig=%2BHcEeBSD5n5OBtzPTjZyDAZWwXtczkVng0noOQYSiEI%3D&se=1767229200&skn=my+key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := NewToken(c.uri, c.skn, c.key, time.Unix(c.se, 0)); got != c.want {
				t.Fatalf("NewToken:\n got %s\nwant %s", got, c.want)
			}
			hc := strings.TrimPrefix(c.uri, "sb://ns.example.com/")
			v := &Verifier{Namespace: "ns.example.com", Now: at(c.se - 1)}
			if _, err := v.Verify(c.want, hc, Manage, []Rule{{Name: c.skn, Rights: Manage, Primary: c.key}}); err != nil {
				t.Fatalf("Verify: %v", err)
			}
		})
	}
}

func TestResourceURI(t *testing.T) {
	if got := ResourceURI("ns.example.com", "sql/suffix"); got != "sb://ns.example.com/sql/suffix" {
		t.Errorf("got %q", got)
	}
	if got := ResourceURI("ns.example.com", ""); got != "sb://ns.example.com/" {
		t.Errorf("got %q", got)
	}
}

func TestParseRights(t *testing.T) {
	for _, c := range []struct {
		in      []string
		want    Rights
		wantErr bool
	}{
		{[]string{"listen"}, Listen, false},
		{[]string{"send"}, Send, false},
		{[]string{"manage"}, Manage, false},
		{[]string{"Listen", "SEND"}, Manage, false},
		{[]string{"listen", "listen"}, Listen, false},
		{nil, 0, true},
		{[]string{"read"}, 0, true},
		{[]string{""}, 0, true},
		{[]string{"listen", " send"}, 0, true},
	} {
		t.Run(strings.Join(c.in, ","), func(t *testing.T) {
			got, err := ParseRights(c.in...)
			if (err != nil) != c.wantErr || got != c.want {
				t.Fatalf("ParseRights(%q) = %v, %v", c.in, got, err)
			}
		})
	}
	for r, s := range map[Rights]string{0: "none", Listen: "listen", Send: "send", Manage: "manage"} {
		if r.String() != s {
			t.Errorf("%d.String() = %q, want %q", r, r.String(), s)
		}
	}
	if Rights(0).Has(0) || !Manage.Has(Send) || Listen.Has(Send) || Listen.Has(Manage) {
		t.Error("Has")
	}
}

func TestCovers(t *testing.T) {
	const ns = "relay.example.com"
	ports := []int{8443}
	for _, c := range []struct {
		name, res, hc string
		want          bool
	}{
		{"exact", "sb://relay.example.com/postgres", "postgres", true},
		{"namespace_slash", "sb://relay.example.com/", "postgres", true},
		{"namespace_no_slash", "sb://relay.example.com", "sql/suffix", true},
		{"namespace_itself", "sb://relay.example.com/", "", true},
		{"trailing_slash", "http://relay.example.com/postgres/", "postgres", true},
		{"scheme_http", "http://relay.example.com/postgres", "postgres", true},
		{"scheme_https", "https://relay.example.com/postgres", "postgres", true},
		{"scheme_ws", "ws://relay.example.com/postgres", "postgres", true},
		{"scheme_wss_upper", "WSS://relay.example.com/postgres", "postgres", true},
		{"host_case", "sb://Relay.EXAMPLE.com/postgres", "postgres", true},
		{"hc_case", "sb://relay.example.com/PostGres", "postgres", true},
		{"dollar_hc", "wss://relay.example.com/$hc/postgres", "postgres", true},
		{"dollar_hc_only", "wss://relay.example.com/$hc/", "postgres", true},
		{"query_fragment", "wss://relay.example.com/$hc/postgres?sb-hc-action=connect#x", "postgres", true},
		{"port_80", "http://relay.example.com:80/postgres", "postgres", true},
		{"port_443", "sb://relay.example.com:443/postgres", "postgres", true},
		{"own_port", "http://relay.example.com:8443/postgres", "postgres", true},
		{"slash_in_hc", "http://relay.example.com:8443/sql/suffix", "sql/suffix", true},
		{"prefix_segment", "sb://relay.example.com/sql", "sql/suffix", true},
		{"escaped_path", "sb://relay.example.com/post%67res", "postgres", true},
		{"hc_with_slashes", "sb://relay.example.com/postgres", "/postgres/", true},

		{"other_hc", "sb://relay.example.com/postgres", "mysql", false},
		{"prefix_not_segment", "sb://relay.example.com/postgres", "postgres2", false},
		{"longer_than_hc", "sb://relay.example.com/sql/suffix", "sql", false},
		{"other_suffix", "sb://relay.example.com/sql/suffix", "sql/other", false},
		{"other_host", "sb://other.example.com/postgres", "postgres", false},
		{"host_suffix", "sb://relay.example.com.evil/postgres", "postgres", false},
		{"host_trailing_dot", "sb://relay.example.com./postgres", "postgres", false},
		{"foreign_port", "sb://relay.example.com:9000/postgres", "postgres", false},
		{"empty_port", "sb://relay.example.com:/postgres", "postgres", false},
		{"leading_zero_port", "sb://relay.example.com:08443/postgres", "postgres", false},
		{"scheme_ftp", "ftp://relay.example.com/postgres", "postgres", false},
		{"no_scheme", "relay.example.com/postgres", "postgres", false},
		{"opaque", "sb:relay.example.com/postgres", "postgres", false},
		{"userinfo", "sb://u@relay.example.com/postgres", "postgres", false},
		{"dot_dot", "sb://relay.example.com/postgres/..", "postgres", false},
		{"dot", "sb://relay.example.com/./postgres", "postgres", false},
		{"empty_segment", "sb://relay.example.com//postgres", "postgres", false},
		{"dollar_hc_not_first", "sb://relay.example.com/postgres/$hc", "postgres", false},
		{"hc_empty_segment", "sb://relay.example.com/sql", "sql//suffix", false},
		{"hc_dotdot", "sb://relay.example.com/sql", "sql/../postgres", false},
		{"unicode_fold", "sb://relay.example.com/\u212Aey", "key", false},
		{"garbage", "%%%", "postgres", false},
		{"empty", "", "postgres", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Covers(c.res, ns, c.hc, ports); got != c.want {
				t.Fatalf("Covers(%q, %q, %q) = %v, want %v", c.res, ns, c.hc, got, c.want)
			}
		})
	}
	t.Run("empty_namespace", func(t *testing.T) {
		if Covers("sb:///postgres", "", "postgres", nil) {
			t.Fatal("empty namespace covered")
		}
	})
}

func TestVerify(t *testing.T) {
	const (
		ns  = "relay.example.com"
		se  = 1767229200
		key = "primary-value"
		sec = "secondary-value"
	)
	now := at(se - 60)
	v := &Verifier{Namespace: ns, Ports: []int{8443}, Now: now}
	hcRules := []Rule{
		{Name: "onprem", Rights: Listen, Primary: "listen-value", Secondary: "listen-value-2"},
		{Name: "apps", Rights: Send, Primary: key, Secondary: sec},
	}
	nsRules := []Rule{{Name: "root", Rights: Manage, Primary: "root-value"}}
	rules := append(append([]Rule{}, hcRules...), nsRules...)
	exp := time.Unix(se, 0)
	pg := ResourceURI(ns, "postgres")
	valid := NewToken(pg, "apps", key, exp)

	type want struct {
		err       error
		rule      string
		index     int
		secondary bool
	}
	for _, c := range []struct {
		name  string
		token string
		hc    string
		need  Rights
		rules []Rule
		v     *Verifier
		want  want
	}{
		{"ok_primary", valid, "postgres", Send, rules, v, want{rule: "apps", index: 1}},
		{"ok_secondary", NewToken(pg, "apps", sec, exp), "postgres", Send, rules, v, want{rule: "apps", index: 1, secondary: true}},
		{"ok_listen", NewToken(pg, "onprem", "listen-value", exp), "postgres", Listen, rules, v, want{rule: "onprem"}},
		{"ok_namespace_rule", NewToken(ResourceURI(ns, ""), "root", "root-value", exp), "postgres", Manage, rules, v, want{rule: "root", index: 2}},
		{"ok_own_port_wss", NewToken("wss://relay.example.com:8443/$hc/postgres", "apps", key, exp), "postgres", Send, rules, v, want{rule: "apps", index: 1}},
		{"ok_default_clock", NewToken(pg, "apps", key, time.Now().Add(time.Hour)), "postgres", Send, rules, &Verifier{Namespace: ns}, want{rule: "apps", index: 1}},

		{"expired", valid, "postgres", Send, rules, &Verifier{Namespace: ns, Now: at(se)}, want{err: ErrExpired}},
		{"expired_long_ago", NewToken(pg, "apps", key, time.Unix(0, 0)), "postgres", Send, rules, v, want{err: ErrExpired}},
		{"wrong_key_value", NewToken(pg, "apps", "guess", exp), "postgres", Send, rules, v, want{err: ErrBadSignature}},
		{"other_rules_value", NewToken(pg, "apps", "root-value", exp), "postgres", Send, rules, v, want{err: ErrBadSignature}},
		{"unknown_key_name", NewToken(pg, "nobody", key, exp), "postgres", Send, rules, v, want{err: ErrUnknownKey}},
		{"key_name_case", NewToken(pg, "APPS", key, exp), "postgres", Send, rules, v, want{err: ErrUnknownKey}},
		{"no_rules", valid, "postgres", Send, nil, v, want{err: ErrUnknownKey}},
		{"listen_key_used_to_send", NewToken(pg, "onprem", "listen-value", exp), "postgres", Send, rules, v, want{err: ErrNoRight}},
		{"send_key_used_to_listen", valid, "postgres", Listen, rules, v, want{err: ErrNoRight}},
		{"send_key_manage", valid, "postgres", Manage, rules, v, want{err: ErrNoRight}},
		{"other_hc", valid, "mysql", Send, rules, v, want{err: ErrWrongResource}},
		{"prefix_not_segment", valid, "postgres2", Send, rules, v, want{err: ErrWrongResource}},
		{"other_host", NewToken("sb://evil.example.com/postgres", "apps", key, exp), "postgres", Send, rules, v, want{err: ErrWrongResource}},
		{"foreign_port", NewToken("sb://relay.example.com:9443/postgres", "apps", key, exp), "postgres", Send, rules, v, want{err: ErrWrongResource}},
		{"bad_scheme", NewToken("ftp://relay.example.com/postgres", "apps", key, exp), "postgres", Send, rules, v, want{err: ErrWrongResource}},
		{"tampered_sig", flipSig(valid), "postgres", Send, rules, v, want{err: ErrBadSignature}},
		{"tampered_sr", strings.Replace(valid, "postgres", "mysql", 1), "mysql", Send, rules, v, want{err: ErrBadSignature}},
		{"tampered_se", strings.Replace(valid, "&se=1767229200", "&se=1767229999", 1), "postgres", Send, rules, v, want{err: ErrBadSignature}},
		{"tampered_se_leading_zero", strings.Replace(valid, "&se=1767229200", "&se=01767229200", 1), "postgres", Send, rules, v, want{err: ErrBadSignature}},
		{"tampered_skn", strings.Replace(valid, "&skn=apps", "&skn=root", 1), "postgres", Send, rules, v, want{err: ErrBadSignature}},
		{"empty_secondary_not_a_key", NewToken(pg, "apps", "", exp), "postgres", Send, []Rule{{Name: "apps", Rights: Send, Primary: key}}, v, want{err: ErrBadSignature}},
		{"malformed", "garbage", "postgres", Send, rules, v, want{err: ErrMalformed}},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := c.v.Verify(c.token, c.hc, c.need, c.rules)
			if c.want.err != nil {
				if !errors.Is(err, c.want.err) {
					t.Fatalf("Verify = %+v, %v; want %v", m, err, c.want.err)
				}
				if m != (Match{}) {
					t.Fatalf("non-zero match %+v with error", m)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if m.Rule != c.want.rule || m.Index != c.want.index || m.Secondary != c.want.secondary {
				t.Fatalf("match %+v, want %+v", m, c.want)
			}
		})
	}

	t.Run("rollover", func(t *testing.T) {
		// Rotate: the old primary becomes the secondary; tokens signed with
		// it stay valid and are reported as secondary, new ones as primary.
		old := NewToken(pg, "apps", key, exp)
		rotated := []Rule{{Name: "apps", Rights: Send, Primary: "new-value", Secondary: key}}
		m, err := v.Verify(old, "postgres", Send, rotated)
		if err != nil || !m.Secondary {
			t.Fatalf("old token after rotation: %+v, %v", m, err)
		}
		m, err = v.Verify(NewToken(pg, "apps", "new-value", exp), "postgres", Send, rotated)
		if err != nil || m.Secondary {
			t.Fatalf("new token after rotation: %+v, %v", m, err)
		}
		// Removing the old value revokes the old token.
		if _, err := v.Verify(old, "postgres", Send, []Rule{{Name: "apps", Rights: Send, Primary: "new-value"}}); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("revoked value: %v", err)
		}
	})

	t.Run("same_name_hc_and_namespace", func(t *testing.T) {
		// An HC rule and a namespace rule share a name: the one whose value
		// signed the token and that has the right wins.
		rs := []Rule{
			{Name: "k", Rights: Listen, Primary: "hc-value"},
			{Name: "k", Rights: Send, Primary: "hc-value"},
			{Name: "k", Rights: Manage, Primary: "ns-value"},
		}
		for _, c := range []struct {
			value string
			need  Rights
			index int
			err   error
		}{
			{"hc-value", Listen, 0, nil},
			{"hc-value", Send, 1, nil},
			{"hc-value", Manage, 0, ErrNoRight},
			{"ns-value", Manage, 2, nil},
		} {
			m, err := v.Verify(NewToken(pg, "k", c.value, exp), "postgres", c.need, rs)
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Errorf("%s/%s: %v, want %v", c.value, c.need, err, c.err)
				}
				continue
			}
			if err != nil || m.Index != c.index {
				t.Errorf("%s/%s: %+v, %v; want index %d", c.value, c.need, m, err, c.index)
			}
		}
	})

	t.Run("invalid_need", func(t *testing.T) {
		for _, need := range []Rights{0, 4, Manage | 8} {
			if _, err := v.Verify(valid, "postgres", need, rules); err == nil {
				t.Errorf("need %d accepted", need)
			}
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		done := make(chan error, 8)
		for i := 0; i < 8; i++ {
			go func() {
				var err error
				for j := 0; j < 100 && err == nil; j++ {
					_, err = v.Verify(valid, "postgres", Send, rules)
				}
				done <- err
			}()
		}
		for i := 0; i < 8; i++ {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	})
}

func TestParseToken(t *testing.T) {
	const (
		sr  = "sr=sb%3A%2F%2Fns%2Fpg"
		sig = "sig=FNh9hwB9VZbBR26YOXihpGLdq0Tap2L%2Bg3hcaNxsZ0E%3D"
		se  = "se=1767229200"
		skn = "skn=apps"
	)
	join := func(f ...string) string { return Prefix + strings.Join(f, "&") }
	t.Run("any_order", func(t *testing.T) {
		for _, s := range []string{join(sr, sig, se, skn), join(skn, se, sig, sr), join(se, sr, skn, sig)} {
			tok, err := ParseToken(s)
			if err != nil {
				t.Fatalf("%q: %v", s, err)
			}
			if tok.Resource != "sb://ns/pg" || tok.KeyName != "apps" || tok.Expiry.Unix() != 1767229200 ||
				tok.Signature != "FNh9hwB9VZbBR26YOXihpGLdq0Tap2L+g3hcaNxsZ0E=" {
				t.Fatalf("%q: parsed %+v", s, tok)
			}
		}
	})
	t.Run("unescaped_plus_in_sig", func(t *testing.T) {
		tok, err := ParseToken(join(sr, "sig=FNh9hwB9VZbBR26YOXihpGLdq0Tap2L+g3hcaNxsZ0E=", se, skn))
		if err != nil || tok.Signature != "FNh9hwB9VZbBR26YOXihpGLdq0Tap2L+g3hcaNxsZ0E=" {
			t.Fatalf("%+v, %v", tok, err)
		}
	})
	t.Run("max_len", func(t *testing.T) {
		s := join(sr, sig, se, skn)
		s = strings.Replace(s, "%2Fpg", "%2F"+strings.Repeat("a", MaxTokenLen-len(s)+2), 1)
		if len(s) != MaxTokenLen {
			t.Fatalf("len %d", len(s))
		}
		if _, err := ParseToken(s); err != nil {
			t.Fatalf("token of exactly MaxTokenLen: %v", err)
		}
	})
	for _, c := range []struct{ name, s string }{
		{"empty", ""},
		{"garbage", "garbage"},
		{"prefix_only", Prefix},
		{"no_prefix", strings.TrimPrefix(join(sr, sig, se, skn), Prefix)},
		{"lower_prefix", "sharedaccesssignature " + join(sr, sig, se, skn)[len(Prefix):]},
		{"other_scheme", "Bearer " + join(sr, sig, se, skn)[len(Prefix):]},
		{"double_space", "SharedAccessSignature  " + join(sr, sig, se, skn)[len(Prefix):]},
		{"leading_space", " " + join(sr, sig, se, skn)},
		{"missing_sr", join(sig, se, skn)},
		{"missing_sig", join(sr, se, skn)},
		{"missing_se", join(sr, sig, skn)},
		{"missing_skn", join(sr, sig, se)},
		{"duplicate_sr", join(sr, sig, se, skn, "sr=sb%3A%2F%2Fns%2F")},
		{"duplicate_skn", join(sr, sig, se, skn, skn)},
		{"duplicate_se", join(sr, sig, se, skn, se)},
		{"duplicate_sig", join(sig, sr, sig, se, skn)},
		{"unknown_field", join(sr, sig, se, skn, "x=1")},
		{"upper_field", join("SR=sb%3A%2F%2Fns%2Fpg", sig, se, skn)},
		{"field_without_eq", join(sr, sig, se, skn, "junk")},
		{"trailing_amp", join(sr, sig, se, skn) + "&"},
		{"empty_sr", join("sr=", sig, se, skn)},
		{"empty_skn", join(sr, sig, se, "skn=")},
		{"se_negative", join(sr, sig, "se=-1", skn)},
		{"se_plus", join(sr, sig, "se=+1767229200", skn)},
		{"se_float", join(sr, sig, "se=1767229200.5", skn)},
		{"se_hex", join(sr, sig, "se=0x69", skn)},
		{"se_space", join(sr, sig, "se=1767229200 ", skn)},
		{"se_huge", join(sr, sig, "se=99999999999999999999999", skn)},
		{"sig_not_base64", join(sr, "sig=not*base64", se, skn)},
		{"sig_short", join(sr, "sig=AAAA", se, skn)},
		{"sig_noncanonical_base64", join(sr, "sig=FNh9hwB9VZbBR26YOXihpGLdq0Tap2L%2Bg3hcaNxsZ0F%3D", se, skn)},
		{"sig_bad_escape", join(sr, "sig=%zz", se, skn)},
		{"sr_bad_escape", join("sr=%G1", sig, se, skn)},
		{"skn_bad_escape", join(sr, sig, se, "skn=%")},
		{"huge", join(sr, sig, se, skn, "skn="+strings.Repeat("a", MaxTokenLen))},
		{"huge_valid_shape", join("sr=sb%3A%2F%2Fns%2F"+strings.Repeat("a", MaxTokenLen), sig, se, skn)},
	} {
		t.Run(c.name, func(t *testing.T) {
			tok, err := ParseToken(c.s)
			if !errors.Is(err, ErrMalformed) || tok != nil {
				t.Fatalf("ParseToken(%.80q) = %+v, %v; want ErrMalformed", c.s, tok, err)
			}
			v := &Verifier{Namespace: "ns", Now: at(0)}
			if _, err := v.Verify(c.s, "pg", Send, []Rule{{Name: "apps", Rights: Manage, Primary: "secret"}}); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Verify: %v, want ErrMalformed", err)
			}
		})
	}
}

// flipSig changes the first character of the token's signature to another
// base64 letter.
func flipSig(tok string) string {
	i := strings.Index(tok, "&sig=") + len("&sig=")
	c := byte('A')
	if tok[i] == 'A' {
		c = 'B'
	}
	return tok[:i] + string(c) + tok[i+1:]
}

func TestSignedWithEmptyKey(t *testing.T) {
	tok, err := ParseToken(NewToken("sb://ns/pg", "apps", "", time.Unix(2e9, 0)))
	if err != nil {
		t.Fatal(err)
	}
	if tok.SignedWith("") {
		t.Fatal("a token signed with the empty key must never verify")
	}
}

func TestErrorsAreDistinct(t *testing.T) {
	all := []error{ErrMalformed, ErrExpired, ErrUnknownKey, ErrBadSignature, ErrWrongResource, ErrNoRight}
	for i, a := range all {
		for j, b := range all {
			if (i == j) != errors.Is(a, b) {
				t.Errorf("errors.Is(%v, %v) = %v", a, b, errors.Is(a, b))
			}
		}
	}
}
