// Package buildinfo holds the version stamped into the binary at build time
// (go build -ldflags "-X github.com/hybridconn/hybrid/internal/buildinfo.Version=...").
package buildinfo

import "runtime/debug"

// Version and Commit are set by the linker; they default to "dev" and the
// VCS revision Go recorded, if any.
var (
	Version = "dev"
	Commit  = ""
)

// CommitOrUnknown returns Commit, or the VCS revision from the build info.
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
