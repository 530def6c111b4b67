#!/usr/bin/env bash
# run.sh — MySQL/MariaDB through hybrid, end to end, on one machine.
#
#   mariadb ─► proxy 127.0.0.2:23306 ═► relay 127.0.0.1:15672/19353 ◄═ agent ─► MariaDB 127.0.0.1:23306
#
# Builds hybrid, starts a throwaway MariaDB (the "on-prem" resource) with a
# password user, makes fresh keys, runs relay, agent and proxy as three
# processes from relay.yaml, agent.yaml and proxy.yaml (this directory), talks
# to the database with the mariadb client and mysqlslap through the proxy,
# shows the agent's audit log, and cleans everything up. The steps shared by
# all examples are in ../lib.sh.
#
# Needs: go, MariaDB's server (mariadbd, mariadb-install-db; Debian package
# mariadb-server) and client (mariadb, mariadb-slap; mariadb-client), Linux
# (127.0.0.2 is a loopback address there). KEEP=1 keeps the temp dir.
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DB_PORT=23306                                  # agent.yaml: endpoint 127.0.0.1:23306
PROXY_HOST=127.0.0.2 PROXY_PORT=23306          # proxy.yaml: listen (the same port)
RELAY_PORTS=(15672 19353 18083)                # relay.yaml: control, data, http
DB_USER=app DB_PASSWORD=app-secret DB_NAME=shop

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
need go

ports_free 127.0.0.1 "${RELAY_PORTS[@]}" "$DB_PORT"
ports_free "$PROXY_HOST" "$PROXY_PORT"

# MariaDB will not run as root: then run it as the mysql user.
run_as mysql MariaDB

# ------------------------------------------------------------ setup/cleanup
db_pid=
# Called by cleanup once the roles (app side first: proxy, agent, relay) are stopped.
stop_resource() {
	local i
	if [[ -n $db_pid ]]; then
		# SIGTERM is a clean shutdown. $db_pid may be runuser: signal the
		# server itself, by its pid file.
		kill -TERM "$(cat "$tmp/db/mysqld.pid" 2>/dev/null || echo "$db_pid")" 2>/dev/null
		for ((i = 0; i < 300; i++)); do kill -0 "$db_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$db_pid" 2>/dev/null
		wait "$db_pid" 2>/dev/null
	fi
}
make_tmp mysql relay.log agent.log proxy.log db/mariadbd.log

# ------------------------------------------------------------------- build
say "building hybrid"
build_hybrid
"$hybrid" version

# ------------------------------------------------------------------ MariaDB
say "starting a throwaway MariaDB on 127.0.0.1:$DB_PORT (the on-prem resource)"
user_dir db # owned by the mysql user when we are root
cat >"$tmp/db/init.sql" <<SQL
CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'%';
CREATE DATABASE IF NOT EXISTS $DB_NAME;
SQL
chmod 644 "$tmp/db/init.sql"
"${as_user[@]}" "$install_db" --no-defaults --datadir="$tmp/db/data" \
	--auth-root-authentication-method=normal --skip-test-db \
	>"$tmp/install-db.log" 2>&1 || { cat "$tmp/install-db.log" >&2; die "mariadb-install-db failed"; }
"${as_user[@]}" "$mariadbd" --no-defaults --datadir="$tmp/db/data" \
	--port="$DB_PORT" --bind-address=127.0.0.1 \
	--socket="$tmp/db/mysqld.sock" --pid-file="$tmp/db/mysqld.pid" --tmpdir="$tmp/db" \
	--init-file="$tmp/db/init.sql" --skip-name-resolve --skip-log-bin \
	--innodb-buffer-pool-size=64M --max-connections=200 \
	>"$tmp/db/mariadbd.log" 2>&1 &
db_pid=$!
wait_alive "$db_pid" mariadbd MariaDB 60 grep -q 'ready for connections' "$tmp/db/mariadbd.log"
echo "$("$mariadbd" --version) is up"

# ------------------------------------------------------------- keys, roles
# Fresh keys, the three files checked (lib.sh: new_keys sets the environment
# each role gets in relay_keys, agent_keys, proxy_keys), then the three roles.
keys_and_configs
start_roles mysql "127.0.0.1:$DB_PORT"

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
wait_audit 3
echo "$(grep -c '"event":"open"' "$tmp/audit.jsonl") streams opened; the first two:"
# grep -m, not grep | head: under pipefail, head exiting early kills grep
# with SIGPIPE and fails the script whenever there is more to read.
grep -m 2 '"event":"open"' "$tmp/audit.jsonl"

say "done: stopping everything"
