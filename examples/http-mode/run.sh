#!/usr/bin/env bash
# run.sh — HTTP mode, end to end, on one machine: a cloud app calls an
# on-prem HTTP API with nothing but curl and a send token.
#
#   curl ──HTTP──► relay 127.0.0.1:18085/api/... ◄══ agent ──HTTP──► API 127.0.0.1:28081
#   (no proxy:       (checks the token, hands        (dials out only; forwards to
#    any client)      the request to the agent)       exactly its endpoint)
#
# Builds hybrid and the demo API (../demo-resource), makes fresh keys, runs
# the relay and the agent from relay.yaml and agent.yaml (this directory),
# mints a send token with `hybrid keys token`, calls the API through the relay
# with curl (GET, and a POST of 1 MiB, which crosses over a rendezvous),
# shows a refusal, the agent's audit log, and cleans everything up. The steps
# shared by all examples are in ../lib.sh.
#
# Needs: go, curl, ss (iproute2). KEEP=1 keeps the temp dir.
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

API=127.0.0.1:28081                      # agent.yaml: endpoint http://127.0.0.1:28081
RELAY_PORTS=(15674 19355 18085)          # relay.yaml: control, data, http
RELAY_HTTP=http://127.0.0.1:${RELAY_PORTS[2]}

# ---------------------------------------------------------------- preflight
need go curl ss
ports_free 127.0.0.1 "${RELAY_PORTS[@]}" "${API##*:}"

# ------------------------------------------------------------ setup/cleanup
make_tmp http-mode api.log relay.log agent.log

# ------------------------------------------------------------------- build
say "building hybrid and the demo API"
build_hybrid demo-resource=examples/demo-resource
"$hybrid" version

# ---------------------------------------------------------------------- API
say "starting the on-prem HTTP API on $API"
spawn api "$tmp/demo-resource" -listen "$API"
# shellcheck disable=SC2154 # api_pid: set by spawn
wait_alive "$api_pid" api "the API" 10 bound 127.0.0.1 "${API##*:}"

# ------------------------------------------------------------- keys, roles
say "making fresh keys (hybrid keys new)"
new_keys
cp "$here/relay.yaml" "$here/agent.yaml" "$tmp/"
env "${relay_keys[@]}" "$hybrid" check --config "$tmp/relay.yaml"
env "${agent_keys[@]}" "$hybrid" check --config "$tmp/agent.yaml"

say "starting the relay and the agent (two processes; no proxy)"
spawn relay env "${relay_keys[@]}" "$hybrid" relay --config "$tmp/relay.yaml"
wait_alive "$relay_pid" relay "the relay" 15 bound 127.0.0.1 "${RELAY_PORTS[2]}"
echo "relay  pid $relay_pid  http $RELAY_HTTP"
spawn agent env "${agent_keys[@]}" "$hybrid" agent --config "$tmp/agent.yaml"
wait_alive "$agent_pid" agent "the agent to attach" 15 grep -qs "listening.*hc=api" "$tmp/agent.log"
echo "agent  pid $agent_pid  listening for \"api\", publishing http://$API"

# ---------------------------------------------------------------------- app
say "the app's token: hybrid keys token --uri sb://relay.example.com/api --key-name apps"
token=$("$hybrid" keys token --uri sb://relay.example.com/api --key-name apps --key "$send_key" --ttl 10m)
echo "${token:0:60}..."

say "the app: curl -H 'ServiceBusAuthorization: <token>' $RELAY_HTTP/api/hello?from=cloud"
curl -sS --fail --max-time 30 -i -H "ServiceBusAuthorization: $token" "$RELAY_HTTP/api/hello?from=cloud"

say "the app: a POST of 1 MiB (over 64 KiB: it crosses over a rendezvous WebSocket)"
head -c 1048576 /dev/urandom >"$tmp/upload"
curl -sS --fail --max-time 30 --data-binary @"$tmp/upload" -H "ServiceBusAuthorization: $token" "$RELAY_HTTP/api/upload"

say "without a token, the relay refuses (and the API never hears of it)"
code=$(curl -sS --max-time 30 -o /dev/null -w '%{http_code}' "$RELAY_HTTP/api/hello")
echo "HTTP $code"
[[ $code == 401 ]] || die "expected 401 without a token, got $code"

# -------------------------------------------------------------------- audit
say "the agent's audit log ($tmp/audit.jsonl): one line per request"
audit_http() { [[ $(grep -c '"event":"http"' "$tmp/audit.jsonl" 2>/dev/null) -ge 2 ]]; }
wait_for "the audit log" 10 audit_http
grep '"event":"http"' "$tmp/audit.jsonl"

say "done: stopping everything"
