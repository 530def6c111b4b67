//go:build unix

package rules

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSpecialFilesRefused: the config and the files it names are read only
// when they are regular files of a sane size; a FIFO or a device is refused
// at once with a clear error instead of blocking or eating memory.
func TestSpecialFilesRefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, 5<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	keyed := filepath.Join(dir, "keyed.yaml")
	os.WriteFile(keyed, []byte("agent:\n  relays: [127.0.0.1]\n  connections:\n    - {name: pg, endpoint: \"127.0.0.1:5432\", key_name: k, key_file: fifo}\n"), 0o600)
	devkey := filepath.Join(dir, "devkey.yaml")
	os.WriteFile(devkey, []byte("agent:\n  relays: [127.0.0.1]\n  connections:\n    - {name: pg, endpoint: \"127.0.0.1:5432\", key_name: k, key_file: /dev/zero}\n"), 0o600)
	tests := []struct{ path, want string }{
		{fifo, "not a regular file (it is a FIFO)"},
		{"/dev/zero", "not a regular file (it is a character device)"},
		{dir, "not a regular file (it is a directory)"},
		{big, "file too large"},
		{keyed, "is not a regular file"},
		{devkey, "is not a regular file"},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.path), func(t *testing.T) {
			done := make(chan error, 1)
			go func() { _, err := Load(tt.path); done <- err }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("err = %v, want %q", err, tt.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Load blocked")
			}
		})
	}
}
