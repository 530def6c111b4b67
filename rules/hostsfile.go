package rules

import (
	"os"
	"runtime"
	"strings"
)

// DefaultHostsFile returns the default of proxy.hosts.file: the system's
// hosts file, /etc/hosts on Linux and macOS and
// %SystemRoot%\System32\drivers\etc\hosts on Windows.
func DefaultHostsFile() string { return hostsFileFor(runtime.GOOS, os.Getenv) }

// hostsFileFor is DefaultHostsFile for the platform goos, reading the
// environment through getenv (so every platform can be tested anywhere).
func hostsFileFor(goos string, getenv func(string) string) string {
	if goos != "windows" {
		return "/etc/hosts"
	}
	root := strings.TrimRight(getenv("SystemRoot"), `\/`)
	if root == "" {
		root = `C:\Windows` // SystemRoot is always set on Windows; this is a last resort
	}
	return root + `\System32\drivers\etc\hosts`
}
