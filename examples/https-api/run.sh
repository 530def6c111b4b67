#!/usr/bin/env bash
# run.sh — an HTTPS API through hybrid, end to end, on one machine.
#
#   curl ─► proxy 127.0.0.2:28443 ═► relay 127.0.0.1:15673/19354 ◄═ agent ─► HTTPS API 127.0.0.1:28443
#
# Builds hybrid and the example API (api/), starts the API (the "on-prem"
# resource; it terminates TLS itself with a certificate for
# api.internal.example from a private CA), makes fresh keys, runs relay, agent
# and proxy as three processes from relay.yaml, agent.yaml and proxy.yaml
# (this directory), calls the API with curl through the proxy under its own
# name, verifying its certificate end to end, shows the agent's audit log, and
# cleans everything up. The steps shared by all examples are in ../lib.sh.
#
# Needs: go, curl, Linux (127.0.0.2 is a loopback address there). KEEP=1
# keeps the temp dir.
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

API_NAME=api.internal.example
API_PORT=28443                                 # agent.yaml: endpoint 127.0.0.1:28443
PROXY_HOST=127.0.0.2 PROXY_PORT=28443          # proxy.yaml: listen (the same port)
RELAY_PORTS=(15673 19354 18084)                # relay.yaml: control, data, http

# ---------------------------------------------------------------- preflight
need go
command -v curl >/dev/null || die "curl not found (Debian: apt-get install curl)"
ports_free 127.0.0.1 "${RELAY_PORTS[@]}" "$API_PORT"
ports_free "$PROXY_HOST" "$PROXY_PORT"

# ------------------------------------------------------------ setup/cleanup
# cleanup stops the roles app side first: proxy, agent, relay; then the API.
make_tmp https-api api.log relay.log agent.log proxy.log

# ------------------------------------------------------------------- build
say "building hybrid and the example API"
build_hybrid api=examples/https-api/api
"$hybrid" version

# ---------------------------------------------------------------------- API
say "starting the HTTPS API $API_NAME on 127.0.0.1:$API_PORT (the on-prem resource)"
# The API is first so that the roles start after it (and stop before it).
spawn api "$tmp/api" -listen "127.0.0.1:$API_PORT" -name "$API_NAME" -ca-out "$tmp/ca.pem"
# shellcheck disable=SC2154 # api_pid: set by spawn
wait_alive "$api_pid" "the API" "the API" 15 bound 127.0.0.1 "$API_PORT"
echo "API    pid $api_pid  https://$API_NAME:$API_PORT, certificate from a private CA ($tmp/ca.pem)"

# ------------------------------------------------------------- keys, roles
# Fresh keys, the three files checked (lib.sh: new_keys sets the environment
# each role gets in relay_keys, agent_keys, proxy_keys), then the three roles.
keys_and_configs
start_roles api "127.0.0.1:$API_PORT"

# ---------------------------------------------------------------------- app
url=https://$API_NAME:$API_PORT
# The app's URL is unchanged; only the name resolves to the proxy. curl's
# --resolve stands in for the hosts-file line or DNS record that would do it.
resolve=$API_NAME:$API_PORT:$PROXY_HOST
app=(curl -sS --fail --max-time 30 --cacert "$tmp/ca.pem" --resolve "$resolve")

say "the app: curl --cacert ca.pem --resolve $resolve $url/hello"
out=$("${app[@]}" -v "$url/hello" 2>"$tmp/curl.trace")
# What curl says about the TLS handshake it had with the API itself.
grep -E 'Connected to|ALPN: server accepted|SSL connection using|subject:|issuer:|SSL certificate verify' "$tmp/curl.trace" || true
echo "$out"
grep -q "\"sni\": \"$API_NAME\"" <<<"$out" || die "the API did not see SNI $API_NAME"
grep -q '"alpn": "h2"' <<<"$out" || die "the API did not negotiate h2 by ALPN"
echo "the API saw SNI $API_NAME and negotiated h2 with curl: TLS went through untouched"

say "the app: curl $url/orders"
"${app[@]}" "$url/orders"

say "the certificate really is checked, end to end"
if curl -sS --max-time 30 --resolve "$resolve" "$url/hello" >/dev/null 2>"$tmp/curl.err"; then
	die "curl trusted the API without its CA"
fi
echo "without --cacert: $(head -n 1 "$tmp/curl.err")"
if curl -sS --max-time 30 --cacert "$tmp/ca.pem" "https://$PROXY_HOST:$PROXY_PORT/hello" >/dev/null 2>"$tmp/curl.err"; then
	die "curl accepted the API's certificate for another name"
fi
echo "by address instead of name: $(head -n 1 "$tmp/curl.err")"

# -------------------------------------------------------------------- audit
say "the agent's audit log ($tmp/audit.jsonl)"
# Four curl connections: wait until the agent has recorded each one's close.
wait_audit 4
tail -n 2 "$tmp/audit.jsonl"

say "done: stopping everything"
