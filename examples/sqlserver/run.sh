#!/usr/bin/env bash
# run.sh — SQL Server's protocol (TDS) through hybrid, end to end, on one
# machine, checked at the protocol level:
#
#   tds prelogin ─► proxy 127.0.0.2:21433 ═► relay 127.0.0.1:15675/19356 ◄═ agent ─► tds serve 127.0.0.1:21433
#
# There is no SQL Server on Debian, so the "on-prem" side is a fake TDS
# responder (tds/, in Go) that answers the PRELOGIN exchange every SQL Server
# client starts with, as SQL Server 2019 answers it; the app is a small TDS
# client that sends a PRELOGIN and checks the answer. This shows that TDS
# crosses the tunnel byte for byte; it does not log in or run a query (see
# README.md for what a real SQL Server needs). The steps shared by all
# examples are in ../lib.sh.
#
# Needs: go, Linux (127.0.0.2 is a loopback address there). KEEP=1 keeps the
# temp dir.
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SQL_PORT=21433                                 # agent.yaml: endpoint 127.0.0.1:21433
PROXY_HOST=127.0.0.2 PROXY_PORT=21433          # proxy.yaml: listen (the same port)
RELAY_PORTS=(15675 19356 18086)                # relay.yaml: control, data, http

need go
ports_free 127.0.0.1 "${RELAY_PORTS[@]}" "$SQL_PORT"
ports_free "$PROXY_HOST" "$PROXY_PORT"
make_tmp sqlserver relay.log agent.log proxy.log tds.log

say "building hybrid and the TDS tools"
build_hybrid tds=examples/sqlserver/tds
"$hybrid" version

say "starting the fake TDS responder on 127.0.0.1:$SQL_PORT (the on-prem \"SQL Server\"; not a real one)"
spawn tds "$tmp/tds" serve -listen "127.0.0.1:$SQL_PORT"
wait_alive "$tds_pid" tds "the TDS responder" 10 bound 127.0.0.1 "$SQL_PORT"
echo "tds    pid $tds_pid"

keys_and_configs
start_roles sql "127.0.0.1:$SQL_PORT"

say "the app: a TDS PRELOGIN to $PROXY_HOST:$PROXY_PORT (what every SQL Server client sends first)"
"$tmp/tds" prelogin -addr "$PROXY_HOST:$PROXY_PORT"

say "the same, directly to the responder, for comparison"
"$tmp/tds" prelogin -addr "127.0.0.1:$SQL_PORT"

say "what the responder saw"
wait_for "the responder's log" 10 grep -qs 'answered as SQL Server' "$tmp/tds.log"
cat "$tmp/tds.log"

say "the agent's audit log ($tmp/audit.jsonl)"
wait_audit 1
grep -m 2 '"event":' "$tmp/audit.jsonl"

say "done: stopping everything"
