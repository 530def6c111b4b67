#!/usr/bin/env bash
# run.sh — PostgreSQL through hybrid, end to end, on one machine.
#
#   psql ─► proxy 127.0.0.2:15432 ═► relay 127.0.0.1:15671/19352 ◄═ agent ─► PostgreSQL 127.0.0.1:25432
#
# Builds hybrid, starts a throwaway PostgreSQL (the "on-prem" resource), makes
# fresh keys, runs relay, agent and proxy as three processes from relay.yaml,
# agent.yaml and proxy.yaml (this directory), talks to the database with psql
# through the proxy, shows the agent's audit log, and cleans everything up.
# The steps shared by all examples are in ../lib.sh.
#
# Needs: go, PostgreSQL server binaries (initdb, postgres, pg_ctl; found in
# /usr/lib/postgresql/*/bin or on PATH), psql and pg_isready, Linux (127.0.0.2
# is a loopback address there). KEEP=1 keeps the temp dir for inspection.
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

PG_PORT=25432                                  # agent.yaml: endpoint 127.0.0.1:25432
PROXY_HOST=127.0.0.2 PROXY_PORT=15432          # proxy.yaml: listen
RELAY_PORTS=(15671 19352 18080)                # relay.yaml: control, data, http

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
need psql go
pg_isready=$(command -v pg_isready || echo "$pgbin/pg_isready")

ports_free 127.0.0.1 "${RELAY_PORTS[@]}" "$PG_PORT"
ports_free "$PROXY_HOST" "$PROXY_PORT"

# PostgreSQL refuses to run as root: then run it as the postgres user.
run_as postgres PostgreSQL

# ------------------------------------------------------------ setup/cleanup
pg_started=
# Called by cleanup once the roles (app side first: proxy, agent, relay) are stopped.
stop_resource() {
	if [[ -n $pg_started ]]; then
		"${as_user[@]}" "$pgbin/pg_ctl" -D "$tmp/pg/data" -m fast -w stop >/dev/null 2>&1
	fi
}
make_tmp postgres relay.log agent.log proxy.log pg/postgres.log

# ------------------------------------------------------------------- build
say "building hybrid"
build_hybrid
"$hybrid" version

# --------------------------------------------------------------- PostgreSQL
say "starting a throwaway PostgreSQL on 127.0.0.1:$PG_PORT (the on-prem resource)"
user_dir pg # owned by the postgres user when we are root
"${as_user[@]}" "$pgbin/initdb" -D "$tmp/pg/data" -A trust -U postgres --locale=C -E UTF8 --no-sync \
	>"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; die "initdb failed"; }
pg_started=1
"${as_user[@]}" "$pgbin/pg_ctl" -D "$tmp/pg/data" -l "$tmp/pg/postgres.log" \
	-o "-c listen_addresses=127.0.0.1 -k $tmp/pg -p $PG_PORT" start >/dev/null
pg_ready() { "$pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres; }
wait_for "PostgreSQL" 60 pg_ready
echo "$("$pgbin/postgres" -V) is up"

# ------------------------------------------------------------- keys, roles
# Fresh keys, the three files checked (lib.sh: new_keys sets the environment
# each role gets in relay_keys, agent_keys, proxy_keys), then the three roles.
keys_and_configs
start_roles postgres "127.0.0.1:$PG_PORT"

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
wait_audit 3
tail -n 6 "$tmp/audit.jsonl"

say "done: stopping everything"
