// Package safefile reads and opens the files a configuration names without
// trusting what they are: a FIFO, a device such as /dev/zero or a huge file
// could block the reader forever or exhaust its memory. Every role reads
// its config, keys, certificates and audit log through here.
package safefile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// MaxConfig bounds a config file (and what a reload reads): a real one is a
// few KiB.
const MaxConfig = 4 << 20

// ErrNotRegular is returned for a path that is not a regular file.
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge is returned for a file over the size limit.
var ErrTooLarge = errors.New("file too large")

// Read returns the contents of the regular file at path, refusing anything
// else (FIFO, device, directory, socket) and anything over max bytes. The
// file is opened without blocking (a FIFO with no writer would block an
// ordinary open) and checked on the open descriptor, so a swap between
// check and read cannot trick it.
func Read(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := regular(f, path); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s: %w (over %d bytes)", path, ErrTooLarge, max)
	}
	return data, nil
}

// OpenAppend opens path for appending, creating it with perm if missing,
// and refuses anything but a regular file (an audit log that is a FIFO
// would block the writer).
func OpenAppend(path string, perm os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NONBLOCK, perm)
	if err != nil {
		return nil, err
	}
	if err := regular(f, path); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func regular(f *os.File, path string) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: %w (it is a %s)", path, ErrNotRegular, kind(st.Mode()))
	}
	return nil
}

func kind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&os.ModeNamedPipe != 0:
		return "FIFO"
	case m&os.ModeCharDevice != 0:
		return "character device"
	case m&os.ModeDevice != 0:
		return "device"
	case m&os.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}
