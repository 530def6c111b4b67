package wire

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hybridconn/hybrid/internal/sas"
	"github.com/hybridconn/hybrid/internal/status"
)

// The byte-level example of docs/protocol.md is checked here against the real
// encoder. The bytes live only in the document: these tests read it, find
// each block after its "<!-- wire-example:NAME -->" marker, and compare. A
// change to the encoder, or an edit of the example, that makes the two
// disagree fails the test.

const protocolDoc = "../../docs/protocol.md"

// exampleSession is the session id of the document's example frames.
var exampleSession = SessionID{0x9f, 0x3c, 0x41, 0x07, 0x5e, 0xa2, 0x19, 0xd0, 0x6b, 0x44, 0xc1, 0x8e, 0x27, 0xf0, 0x53, 0xb9}

// exampleOpen returns what the document's example sender writes: the preface
// and its OPEN, with a token minted by the real SAS code.
func exampleOpen() []byte {
	token := sas.NewToken(sas.ResourceURI("relay.example.com", "postgres"), "apps",
		"0123456789abcdef0123456789abcdef", time.Unix(1767225600, 0))
	sslRequest := []byte{0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x2f}
	return Append([]byte(Preface), &Open{HC: "postgres", Token: token, Target: "127.0.0.1:5432",
		Session: exampleSession, Early: sslRequest})
}

// exampleFrames are the document's "other frames", in its order.
func exampleFrames() []Frame {
	return []Frame{
		&Hello{Role: RoleAgent, Name: "onprem-1", Version: "2.0.0"},
		&Welcome{Session: exampleSession, Relay: "relay-a", PingMS: 5000},
		&Ping{Nonce: 1},
		&Park{Session: exampleSession},
		&Progress{},
		&Result{Code: status.OK},
		&Result{Code: status.NoListener, Msg: "x"},
	}
}

// docBlock returns the lines after the marker for name in the document:
// the fenced block that follows it, or the table rows that follow it.
func docBlock(t *testing.T, name string) []string {
	t.Helper()
	doc, err := os.ReadFile(filepath.FromSlash(protocolDoc))
	if err != nil {
		t.Fatalf("reading the protocol document: %v", err)
	}
	marker := "<!-- wire-example:" + name + " -->"
	_, rest, ok := strings.Cut(string(doc), marker+"\n")
	if !ok {
		t.Fatalf("%s: no %q marker", protocolDoc, marker)
	}
	lines := strings.Split(rest, "\n")
	if strings.HasPrefix(lines[0], "```") { // a fenced block
		for i, l := range lines[1:] {
			if strings.HasPrefix(l, "```") {
				return lines[1 : i+1]
			}
		}
		t.Fatalf("%s: block %q is not closed", protocolDoc, name)
	}
	var rows []string // a table
	for _, l := range lines {
		if !strings.HasPrefix(l, "|") {
			break
		}
		rows = append(rows, l)
	}
	if len(rows) == 0 {
		t.Fatalf("%s: nothing after the %q marker", protocolDoc, marker)
	}
	return rows
}

// TestDocExampleHexDump compares the document's hex dump of the example OPEN
// with hex.Dump of what the encoder writes.
func TestDocExampleHexDump(t *testing.T) {
	got := strings.Join(docBlock(t, "open"), "\n")
	want := strings.TrimSuffix(hex.Dump(exampleOpen()), "\n")
	if got != want {
		t.Fatalf("docs/protocol.md's example differs from the encoder's output; it should read:\n%s", want)
	}
}

var hexByte = regexp.MustCompile(`^[0-9a-f]{2}$`)

// TestDocExampleFields checks the field table under the hex dump: each row's
// offset must hold the bytes its second column starts with.
func TestDocExampleFields(t *testing.T) {
	b := exampleOpen()
	rows := docBlock(t, "open-fields")
	n := 0
	for _, row := range rows[2:] { // after the header and its rule
		cols := strings.Split(row, "|")
		if len(cols) < 4 {
			t.Fatalf("bad row %q", row)
		}
		off, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(cols[1]), "0x"), 16, 32)
		if err != nil {
			t.Fatalf("row %q: offset: %v", row, err)
		}
		_, lit, ok := strings.Cut(cols[2], "`")
		lit, _, ok2 := strings.Cut(lit, "`")
		if !ok || !ok2 {
			t.Fatalf("row %q: no bytes in backquotes", row)
		}
		want, err := hex.DecodeString(strings.ReplaceAll(lit, " ", ""))
		if err != nil {
			t.Fatalf("row %q: %v", row, err)
		}
		if int(off)+len(want) > len(b) || !bytes.Equal(b[off:int(off)+len(want)], want) {
			t.Errorf("row %q: the encoder wrote % x at 0x%02x", row, b[off:min(int(off)+len(want), len(b))], off)
		}
		n++
	}
	if n < 8 {
		t.Fatalf("only %d field rows", n)
	}
}

// TestDocExampleFrames checks the "other frames" block: each entry is hex
// bytes followed by the frame's name; lines with bytes only continue the
// entry above.
func TestDocExampleFrames(t *testing.T) {
	type entry struct {
		bytes []byte
		desc  string
	}
	var entries []entry
	for _, line := range docBlock(t, "frames") {
		var b []byte
		fields := strings.Fields(line)
		i := 0
		for ; i < len(fields) && hexByte.MatchString(fields[i]); i++ {
			x, _ := hex.DecodeString(fields[i])
			b = append(b, x...)
		}
		desc := strings.Join(fields[i:], " ")
		switch {
		case desc != "":
			entries = append(entries, entry{b, desc})
		case len(entries) > 0:
			entries[len(entries)-1].bytes = append(entries[len(entries)-1].bytes, b...)
		default:
			t.Fatalf("line %q continues nothing", line)
		}
	}
	frames := exampleFrames()
	if len(entries) != len(frames) {
		t.Fatalf("the document lists %d frames, the test %d", len(entries), len(frames))
	}
	for i, f := range frames {
		e := entries[i]
		if !strings.HasPrefix(e.desc, f.Type().String()) {
			t.Errorf("entry %d is %q, want a %s", i, e.desc, f.Type())
		}
		if want := Append(nil, f); !bytes.Equal(e.bytes, want) {
			t.Errorf("%s: the document has % x, the encoder writes % x", e.desc, e.bytes, want)
		}
	}
}
