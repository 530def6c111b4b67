package integration

import (
	"testing"
	"time"
)

func TestE2ETransfer100MiB(t *testing.T) {
	resource := startSinkSource(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "bulk", Endpoint: resource}}})
	addr := tun.Listen["bulk"]
	const size = 100 << 20

	start := time.Now()
	sent, got := uploadAndHash(t, addr, size)
	if sent != got {
		t.Fatalf("upload of 100 MiB: the sink's sha256 %x differs from what was sent %x", got, sent)
	}
	t.Logf("upload 100 MiB: %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	want, gotD, n := downloadAndHash(t, addr, size)
	if n != size || want != gotD {
		t.Fatalf("download of 100 MiB: received %d bytes, sha256 %x, want %d bytes, %x", n, gotD, int64(size), want)
	}
	t.Logf("download 100 MiB: %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	sent, got = echoAndHash(t, addr, 16<<20)
	if sent != got {
		t.Fatalf("echo of 16 MiB: sha256 of the echo %x differs from what was sent %x", got, sent)
	}
	t.Logf("echo 16 MiB: %v", time.Since(start).Round(time.Millisecond))

	// The agent accounted for every byte of the three streams.
	var lines []auditLine
	waitFor(t, "three close lines for hc bulk in the audit log", 30*time.Second, func() bool {
		lines = e2eReadAudit(t, tun.Audit)
		return countAudit(lines, "close", "bulk") >= 3
	})
	var in, out int64
	for _, l := range lines {
		if l.Event == "close" && l.HC == "bulk" {
			in += l.BytesIn
			out += l.BytesOut
		}
	}
	// To the resource: 'U' + 100 MiB, 'D' + 8, 'E' + 16 MiB.
	// From it: 40 (digest, count), 100 MiB, 16 MiB.
	if wantIn, wantOut := int64(1+size+9+1+16<<20), int64(40+size+16<<20); in != wantIn || out != wantOut {
		t.Errorf("audit close lines count %d bytes to and %d from the resource, want %d and %d", in, out, wantIn, wantOut)
	}
}

func countAudit(lines []auditLine, event, hc string) int {
	n := 0
	for _, l := range lines {
		if l.Event == event && l.HC == hc {
			n++
		}
	}
	return n
}
