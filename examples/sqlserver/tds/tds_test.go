package main

import (
	"bytes"
	"encoding/hex"
	"net"
	"strings"
	"testing"
)

// TestClientPreloginBytes: the client's PRELOGIN has the layout of the
// Pre-Login request example in MS-TDS (47 bytes; VERSION, ENCRYPTION,
// INSTOPT, THREADID and MARS data at offsets 26, 32, 33, 34 and 38).
func TestClientPreloginBytes(t *testing.T) {
	var b bytes.Buffer
	if err := writePacket(&b, clientPrelogin(0)); err != nil {
		t.Fatal(err)
	}
	want := "1201002f00000100" + // header: PRELOGIN, EOM, 47 bytes, packet 1
		"00001a0006" + "0100200001" + "0200210001" + "0300220004" + "0400260001" + "ff" +
		"010000000000" + "02" + "00" + "00000000" + "00"
	if got := hex.EncodeToString(b.Bytes()); got != want {
		t.Fatalf("PRELOGIN\n got %s\nwant %s", got, want)
	}
}

// TestServerReply: the answer's layout and values, for each client.
func TestServerReply(t *testing.T) {
	tests := []struct {
		name   string
		client options
		inst   byte
		err    string
	}{
		{"default instance", options{optVersion: version{}.bytes(), optEncryption: {encryptNotSup}, optInstOpt: {0}}, 0, ""},
		{"encryption off", options{optVersion: version{}.bytes(), optEncryption: {encryptOff}}, 0, ""},
		{"named instance", options{optVersion: version{}.bytes(), optInstOpt: []byte("SQLEXPRESS\x00")}, 1, ""},
		{"encryption required", options{optVersion: version{}.bytes(), optEncryption: {encryptReq}}, 0, "requires encryption (ENCRYPT_REQ)"},
		{"no version", options{optEncryption: {encryptOff}}, 0, "no VERSION"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := serverReply(tt.client)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// 0F 00 07D0 0000: 15.0.2000.0; then NOT_SUP, the instance byte,
			// an empty THREADID, MARS off.
			want := "00001a0006" + "0100200001" + "0200210001" + "0300220000" + "0400220001" + "ff" +
				"0f0007d00000" + "02" + hex.EncodeToString([]byte{tt.inst}) + "00"
			if got := hex.EncodeToString(p.payload); p.typ != typeReply || got != want {
				t.Fatalf("type 0x%02x payload\n got %s\nwant %s", p.typ, got, want)
			}
		})
	}
}

func TestDecodeOptionsRefuses(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":         {},
		"no terminator": {0x00, 0x00, 0x05, 0x00, 0x00},
		"short entry":   {0x00, 0x00},
		"data past end": {0x00, 0x00, 0x06, 0x00, 0x09, 0xff},
		"duplicate":     {0x01, 0x00, 0x0b, 0x00, 0x01, 0x01, 0x00, 0x0b, 0x00, 0x01, 0xff, 0x02},
	} {
		if _, err := decodeOptions(b); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestExchange: the client against the responder over TCP.
func TestExchange(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		errc <- answer(c)
	}()
	var out bytes.Buffer
	if err := prelogin(&out, ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("responder: %v", err)
	}
	if want := "answer: TDS packet type 0x04, 43 bytes: server version 15.0.2000.0, ENCRYPT_NOT_SUP, the default instance answered, MARS off"; !strings.Contains(out.String(), want) {
		t.Fatalf("client printed %q, want %q", out.String(), want)
	}
}
