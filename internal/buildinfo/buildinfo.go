// Package buildinfo holds the version and commit stamped into the binary at
// build time. The Makefile stamps both from git (make build, make dist):
//
//	go build -ldflags "-X github.com/hybridconn/hybrid/internal/buildinfo.Version=v1.2.3 \
//	    -X github.com/hybridconn/hybrid/internal/buildinfo.Commit=<sha>" ./cmd/hybrid
//
// so they do not depend on Go's own VCS stamping, which -buildvcs=false (set
// in some build environments) and builds outside a git checkout turn off.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version and Commit are set by the linker; they default to "dev" and "" (see
// CommitOrUnknown).
var (
	Version = "dev"
	Commit  = ""
)

// CommitOrUnknown returns Commit, or else the VCS revision Go recorded in the
// build info, or else "unknown".
func CommitOrUnknown() string {
	if Commit != "" {
		return Commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// String returns the one line `hybrid version` prints: version, commit, Go
// version and platform, as in "hybrid v1.2.3 (commit 0123abc…, go1.26.8
// linux/amd64)".
func String() string {
	return fmt.Sprintf("hybrid %s (commit %s, %s %s/%s)", Version, CommitOrUnknown(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
