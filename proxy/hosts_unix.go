//go:build !windows

package proxy

import (
	"io/fs"
	"syscall"
)

// fileOwner returns the owner of the file fi describes, so that a rewritten
// hosts file keeps it; -1, -1 when the platform does not say.
func fileOwner(fi fs.FileInfo) (uid, gid int) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return -1, -1
}
