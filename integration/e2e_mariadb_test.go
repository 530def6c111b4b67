package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// MariaDB (the MySQL protocol: the server speaks first, with a greeting that
// carries the salt the client's password scramble needs).

const (
	mariadbUser     = "app"
	mariadbPassword = "app-secret"
	mariadbDB       = "shop"
)

// MariaDB is a throwaway server on 127.0.0.1:Port with a password user
// mariadbUser that may connect from anywhere.
type MariaDB struct {
	Port int
	proc *Proc
}

// startMariaDB initialises a throwaway datadir (mariadb-install-db) and starts
// mariadbd on 127.0.0.1:port (as the mysql OS user when we are root: it will
// not run as root), with an init file that creates the app's user and
// database. It is stopped (SIGTERM: a clean shutdown) when the test ends.
func startMariaDB(t testing.TB, port int) *MariaDB {
	t.Helper()
	installDB := needProgram(t, "mariadb-server", "mariadb-install-db", "mysql_install_db")
	mariadbd := needProgram(t, "mariadb-server", "mariadbd", "mysqld")
	cred, uid, gid := serviceUser(t, "mysql", "mariadb-server")
	base := serviceDir(t, "hybrid-mariadb-", uid, gid)
	data := filepath.Join(base, "data")

	start := time.Now()
	cmd := []string{installDB, "--no-defaults", "--datadir=" + data, "--auth-root-authentication-method=normal", "--skip-test-db"}
	p := startProcWith(t, ProcConfig{Label: "mariadb-install-db", Dir: base, Credential: cred}, cmd[0], cmd[1:]...)
	if code := p.Wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("mariadb-install-db: exit %d\n%s", code, tailLines(p.Output(), 30))
	}
	t.Logf("mariadb-install-db took %v", time.Since(start).Round(time.Millisecond))

	init := writeFile(t, base, "init.sql", fmt.Sprintf(`CREATE USER IF NOT EXISTS '%[1]s'@'%%' IDENTIFIED BY '%[2]s';
GRANT ALL PRIVILEGES ON *.* TO '%[1]s'@'%%';
CREATE DATABASE IF NOT EXISTS %[3]s;
`, mariadbUser, mariadbPassword, mariadbDB))
	if err := os.Chmod(init, 0o644); err != nil {
		t.Fatal(err)
	}

	start = time.Now()
	m := &MariaDB{Port: port}
	m.proc = startProcWith(t, ProcConfig{
		Label:       fmt.Sprintf("mariadbd-%d", port),
		Dir:         base,
		StopTimeout: time.Minute,
		Credential:  cred,
		StopSignal:  syscall.SIGTERM,
	}, mariadbd,
		"--no-defaults",
		"--datadir="+data,
		"--port="+strconv.Itoa(port),
		"--bind-address=127.0.0.1",
		"--socket="+filepath.Join(base, "mysqld.sock"),
		"--pid-file="+filepath.Join(base, "mysqld.pid"),
		"--tmpdir="+base,
		"--init-file="+init,
		"--skip-name-resolve",
		"--skip-log-bin",
		"--innodb-buffer-pool-size=64M",
		"--innodb-flush-log-at-trx-commit=0",
		"--max-connections=200",
	)
	m.proc.WaitLog(t, "ready for connections", time.Minute)
	t.Logf("mariadbd ready on 127.0.0.1:%d after %v", port, time.Since(start).Round(time.Millisecond))
	return m
}

// mariadbArgs are the client options an app would use, reaching the server
// at host:port over TCP with the app's user and password.
func mariadbArgs(host string, port int) []string {
	return []string{"--no-defaults", "--protocol=TCP", "-h", host, "-P", strconv.Itoa(port),
		"-u", mariadbUser, "-p" + mariadbPassword}
}

// mariadbQuery runs the mariadb client (batch mode, no column names) with sql
// and returns its trimmed output.
func mariadbQuery(t testing.TB, client, host string, port int, sql string) (string, error) {
	t.Helper()
	args := append(mariadbArgs(host, port), "--connect-timeout=15", "-N", "-B", mariadbDB, "-e", sql)
	out, err := runResourceTool(t, time.Minute, nil, client, args...)
	return strings.TrimSpace(out), err
}

var reSlapAvg = regexp.MustCompile(`Average number of seconds to run all queries: ([0-9.]+) seconds`)

// TestE2EResourceMariaDB: the mariadb client runs queries through the tunnel
// with the connection string unchanged but for the host (the proxy forwards
// the server's own port on 127.0.0.2), and mysqlslap runs concurrent clients
// with no error.
func TestE2EResourceMariaDB(t *testing.T) {
	client := needProgram(t, "mariadb-client", "mariadb", "mysql")
	slap := needProgram(t, "mariadb-client", "mariadb-slap", "mysqlslap")
	port := pairedPort(t)
	db := startMariaDB(t, port)

	// Directly first: what the app would see on the local network.
	direct, err := mariadbQuery(t, client, "127.0.0.1", db.Port, "SELECT @@port, VERSION()")
	if err != nil {
		t.Fatalf("mariadb client directly: %v\n%s", err, direct)
	}

	tun := startTunnel(t, tunnelOpts{HCs: []hcDef{{Name: "mariadb", Endpoint: fmt.Sprintf("127.0.0.1:%d", port)}}})
	startProxyAt(t, tun, []proxyMap{{Name: "mariadb"}}, []string{fmt.Sprintf("127.0.0.2:%d", port)})
	host := "127.0.0.2"

	out, err := mariadbQuery(t, client, host, port, "SELECT @@port, VERSION()")
	if err != nil || out != direct {
		t.Fatalf("SELECT @@port, VERSION() through the tunnel: %q (%v), want %q as directly", out, err, direct)
	}
	t.Logf("mariadb -h %s -P %d through the tunnel: %s", host, port, out)

	// A table written and read back, in one session.
	out, err = mariadbQuery(t, client, host, port, `CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(64) NOT NULL);
		INSERT INTO orders SELECT seq, MD5(seq) FROM seq_1_to_5000;
		SELECT COUNT(*), MD5(GROUP_CONCAT(item ORDER BY id SEPARATOR ',')) FROM orders`)
	want, werr := mariadbQuery(t, client, "127.0.0.1", port,
		"SELECT COUNT(*), MD5(GROUP_CONCAT(MD5(seq) ORDER BY seq SEPARATOR ',')) FROM seq_1_to_5000")
	if err != nil || werr != nil || out != want || !strings.HasPrefix(out, "5000\t") {
		t.Fatalf("create/insert/select through the tunnel: %q (%v), want %q (%v)", out, err, want, werr)
	}
	// A result of 2 MB, spanning many packets.
	out, err = mariadbQuery(t, client, host, port, "SELECT REPEAT('x', 1000) FROM seq_1_to_2000")
	if err != nil || len(out) != 2000*1001-1 || strings.Trim(out, "x\n") != "" {
		t.Fatalf("2 MB result through the tunnel: %d bytes (%v), want %d", len(out), err, 2000*1001-1)
	}
	// A wrong password is refused by the server itself, through the tunnel:
	// authentication is between app and resource.
	bad := append(mariadbArgs(host, port), "-p"+"wrong", "-e", "SELECT 1")
	out, err = runResourceTool(t, time.Minute, nil, client, bad...)
	if err == nil || !strings.Contains(out, "Access denied") {
		t.Errorf("wrong password through the tunnel: want the server's Access denied, got %v\n%s", err, out)
	}

	// Concurrent clients: mysqlslap, 32 clients, mixed reads and writes.
	const clients, queries, iterations = 32, 6400, 3
	start := time.Now()
	args := append(mariadbArgs(host, port),
		fmt.Sprintf("--concurrency=%d", clients), fmt.Sprintf("--number-of-queries=%d", queries),
		fmt.Sprintf("--iterations=%d", iterations),
		"--auto-generate-sql", "--auto-generate-sql-load-type=mixed", "--auto-generate-sql-add-autoincrement",
		"--create-schema=slap")
	out, err = runResourceTool(t, 5*time.Minute, nil, slap, args...)
	took := time.Since(start)
	if err != nil || strings.Contains(strings.ToLower(out), "error") {
		t.Fatalf("mysqlslap through the tunnel: %v\n%s", err, out)
	}
	m := reSlapAvg.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("mysqlslap: no report\n%s", out)
	}
	avg, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("mysqlslap %d clients, %d queries x %d iterations through the tunnel: 0 errors, %.3f s average per iteration (%.0f queries/s), %v in all",
		clients, queries, iterations, avg, float64(queries)/avg, took.Round(time.Millisecond))

	// The agent audited the mysqlslap sessions as streams with bytes both ways.
	lines := e2eWaitAudit(t, tun.Audit, "close lines for hc mariadb", 30*time.Second, func(l auditLine) bool {
		return l.Event == "close" && l.HC == "mariadb" && l.BytesIn > 0 && l.BytesOut > 0
	})
	if n := countAudit(lines, "open", "mariadb"); n < clients*iterations {
		t.Errorf("audit: %d open lines for mariadb, want at least %d", n, clients*iterations)
	}
}
