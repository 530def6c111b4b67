#!/usr/bin/env bash
# run.sh — MySQL/MariaDB through hybrid, end to end, on one machine.
#
#   mariadb ─► proxy 127.0.0.2:23306 ═► relay 127.0.0.1:15672/19353 ◄═ agent ─► MariaDB 127.0.0.1:23306
#
# Builds hybrid, starts a throwaway MariaDB (the "on-prem" resource) with a
# password user, makes fresh keys, runs relay, agent and proxy as three
# processes from relay.yaml, agent.yaml and proxy.yaml (this directory), talks
# to the database with the mariadb client and mysqlslap through the proxy,
# shows the agent's audit log, and cleans everything up.
#
# Needs: go, MariaDB's server (mariadbd, mariadb-install-db; Debian package
# mariadb-server) and client (mariadb, mariadb-slap; mariadb-client), Linux
# (127.0.0.2 is a loopback address there). KEEP=1 keeps the temp dir.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

DB_PORT=23306                                  # agent.yaml: endpoint 127.0.0.1:23306
PROXY_HOST=127.0.0.2 PROXY_PORT=23306          # proxy.yaml: listen (the same port)
RELAY_PORTS=(15672 19353 18083)                # relay.yaml: control, data, http
DB_USER=app DB_PASSWORD=app-secret DB_NAME=shop

if [[ -t 1 ]]; then
	say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
	say() { printf '\n== %s\n' "$*"; }
fi
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

# listening HOST PORT: true when something accepts TCP connections there.
listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# bound HOST PORT: true when a socket listens on HOST:PORT (without connecting:
# a probe connection to the proxy would be a real stream through the tunnel).
bound() { ss -Hltn "sport = :$2" 2>/dev/null | grep -qF "$1:$2"; }

# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds, or fail.
wait_for() {
	local what=$1 secs=$2; shift 2
	local i
	for ((i = 0; i < secs * 10; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	die "timed out after ${secs}s waiting for $what"
}

# find_prog NAME...: the first of NAME... on PATH or in /usr/sbin, /usr/bin.
find_prog() {
	local n d
	for n in "$@"; do
		command -v "$n" 2>/dev/null && return 0
		for d in /usr/sbin /usr/bin /usr/local/sbin /sbin; do
			[[ -x $d/$n ]] && { echo "$d/$n"; return 0; }
		done
	done
	return 1
}

# ---------------------------------------------------------------- preflight
mariadbd=$(find_prog mariadbd mysqld) || die "mariadbd not found (Debian: apt-get install mariadb-server)"
install_db=$(find_prog mariadb-install-db mysql_install_db) || die "mariadb-install-db not found (mariadb-server)"
client=$(find_prog mariadb mysql) || die "the mariadb client not found (Debian: apt-get install mariadb-client)"
slap=$(find_prog mariadb-slap mysqlslap) || die "mariadb-slap/mysqlslap not found (mariadb-client)"
command -v go >/dev/null || die "go not found"

for p in "${RELAY_PORTS[@]}" "$DB_PORT"; do
	! listening 127.0.0.1 "$p" || die "127.0.0.1:$p is in use; this example uses fixed ports (see the yaml files)"
done
! listening "$PROXY_HOST" "$PROXY_PORT" || die "$PROXY_HOST:$PROXY_PORT is in use"

# MariaDB will not run as root: then run it as the mysql user.
as_db=()
if [[ $EUID -eq 0 ]]; then
	id mysql >/dev/null 2>&1 || die "running as root, but there is no mysql user to run MariaDB as"
	as_db=(runuser -u mysql --)
fi

# ------------------------------------------------------------ setup/cleanup
tmp=$(mktemp -d "${TMPDIR:-/tmp}/hybrid-mysql.XXXXXX")
pids=()
db_pid=

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	# Stop the roles app side first: proxy, agent, relay; then the database.
	local pid i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null
	done
	for pid in "${pids[@]}"; do
		for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [[ -n $db_pid ]]; then
		# SIGTERM is a clean shutdown. $db_pid may be runuser: signal the
		# server itself, by its pid file.
		kill -TERM "$(cat "$tmp/db/mysqld.pid" 2>/dev/null || echo "$db_pid")" 2>/dev/null
		for ((i = 0; i < 300; i++)); do kill -0 "$db_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$db_pid" 2>/dev/null
		wait "$db_pid" 2>/dev/null
	fi
	if ((rc != 0)); then
		for f in relay.log agent.log proxy.log db/mariadbd.log; do
			[[ -s $tmp/$f ]] || continue
			printf '\n--- last lines of %s ---\n' "$f" >&2
			tail -n 20 "$tmp/$f" >&2
		done
	fi
	if [[ ${KEEP:-} == 1 ]]; then
		echo "kept $tmp"
	else
		rm -rf "$tmp"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------- build
say "building hybrid"
(cd "$root" && go build -o "$tmp/hybrid" ./cmd/hybrid)
hybrid=$tmp/hybrid
"$hybrid" version

# ------------------------------------------------------------------ MariaDB
say "starting a throwaway MariaDB on 127.0.0.1:$DB_PORT (the on-prem resource)"
mkdir -p "$tmp/db"
cat >"$tmp/db/init.sql" <<SQL
CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'%';
CREATE DATABASE IF NOT EXISTS $DB_NAME;
SQL
chmod 644 "$tmp/db/init.sql"
if [[ $EUID -eq 0 ]]; then
	chmod 711 "$tmp" # let the mysql user reach its own directory
	chown mysql: "$tmp/db"
fi
"${as_db[@]}" "$install_db" --no-defaults --datadir="$tmp/db/data" \
	--auth-root-authentication-method=normal --skip-test-db \
	>"$tmp/install-db.log" 2>&1 || { cat "$tmp/install-db.log" >&2; die "mariadb-install-db failed"; }
"${as_db[@]}" "$mariadbd" --no-defaults --datadir="$tmp/db/data" \
	--port="$DB_PORT" --bind-address=127.0.0.1 \
	--socket="$tmp/db/mysqld.sock" --pid-file="$tmp/db/mysqld.pid" --tmpdir="$tmp/db" \
	--init-file="$tmp/db/init.sql" --skip-name-resolve --skip-log-bin \
	--innodb-buffer-pool-size=64M --max-connections=200 \
	>"$tmp/db/mariadbd.log" 2>&1 &
db_pid=$!
db_ready() {
	kill -0 "$db_pid" 2>/dev/null || die "mariadbd exited early (see its log below)"
	grep -q 'ready for connections' "$tmp/db/mariadbd.log"
}
wait_for "MariaDB" 60 db_ready
echo "$("$mariadbd" --version) is up"

# --------------------------------------------------------------------- keys
say "making fresh keys (hybrid keys new)"
send_key=$("$hybrid" keys new)   # apps: the send right, given to the proxy
listen_key=$("$hybrid" keys new) # onprem: the listen right, given to the agent
echo "send key (apps) and listen key (onprem) generated; they travel in the environment only"

cp "$here/relay.yaml" "$here/agent.yaml" "$here/proxy.yaml" "$tmp/"
# Each process gets only the keys it needs.
HYBRID_SEND_KEY=$send_key HYBRID_LISTEN_KEY=$listen_key "$hybrid" check --config "$tmp/relay.yaml"
HYBRID_LISTEN_KEY=$listen_key "$hybrid" check --config "$tmp/agent.yaml"
HYBRID_SEND_KEY=$send_key "$hybrid" check --config "$tmp/proxy.yaml"

# -------------------------------------------------------------------- roles
alive() { kill -0 "$1" 2>/dev/null || die "$2 exited early (see its log below)"; }

say "starting relay, agent and proxy (three processes)"
HYBRID_SEND_KEY=$send_key HYBRID_LISTEN_KEY=$listen_key \
	"$hybrid" relay --config "$tmp/relay.yaml" >"$tmp/relay.log" 2>&1 &
relay_pid=$!
pids+=("$relay_pid")
relay_up() { alive "$relay_pid" relay; bound 127.0.0.1 "${RELAY_PORTS[0]}" && bound 127.0.0.1 "${RELAY_PORTS[1]}"; }
wait_for "the relay" 15 relay_up
echo "relay  pid $relay_pid  control 127.0.0.1:${RELAY_PORTS[0]}, data 127.0.0.1:${RELAY_PORTS[1]}"

HYBRID_LISTEN_KEY=$listen_key \
	"$hybrid" agent --config "$tmp/agent.yaml" >"$tmp/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
agent_up() { alive "$agent_pid" agent; grep -q 'listening.*hc=mysql' "$tmp/agent.log"; }
wait_for "the agent to attach" 15 agent_up
echo "agent  pid $agent_pid  listening for \"mysql\", publishing 127.0.0.1:$DB_PORT"

HYBRID_SEND_KEY=$send_key \
	"$hybrid" proxy --config "$tmp/proxy.yaml" >"$tmp/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
proxy_up() { alive "$proxy_pid" proxy; bound "$PROXY_HOST" "$PROXY_PORT"; }
wait_for "the proxy to listen" 15 proxy_up
echo "proxy  pid $proxy_pid  listening on $PROXY_HOST:$PROXY_PORT"

# ---------------------------------------------------------------------- app
# The app's connection string: everything as on the local network but the host.
conn=(--no-defaults --protocol=TCP -h "$PROXY_HOST" -P "$PROXY_PORT" -u "$DB_USER" "-p$DB_PASSWORD")
say "the app: mariadb --protocol=TCP -h $PROXY_HOST -P $PROXY_PORT -u $DB_USER -p... $DB_NAME"
"$client" "${conn[@]}" --connect-timeout=15 --table --verbose "$DB_NAME" <<'SQL'
CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, item VARCHAR(64) NOT NULL, qty INT NOT NULL);
INSERT INTO orders (item, qty) VALUES ('widget', 3), ('gadget', 5), ('gizmo', 1);
SELECT id, item, qty FROM orders ORDER BY id;
SELECT COUNT(*) AS orders, SUM(qty) AS items FROM orders;
SQL

say "which server answered?"
"$client" "${conn[@]}" --table -e 'SELECT @@hostname, @@port, VERSION()'
port=$("$client" "${conn[@]}" -N -B -e 'SELECT @@port')
[[ $port == "$DB_PORT" ]] || die "expected the on-prem server on port $DB_PORT, got '$port'"
echo "@@port = $port: the on-prem MariaDB, reached through proxy -> relay -> agent"

say "concurrent clients: mariadb-slap, 16 clients, 1600 mixed queries, 2 iterations"
"$slap" "${conn[@]}" --concurrency=16 --number-of-queries=1600 --iterations=2 \
	--auto-generate-sql --auto-generate-sql-load-type=mixed --auto-generate-sql-add-autoincrement \
	--create-schema=slap

# -------------------------------------------------------------------- audit
say "the agent's audit log ($tmp/audit.jsonl)"
# Our three client sessions and the slap's: wait until the first three closed.
closed() { [[ $(grep -c '"event":"close"' "$tmp/audit.jsonl" 2>/dev/null) -ge 3 ]]; }
wait_for "the audit log" 10 closed
echo "$(grep -c '"event":"open"' "$tmp/audit.jsonl") streams opened; the first two:"
grep '"event":"open"' "$tmp/audit.jsonl" | head -n 2

say "done: stopping everything"
