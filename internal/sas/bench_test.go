package sas

import (
	"testing"
	"time"
)

// BenchmarkVerify checks a sender's token as the relay does for every
// stream: an HC with a listen rule and a send rule, a valid token for the
// send rule.
func BenchmarkVerify(b *testing.B) {
	rules := []Rule{
		{Name: "onprem", Rights: Listen, Primary: "listen-key-for-the-benchmark-0000"},
		{Name: "apps", Rights: Send, Primary: "send-key-for-the-benchmark-00000", Secondary: "send-key-next-for-the-bench-000"},
	}
	v := &Verifier{Namespace: "relay.example.com", Ports: []int{5671, 9352, 443}}
	token := NewToken(ResourceURI("relay.example.com", "postgres"), "apps", rules[1].Primary, time.Now().Add(time.Hour))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := v.Verify(token, "postgres", Send, rules); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewToken mints a token, as agents and proxies do for their
// channels and streams.
func BenchmarkNewToken(b *testing.B) {
	uri := ResourceURI("relay.example.com", "postgres")
	expiry := time.Now().Add(time.Hour)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		NewToken(uri, "apps", "send-key-for-the-benchmark-00000", expiry)
	}
}
