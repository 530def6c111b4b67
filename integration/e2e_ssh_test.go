package integration

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SSH: the server speaks first (its version banner), then a long-lived,
// interactive, multiplexed session.

// SSHD is a throwaway sshd on 127.0.0.1:Port: its own config, a fresh host
// key, public-key authentication only, for User with the key at UserKey.
type SSHD struct {
	Port    int
	User    string
	HostPub string // the host key's public half, "ssh-ed25519 AAAA... comment"
	UserKey string // private key file the client uses
	proc    *Proc
}

// startSSHD starts sshd in the foreground (-D -e) from a config of its own:
// a temporary host key, AuthorizedKeysFile pointing at a temporary file with
// a fresh user key, no passwords, no PAM, no StrictModes (the temp files are
// not in a home directory). It logs in the user running the test (root in
// CI: key-only root logins are allowed here). sshd must be started by its
// absolute path (it re-executes itself) and, as root, needs /run/sshd.
func startSSHD(t testing.TB) *SSHD {
	t.Helper()
	sshd := needProgram(t, "openssh-server", "sshd")
	keygen := needProgram(t, "openssh-client", "ssh-keygen")
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, k := range []string{"host_key", "user_key"} {
		if out, err := runResourceTool(t, time.Minute, nil, keygen, "-q", "-t", "ed25519", "-N", "", "-C", "hybrid-test-"+k, "-f", filepath.Join(dir, k)); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	hostPub, err := os.ReadFile(filepath.Join(dir, "host_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	userPub, err := os.ReadFile(filepath.Join(dir, "user_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	authKeys := writeFile(t, dir, "authorized_keys", string(userPub))
	if os.Geteuid() == 0 {
		// The privilege separation directory (the package's service
		// makes it at boot; nothing does in a container).
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := &SSHD{User: me.Username, HostPub: strings.TrimSpace(string(hostPub)), UserKey: filepath.Join(dir, "user_key")}
	for attempt := 1; ; attempt++ {
		s.Port = freePort(t)
		cfg := writeFile(t, dir, "sshd_config", fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile none
AuthorizedKeysFile %s
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers %s
UsePAM no
StrictModes no
PrintMotd no
X11Forwarding no
Subsystem sftp internal-sftp
LogLevel VERBOSE
`, s.Port, filepath.Join(dir, "host_key"), authKeys, s.User))
		start := time.Now()
		s.proc = startProcWith(t, ProcConfig{Label: fmt.Sprintf("sshd-%d", s.Port)}, sshd, "-D", "-e", "-f", cfg)
		err := e2eWaitOutput(s.proc, fmt.Sprintf("Server listening on 127.0.0.1 port %d", s.Port), 30*time.Second)
		if err == nil {
			t.Logf("sshd ready on 127.0.0.1:%d after %v", s.Port, time.Since(start).Round(time.Millisecond))
			return s
		}
		if s.proc.Exited() && attempt < 3 && e2eAddrInUse.MatchString(s.proc.Output()) {
			continue
		}
		t.Fatalf("sshd did not start: %v\n%s", err, tailLines(s.proc.Output(), 30))
	}
}

// sshClient holds what the ssh and scp clients need to reach an sshd at
// host:port without touching ~/.ssh: no config file, a known_hosts file of
// our own holding only the server's host key (checked strictly), our key.
type sshClient struct {
	ssh, scp   string
	host       string
	port       int
	user       string
	knownHosts string
	key        string
}

func (c *sshClient) opts() []string {
	return []string{
		"-F", "/dev/null",
		"-i", c.key,
		"-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none",
		"-o", "BatchMode=yes",
		"-o", "UserKnownHostsFile=" + c.knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "ConnectTimeout=15",
		"-o", "ServerAliveInterval=10",
		"-o", "LogLevel=ERROR",
	}
}

// sshArgs is the argv (after the ssh program) running command remotely.
func (c *sshClient) sshArgs(command string) []string {
	return append(append(c.opts(), "-p", strconv.Itoa(c.port), "-T", c.user+"@"+c.host), command)
}

// scpArgs copies from to (either may be "remote:path", meaning on the server).
func (c *sshClient) scpArgs(from, to string) []string {
	remote := func(s string) string {
		if p, ok := strings.CutPrefix(s, "remote:"); ok {
			return c.user + "@" + c.host + ":" + p
		}
		return s
	}
	return append(append(c.opts(), "-q", "-P", strconv.Itoa(c.port)), remote(from), remote(to))
}

// TestE2EResourceSSH: ssh runs commands through the tunnel, a long-lived
// interactive session stays usable while scp copies 50 MiB each way intact,
// and the client verifies the server's own host key all along.
func TestE2EResourceSSH(t *testing.T) {
	sshBin := needProgram(t, "openssh-client", "ssh")
	scpBin := needProgram(t, "openssh-client", "scp")
	s := startSSHD(t)
	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "ssh", Endpoint: fmt.Sprintf("127.0.0.1:%d", s.Port)}}})
	listen := tun.Listen["ssh"]
	dir := t.TempDir()
	c := &sshClient{ssh: sshBin, scp: scpBin, host: "127.0.0.2", port: e2ePort(t, listen), user: s.User,
		key: s.UserKey}
	// The app trusts the on-prem server's key under the name it dials.
	c.knownHosts = writeFile(t, dir, "known_hosts", fmt.Sprintf("[%s]:%d %s\n", c.host, c.port, s.HostPub))

	// A command: the server sees the agent as its client, on its own port.
	out, err := runResourceTool(t, time.Minute, nil, c.ssh, c.sshArgs(`echo "conn=$SSH_CONNECTION user=$(id -un)"`)...)
	if err != nil {
		t.Fatalf("ssh through the tunnel: %v\n%s", err, out)
	}
	want := regexp.MustCompile(`conn=127\.0\.0\.1 \d+ 127\.0\.0\.1 ` + strconv.Itoa(s.Port) + ` user=` + regexp.QuoteMeta(s.User))
	if !want.MatchString(out) {
		t.Fatalf("ssh through the tunnel: %q, want a match for %v", out, want)
	}
	t.Logf("ssh -p %d %s@%s: %s", c.port, c.user, c.host, strings.TrimSpace(out))
	// A host key other than the server's is rejected: the check is end to end.
	keygen := needProgram(t, "openssh-client", "ssh-keygen")
	if out, err := runResourceTool(t, time.Minute, nil, keygen, "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "other_key")); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	otherPub, err := os.ReadFile(filepath.Join(dir, "other_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	otherKH := writeFile(t, dir, "known_hosts_other", fmt.Sprintf("[%s]:%d %s", c.host, c.port, otherPub))
	bad := *c
	bad.knownHosts = otherKH
	out, err = runResourceTool(t, time.Minute, nil, c.ssh, bad.sshArgs("true")...)
	if err == nil || !strings.Contains(out, "HOST IDENTIFICATION HAS CHANGED") && !strings.Contains(out, "verification failed") {
		t.Errorf("ssh with a wrong known host key: want a host key failure, got %v\n%s", err, out)
	}

	// A long-lived interactive session: a line in, a line back, before,
	// during and after the transfers below.
	cmd := exec.Command(c.ssh, c.sshArgs(`while IFS= read -r l; do echo "got:$l"; done`)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sessionStart := time.Now()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	exchange := func(msg string) {
		t.Helper()
		start := time.Now()
		if _, err := io.WriteString(stdin, msg+"\n"); err != nil {
			t.Fatalf("interactive session: write: %v (stderr %s)", err, stderr.String())
		}
		select {
		case got, ok := <-lines:
			if !ok || got != "got:"+msg {
				t.Fatalf("interactive session: %q (open %v), want %q; stderr: %s", got, ok, "got:"+msg, stderr.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("interactive session: no answer to %q in 30 s", msg)
		}
		t.Logf("interactive session: round trip %q in %v", msg, time.Since(start).Round(time.Microsecond))
	}
	exchange("before the transfers")

	// scp 50 MiB up, then back down, in the same tunnel as the live session.
	const size = 50 << 20
	local := filepath.Join(dir, "payload.bin")
	resRandomFile(t, local, size)
	sum := resSHA256File(t, local)
	remoteDir := t.TempDir() // "remote": the server is on this machine
	remote := filepath.Join(remoteDir, "payload.bin")

	start := time.Now()
	if out, err := runResourceTool(t, 3*time.Minute, nil, c.scp, c.scpArgs(local, "remote:"+remote)...); err != nil {
		t.Fatalf("scp upload through the tunnel: %v\n%s", err, out)
	}
	took := time.Since(start)
	if got := resSHA256File(t, remote); got != sum {
		t.Fatalf("scp upload of 50 MiB: the server's copy has sha256 %s, want %s", got, sum)
	}
	t.Logf("scp upload 50 MiB through the tunnel: %v (%.0f MiB/s)", took.Round(time.Millisecond), resMiBps(size, took))
	exchange("between the transfers")

	// The server's own view of the file, over ssh.
	out, err = runResourceTool(t, time.Minute, nil, c.ssh, c.sshArgs("sha256sum "+remote)...)
	if err != nil || !strings.HasPrefix(out, sum+" ") {
		t.Errorf("ssh sha256sum of the uploaded file: %q (%v), want %s", out, err, sum)
	}

	back := filepath.Join(dir, "back.bin")
	start = time.Now()
	if out, err := runResourceTool(t, 3*time.Minute, nil, c.scp, c.scpArgs("remote:"+remote, back)...); err != nil {
		t.Fatalf("scp download through the tunnel: %v\n%s", err, out)
	}
	took = time.Since(start)
	if got := resSHA256File(t, back); got != sum {
		t.Fatalf("scp download of 50 MiB: sha256 %s, want %s", got, sum)
	}
	t.Logf("scp download 50 MiB through the tunnel: %v (%.0f MiB/s)", took.Round(time.Millisecond), resMiBps(size, took))
	exchange("after the transfers")

	// The session ends when the app ends it: EOF on stdin, exit status 0.
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("interactive session: exit %v; stderr: %s", err, stderr.String())
	}
	t.Logf("interactive session lasted %v", time.Since(sessionStart).Round(time.Millisecond))
	if _, ok := <-lines; ok {
		t.Errorf("interactive session: unexpected output after the last exchange")
	}
}
