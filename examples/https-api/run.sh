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
# cleans everything up.
#
# Needs: go, curl, Linux (127.0.0.2 is a loopback address there). KEEP=1
# keeps the temp dir.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

API_NAME=api.internal.example
API_PORT=28443                                 # agent.yaml: endpoint 127.0.0.1:28443
PROXY_HOST=127.0.0.2 PROXY_PORT=28443          # proxy.yaml: listen (the same port)
RELAY_PORTS=(15673 19354 18084)                # relay.yaml: control, data, http

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

# ---------------------------------------------------------------- preflight
command -v go >/dev/null || die "go not found"
command -v curl >/dev/null || die "curl not found (Debian: apt-get install curl)"
for p in "${RELAY_PORTS[@]}" "$API_PORT"; do
	! listening 127.0.0.1 "$p" || die "127.0.0.1:$p is in use; this example uses fixed ports (see the yaml files)"
done
! listening "$PROXY_HOST" "$PROXY_PORT" || die "$PROXY_HOST:$PROXY_PORT is in use"

# ------------------------------------------------------------ setup/cleanup
tmp=$(mktemp -d "${TMPDIR:-/tmp}/hybrid-https-api.XXXXXX")
pids=()

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	# Stop the roles app side first: proxy, agent, relay; then the API.
	local pid i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null
	done
	for pid in "${pids[@]}"; do
		for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if ((rc != 0)); then
		for f in api.log relay.log agent.log proxy.log; do
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

alive() { kill -0 "$1" 2>/dev/null || die "$2 exited early (see its log below)"; }

# ------------------------------------------------------------------- build
say "building hybrid and the example API"
(cd "$root" && go build -o "$tmp/hybrid" ./cmd/hybrid && go build -o "$tmp/api" ./examples/https-api/api)
hybrid=$tmp/hybrid
"$hybrid" version

# ---------------------------------------------------------------------- API
say "starting the HTTPS API $API_NAME on 127.0.0.1:$API_PORT (the on-prem resource)"
# The API is first so that the roles start after it (and stop before it).
"$tmp/api" -listen "127.0.0.1:$API_PORT" -name "$API_NAME" -ca-out "$tmp/ca.pem" >"$tmp/api.log" 2>&1 &
api_pid=$!
pids+=("$api_pid")
api_up() { alive "$api_pid" "the API"; bound 127.0.0.1 "$API_PORT"; }
wait_for "the API" 15 api_up
echo "API    pid $api_pid  https://$API_NAME:$API_PORT, certificate from a private CA ($tmp/ca.pem)"

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
agent_up() { alive "$agent_pid" agent; grep -q 'listening.*hc=api' "$tmp/agent.log"; }
wait_for "the agent to attach" 15 agent_up
echo "agent  pid $agent_pid  listening for \"api\", publishing 127.0.0.1:$API_PORT"

HYBRID_SEND_KEY=$send_key \
	"$hybrid" proxy --config "$tmp/proxy.yaml" >"$tmp/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
proxy_up() { alive "$proxy_pid" proxy; bound "$PROXY_HOST" "$PROXY_PORT"; }
wait_for "the proxy to listen" 15 proxy_up
echo "proxy  pid $proxy_pid  listening on $PROXY_HOST:$PROXY_PORT"

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
closed() { [[ $(grep -c '"event":"close"' "$tmp/audit.jsonl" 2>/dev/null) -ge 4 ]]; }
wait_for "the audit log" 10 closed
tail -n 2 "$tmp/audit.jsonl"

say "done: stopping everything"
