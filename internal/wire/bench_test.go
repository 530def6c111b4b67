package wire

import (
	"bytes"
	"strings"
	"testing"
)

// benchFrames are the handshake frames of a stream as they travel: an
// OPEN carrying a SAS token and the app's first bytes (a TLS ClientHello's
// size), and the ACCEPT the agent gets for it.
func benchFrames() []Frame {
	token := "SharedAccessSignature sr=sb%3A%2F%2Frelay.example.com%2Fpostgres&sig=" +
		strings.Repeat("A", 43) + "%3D&se=1893456000&skn=apps"
	early := bytes.Repeat([]byte{0x16}, 512)
	return []Frame{
		&Open{HC: "postgres", Token: token, Session: SessionID{7}, Early: early},
		&Accept{ID: StreamID{1, 2, 3}, HC: "postgres", Target: "127.0.0.1:5432", SenderKey: "apps",
			SenderAddr: "10.1.2.3:51234", Early: early},
	}
}

// BenchmarkAppend encodes each handshake frame into a reused buffer.
func BenchmarkAppend(b *testing.B) {
	for _, f := range benchFrames() {
		b.Run(f.Type().String(), func(b *testing.B) {
			buf := Append(nil, f)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				buf = Append(buf[:0], f)
			}
		})
	}
}

// BenchmarkRead decodes each handshake frame from memory, as a relay or
// an agent reads it off a connection.
func BenchmarkRead(b *testing.B) {
	for _, f := range benchFrames() {
		b.Run(f.Type().String(), func(b *testing.B) {
			enc := Append(nil, f)
			r := bytes.NewReader(enc)
			b.SetBytes(int64(len(enc)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				r.Reset(enc)
				if _, err := Read(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
