package rules

import "testing"

func TestHostsFileFor(t *testing.T) {
	tests := []struct {
		name, goos, systemRoot, want string
	}{
		{"linux", "linux", "", "/etc/hosts"},
		{"darwin", "darwin", "", "/etc/hosts"},
		{"windows", "windows", `C:\Windows`, `C:\Windows\System32\drivers\etc\hosts`},
		{"windows on D:", "windows", `D:\WINNT\`, `D:\WINNT\System32\drivers\etc\hosts`},
		{"windows without SystemRoot", "windows", "", `C:\Windows\System32\drivers\etc\hosts`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string {
				if k == "SystemRoot" {
					return tt.systemRoot
				}
				return ""
			}
			if got := hostsFileFor(tt.goos, getenv); got != tt.want {
				t.Errorf("hostsFileFor(%q) = %q, want %q", tt.goos, got, tt.want)
			}
		})
	}
}
