#!/usr/bin/env bash
# run.sh — PostgreSQL through hybrid, end to end, on one machine.
#
#   psql ─► proxy 127.0.0.2:15432 ═► relay 127.0.0.1:15671/19352 ◄═ agent ─► PostgreSQL 127.0.0.1:25432
#
# Builds hybrid, starts a throwaway PostgreSQL (the "on-prem" resource), makes
# fresh keys, runs relay, agent and proxy as three processes from relay.yaml,
# agent.yaml and proxy.yaml (this directory), talks to the database with psql
# through the proxy, shows the agent's audit log, and cleans everything up.
#
# Needs: go, PostgreSQL server binaries (initdb, postgres, pg_ctl; found in
# /usr/lib/postgresql/*/bin or on PATH), psql and pg_isready, Linux (127.0.0.2
# is a loopback address there). KEEP=1 keeps the temp dir for inspection.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

PG_PORT=25432                                  # agent.yaml: endpoint 127.0.0.1:25432
PROXY_HOST=127.0.0.2 PROXY_PORT=15432          # proxy.yaml: listen
RELAY_PORTS=(15671 19352 18080)                # relay.yaml: control, data, http

if [[ -t 1 ]]; then
	say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
	say() { printf '\n== %s\n' "$*"; }
fi
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

# listening HOST PORT: true when something accepts TCP connections there.
listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# bound HOST PORT: true when a socket listens on HOST:PORT. Used to wait for
# our own processes instead of connecting: a probe connection to the proxy
# would be a real stream through the tunnel (and a line in the audit log), and
# one to the relay a refused handshake in its log.
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

# ---------------------------------------------------------------- preflight
pgbin=
for d in /usr/lib/postgresql/*/bin; do
	[[ -x $d/initdb ]] && pgbin=$d
done
if [[ -z $pgbin ]]; then
	pgbin=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
fi
[[ -x $pgbin/initdb && -x $pgbin/postgres && -x $pgbin/pg_ctl ]] ||
	die "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and PATH)"
command -v psql >/dev/null || die "psql not found"
command -v go >/dev/null || die "go not found"
pg_isready=$(command -v pg_isready || echo "$pgbin/pg_isready")

for p in "${RELAY_PORTS[@]}" "$PG_PORT"; do
	! listening 127.0.0.1 "$p" || die "127.0.0.1:$p is in use; this example uses fixed ports (see the yaml files)"
done
! listening "$PROXY_HOST" "$PROXY_PORT" || die "$PROXY_HOST:$PROXY_PORT is in use"

# PostgreSQL refuses to run as root: then run it as the postgres user.
as_pg=()
if [[ $EUID -eq 0 ]]; then
	id postgres >/dev/null 2>&1 || die "running as root, but there is no postgres user to run PostgreSQL as"
	as_pg=(runuser -u postgres --)
fi

# ------------------------------------------------------------ setup/cleanup
tmp=$(mktemp -d "${TMPDIR:-/tmp}/hybrid-postgres.XXXXXX")
pids=()
pg_started=

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	# Stop the roles app side first: proxy, agent, relay.
	local pid i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null
	done
	for pid in "${pids[@]}"; do
		for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [[ -n $pg_started ]]; then
		"${as_pg[@]}" "$pgbin/pg_ctl" -D "$tmp/pg/data" -m fast -w stop >/dev/null 2>&1
	fi
	if ((rc != 0)); then
		for f in relay.log agent.log proxy.log pg/postgres.log; do
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

# --------------------------------------------------------------- PostgreSQL
say "starting a throwaway PostgreSQL on 127.0.0.1:$PG_PORT (the on-prem resource)"
mkdir -p "$tmp/pg"
if [[ $EUID -eq 0 ]]; then
	chmod 711 "$tmp" # let the postgres user reach its own directory
	chown postgres: "$tmp/pg"
fi
"${as_pg[@]}" "$pgbin/initdb" -D "$tmp/pg/data" -A trust -U postgres --locale=C -E UTF8 --no-sync \
	>"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; die "initdb failed"; }
pg_started=1
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$tmp/pg/data" -l "$tmp/pg/postgres.log" \
	-o "-c listen_addresses=127.0.0.1 -k $tmp/pg -p $PG_PORT" start >/dev/null
pg_ready() { "$pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres; }
wait_for "PostgreSQL" 60 pg_ready
echo "$("$pgbin/postgres" -V) is up"

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
agent_up() { alive "$agent_pid" agent; grep -q 'listening.*hc=postgres' "$tmp/agent.log"; }
wait_for "the agent to attach" 15 agent_up
echo "agent  pid $agent_pid  listening for \"postgres\", publishing 127.0.0.1:$PG_PORT"

HYBRID_SEND_KEY=$send_key \
	"$hybrid" proxy --config "$tmp/proxy.yaml" >"$tmp/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
proxy_up() { alive "$proxy_pid" proxy; bound "$PROXY_HOST" "$PROXY_PORT"; }
wait_for "the proxy to listen" 15 proxy_up
echo "proxy  pid $proxy_pid  listening on $PROXY_HOST:$PROXY_PORT"

# ---------------------------------------------------------------------- app
dsn="host=$PROXY_HOST port=$PROXY_PORT user=postgres dbname=postgres"
say "the app: psql \"$dsn\""
export PGCONNECT_TIMEOUT=15
psql "$dsn" -X -v ON_ERROR_STOP=1 --echo-queries <<'SQL'
create table orders (id serial primary key, item text not null, qty int not null);
insert into orders (item, qty) values ('widget', 3), ('gadget', 5), ('gizmo', 1);
select id, item, qty from orders order by id;
select count(*) as orders, sum(qty) as items from orders;
SQL

say "which server answered?"
psql "$dsn" -X -v ON_ERROR_STOP=1 -c 'select inet_server_addr(), inet_server_port()'
port=$(psql "$dsn" -X -At -v ON_ERROR_STOP=1 -c 'select inet_server_port()')
[[ $port == "$PG_PORT" ]] || die "expected the on-prem server on port $PG_PORT, got '$port'"
echo "inet_server_port() = $port: the on-prem PostgreSQL, reached through proxy -> relay -> agent"

# -------------------------------------------------------------------- audit
say "the agent's audit log ($tmp/audit.jsonl)"
# Three psql sessions: wait until the agent has recorded each one's close.
closed() { [[ $(grep -c '"event":"close"' "$tmp/audit.jsonl" 2>/dev/null) -ge 3 ]]; }
wait_for "the audit log" 10 closed
tail -n 6 "$tmp/audit.jsonl"

say "done: stopping everything"
