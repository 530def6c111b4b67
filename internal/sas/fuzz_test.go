package sas

import (
	"strings"
	"testing"
	"time"
)

// FuzzParseToken checks that parsing and verifying arbitrary input never
// panics, and that whatever ParseToken accepts is consistent.
func FuzzParseToken(f *testing.F) {
	exp := time.Unix(1767229200, 0)
	for _, s := range []string{
		NewToken("sb://ns/pg", "apps", "secret", exp),
		NewToken("wss://ns:8443/$hc/sql/suffix?x#y", "my key", "clé", exp),
		"SharedAccessSignature sr=http%3a%2f%2frelay.example.com%2fpostgres%2f&sig=%2BDKG3UOYiHTLJVcjELT6v17Meh0nqCF7bS8cNxR7HJY%3D&se=1767229200&skn=apps",
		"SharedAccessSignature sr=&sig=&se=&skn=",
		"SharedAccessSignature sr=a&sr=b",
		"SharedAccessSignature ",
		"",
		"SharedAccessSignature sr=%&sig=%zz&se=-1&skn=%",
	} {
		f.Add(s, "pg")
	}
	rules := []Rule{{Name: "apps", Rights: Manage, Primary: "secret", Secondary: "clé"}, {Name: "my key", Rights: Listen, Primary: "clé"}}
	f.Fuzz(func(t *testing.T, s, hc string) {
		tok, err := ParseToken(s)
		if err == nil {
			if len(s) > MaxTokenLen || !strings.HasPrefix(s, Prefix) {
				t.Fatalf("accepted %q", s)
			}
			if tok.Resource == "" || tok.KeyName == "" || tok.Signature == "" || tok.Expiry.Unix() < 0 {
				t.Fatalf("accepted empty or negative field: %+v", tok)
			}
			_ = tok.SignedWith("secret")
			_ = tok.SignedWith("")
		} else if tok != nil {
			t.Fatalf("non-nil token with error %v", err)
		}
		v := &Verifier{Namespace: "ns", Ports: []int{8443}, Now: func() time.Time { return exp.Add(-time.Second) }}
		m, err := v.Verify(s, hc, Send, rules)
		if err == nil && (m.Rule != "apps" || !Covers(tok.Resource, "ns", hc, v.Ports)) {
			t.Fatalf("Verify(%q, %q) = %+v", s, hc, m)
		}
		_ = Covers(s, "ns", hc, []int{8443})
	})
}
