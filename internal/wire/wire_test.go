package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/hybridconn/hybrid/internal/status"
)

func sampleFrames() []Frame {
	id := StreamID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	return []Frame{
		&Hello{Role: RoleAgent, Name: "onprem-1", Version: "1.2.3"},
		&Welcome{Session: SessionID{9, 9}, Relay: "relay-a", PingMS: 5000},
		&GoAway{Code: status.ShuttingDown, Msg: "relay is stopping"},
		&Health{HC: "postgres", Code: status.Unreachable, Msg: "dial: refused"},
		&Ack{ID: id},
		&Park{Session: SessionID{1}},
		&Warm{Session: SessionID{2}},
		&Progress{},
		&Open{HC: "postgres", Token: "tok", Target: "h:1", Session: SessionID{3}, Early: []byte("GET / HTTP/1.1\r\n")},
		&Accept{ID: id, HC: "postgres", Early: []byte{0, 1, 2}},
		&PeerHello{Relay: "relay-b", Nonce: [16]byte{1}},
		&PeerChallenge{Relay: "relay-a", Nonce: [16]byte{2}, MAC: [32]byte{3}},
		&PeerAuth{MAC: [32]byte{4}},
		&PeerOpen{HC: "pg", Target: "db:5432", SenderKey: "apps", Value: "ab12", Expiry: 1700000000, SenderAddr: "10.0.0.1:5", Early: []byte("x"), SenderRelay: "relay-b", Session: SessionID{7},
			Headers: `{"X-A":"1"}`, Tracking: "t", Suffix: "/orders/42", Query: "a=1", Azure: true},
		&PeerPipe{Kind: PipeHTTP},
		&Attach{HC: "postgres", Token: "SharedAccessSignature sr=x&sig=y&se=1&skn=k"},
		&Detach{HC: "postgres"},
		&Renew{HC: "sql/suffix", Token: "t"},
		&Attached{HC: "postgres", Code: status.Forbidden, Msg: "no listen right"},
		&Ping{Nonce: 1<<63 + 5},
		&Pong{Nonce: 7},
		&Accept{ID: id, HC: "postgres", Target: "db.corp.local:5432", SenderKey: "apps", SenderAddr: "10.0.0.1:5555"},
		&Reject{ID: id, Code: status.Refused, Msg: "not published"},
		&Open{HC: "postgres", Token: "tok", Target: ""},
		&Join{ID: id, HC: "postgres", Token: "tok"},
		&Result{Code: status.OK},
		&Result{Code: status.Unreachable, Msg: "dial: refused"},
		&Check{HC: "postgres", Token: "tok", Right: 2},
		&Hello{}, // empty strings
	}
}

// TestRoundTripPipe writes every frame type over net.Pipe and reads it back.
func TestRoundTripPipe(t *testing.T) {
	for _, f := range sampleFrames() {
		t.Run(f.Type().String(), func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			errc := make(chan error, 1)
			go func() { errc <- Write(a, f) }()
			got, err := Read(b)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("Write: %v", err)
			}
			if !reflect.DeepEqual(got, f) {
				t.Fatalf("got %#v, want %#v", got, f)
			}
		})
	}
}

// TestReadDoesNotOverRead checks the property the data channel relies on:
// bytes after a frame stay in the reader for the raw stream.
func TestReadDoesNotOverRead(t *testing.T) {
	buf := bytes.NewBufferString(Preface)
	buf.Write(Append(nil, &Result{}))
	buf.WriteString("raw bytes after the handshake")
	if err := ReadPreface(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(buf); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != "raw bytes after the handshake" {
		t.Fatalf("left %q", got)
	}
}

func TestRejects(t *testing.T) {
	hdr := func(typ Type, n uint32) []byte {
		b := []byte{byte(typ), 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], n)
		return b
	}
	valid := Append(nil, &Open{HC: "postgres", Token: "tok", Target: "h:1"})
	longStr := binary.BigEndian.AppendUint16(nil, MaxString+1)
	longStr = append(longStr, strings.Repeat("x", MaxString+1)...)
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, io.EOF},
		{"short header", []byte{byte(TypeOpen), 0}, io.ErrUnexpectedEOF},
		{"truncated payload", valid[:len(valid)-1], io.ErrUnexpectedEOF},
		{"oversize length", hdr(TypeOpen, MaxPayload+1), ErrTooLarge},
		{"huge length", hdr(TypeOpen, 0xffffffff), ErrTooLarge},
		{"unknown type", hdr(0x7f, 0), ErrUnknown},
		{"field past payload", append(hdr(TypeDetach, 2), 0, 9), ErrMalformed},
		{"trailing bytes", append(hdr(TypeDetach, 3), 0, 0, 1), ErrMalformed},
		{"string over cap", append(hdr(TypeDetach, uint32(len(longStr))), longStr...), ErrMalformed},
		{"unknown code", append(hdr(TypeResult, 3), 200, 0, 0), ErrMalformed},
		{"park with trailing bytes", append(hdr(TypePark, 20), make([]byte, 20)...), ErrMalformed},
		{"bytes length over cap", append(append(hdr(TypeOpen, 2+2+2+16+4), make([]byte, 6+16)...), 0, 1, 0, 0), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Read(bytes.NewReader(tt.in))
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestPreface(t *testing.T) {
	for _, in := range []string{"GET / HTTP/1.1\r\n", "\x16\x03\x01\x02", "HYB\x03", ""} {
		if err := ReadPreface(strings.NewReader(in)); err == nil {
			t.Errorf("preface %q accepted", in)
		}
	}
	if err := ReadPreface(strings.NewReader(Preface)); err != nil {
		t.Errorf("valid preface refused: %v", err)
	}
	if err := ReadPreface(strings.NewReader(PrefaceV1)); !errors.Is(err, ErrOldVersion) {
		t.Errorf("version 1 preface: %v, want ErrOldVersion", err)
	}
}

func TestAppendTruncatesLongStrings(t *testing.T) {
	b := Append(nil, &Detach{HC: strings.Repeat("a", MaxString+10)})
	f, err := Read(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("a frame we wrote was refused: %v", err)
	}
	if n := len(f.(*Detach).HC); n != MaxString {
		t.Fatalf("len %d", n)
	}
}

// FuzzRead feeds arbitrary bytes to the decoder: it must never panic, and
// whatever it accepts must re-encode to a frame that decodes the same.
func FuzzRead(f *testing.F) {
	for _, fr := range sampleFrames() {
		f.Add(Append(nil, fr))
	}
	f.Add([]byte{0x21, 0, 0, 0, 2, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		fr, err := Read(bytes.NewReader(in))
		if err != nil {
			return
		}
		again, err := Read(bytes.NewReader(Append(nil, fr)))
		if err != nil {
			t.Fatalf("re-encoded %s refused: %v", fr.Type(), err)
		}
		if !reflect.DeepEqual(fr, again) {
			t.Fatalf("round trip changed %#v to %#v", fr, again)
		}
	})
}
