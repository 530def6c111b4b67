//go:build windows

package proxy

import "io/fs"

// fileOwner returns -1, -1: Windows files have ACLs, not a uid and gid, and
// the rename in writeHostsFile keeps the directory's inherited ACL.
func fileOwner(fs.FileInfo) (uid, gid int) { return -1, -1 }
