#!/usr/bin/env bash
# run.sh — SOCKS5: an app reaches an on-premises host BY ITS ON-PREM NAME,
# with its URL unchanged, although that name exists nowhere on the app's side.
#
#   curl --socks5-hostname ─► proxy (SOCKS5 127.0.0.1:11080) ═► relay ◄═ agent ─► intranet.corp.example:18181
#   "http://intranet.corp.example:18181/hello"                          (resolved on-prem only)
#
# Builds hybrid and the demo web server (the "intranet" resource, on
# 127.0.0.1:18181), makes fresh keys and a SOCKS password, runs relay, agent
# and proxy as three processes from relay.yaml, agent.yaml and proxy.yaml,
# then shows:
#   1. the name does not resolve on the app's side;
#   2. curl --socks5-hostname (the name travels to the agent) gets the page;
#   3. curl --socks5 (the app resolves the name itself) is refused with
#      reply 0x02, and the proxy's log says to use remote resolution;
#   4. a client that knows nothing of SOCKS, under proxychains4 (if
#      installed), gets the page too;
#   5. without the password, nothing.
#
# The on-prem DNS is simulated: the agent runs in a private mount namespace
# where onprem-hosts is bind-mounted over /etc/hosts (root, or unprivileged
# user namespaces, needed). The real /etc/hosts is never touched.
#
# Needs: go, curl, unshare and mount (util-linux), Linux. KEEP=1 keeps the
# temp dir.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

RESOURCE=127.0.0.1:18181             # the intranet web server (agent.yaml: intranet.corp.example:18181)
URL=http://intranet.corp.example:18181/hello
SOCKS=127.0.0.1:11080                # proxy.yaml: socks
RELAY_PORTS=(16671 19362 18090)      # relay.yaml: control, data, http

if [[ -t 1 ]]; then say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }; else say() { printf '\n== %s\n' "$*"; }; fi
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }
listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
bound() { ss -Hltn "sport = :$2" 2>/dev/null | grep -qF "$1:$2"; }
wait_for() {
	local what=$1 secs=$2 i; shift 2
	for ((i = 0; i < secs * 10; i++)); do "$@" && return 0; sleep 0.1; done
	die "timed out after ${secs}s waiting for $what"
}

# ---------------------------------------------------------------- preflight
for c in go curl unshare mount ss; do command -v "$c" >/dev/null || die "$c not found"; done
for p in "${RELAY_PORTS[@]}" 18181 11080; do
	! listening 127.0.0.1 "$p" || die "127.0.0.1:$p is in use; this example uses fixed ports (see the yaml files)"
done
# A private mount namespace: as root, or in a user namespace of our own.
ns=(unshare -m --propagation private)
[[ $EUID -eq 0 ]] || ns=(unshare -r -m --propagation private)
"${ns[@]}" true 2>/dev/null || die "cannot make a private mount namespace (${ns[*]}): run as root"

# ------------------------------------------------------------ setup/cleanup
tmp=$(mktemp -d "${TMPDIR:-/tmp}/hybrid-socks.XXXXXX")
pids=()
cleanup() {
	local rc=$? pid i
	set +e
	trap - EXIT INT TERM
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null; done
	for pid in "${pids[@]}"; do
		for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if ((rc != 0)); then
		for f in resource.log relay.log agent.log proxy.log; do
			[[ -s $tmp/$f ]] && { printf '\n--- last lines of %s ---\n' "$f" >&2; tail -n 20 "$tmp/$f" >&2; }
		done
	fi
	if [[ ${KEEP:-} == 1 ]]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "building hybrid and the demo web server"
(cd "$root" && go build -o "$tmp/hybrid" ./cmd/hybrid && go build -o "$tmp/demo-resource" ./examples/demo-resource)
hybrid=$tmp/hybrid

say "keys: hybrid keys new (send, listen) and a SOCKS password"
export HYBRID_SEND_KEY HYBRID_LISTEN_KEY HYBRID_SOCKS_PASSWORD
HYBRID_SEND_KEY=$("$hybrid" keys new)
HYBRID_LISTEN_KEY=$("$hybrid" keys new)
# Letters and digits only, so it fits curl's --proxy-user and proxychains.conf as is.
HYBRID_SOCKS_PASSWORD=$("$hybrid" keys new | tr -dc 'A-Za-z0-9')
cp "$here"/{relay,agent,proxy}.yaml "$here/onprem-hosts" "$tmp/"
for f in relay agent proxy; do "$hybrid" check --config "$tmp/$f.yaml"; done

say "starting the intranet web server, relay, agent (with the on-prem DNS) and proxy"
"$tmp/demo-resource" -listen "$RESOURCE" >"$tmp/resource.log" 2>&1 &
pids+=($!)
wait_for "the web server" 10 bound 127.0.0.1 18181
"$hybrid" relay --config "$tmp/relay.yaml" >"$tmp/relay.log" 2>&1 &
pids+=($!)
wait_for "the relay" 15 bound 127.0.0.1 "${RELAY_PORTS[1]}"
# The agent alone sees onprem-hosts as its /etc/hosts.
"${ns[@]}" sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$tmp/onprem-hosts" \
	"$hybrid" agent --config "$tmp/agent.yaml" >"$tmp/agent.log" 2>&1 &
pids+=($!)
wait_for "the agent to attach" 15 grep -qs 'listening.*hc=intranet' "$tmp/agent.log"
"$hybrid" proxy --config "$tmp/proxy.yaml" >"$tmp/proxy.log" 2>&1 &
pids+=($!)
wait_for "the proxy's SOCKS5 listener" 15 bound 127.0.0.1 11080
echo "relay, agent and proxy are up; SOCKS5 on $SOCKS (user billing-app)"

say "1. on the app's side, intranet.corp.example does not exist"
if getent hosts intranet.corp.example; then
	die "intranet.corp.example resolves here: this demo would prove nothing"
fi
echo "getent hosts intranet.corp.example: no answer (as expected)"

say "2. curl --socks5-hostname $SOCKS $URL"
curl -sS --max-time 20 --socks5-hostname "$SOCKS" --proxy-user "billing-app:$HYBRID_SOCKS_PASSWORD" "$URL"

say "3. curl --socks5 (the app resolves names itself): refused"
# Pretend the app's DNS had an answer, so curl sends an address.
if curl -sS --max-time 20 --socks5 "$SOCKS" --proxy-user "billing-app:$HYBRID_SOCKS_PASSWORD" \
	--resolve intranet.corp.example:18181:127.0.0.1 "$URL"; then
	die "curl --socks5 got through"
fi
echo "the proxy's log says why:"
grep 'no connection publishes this target' "$tmp/proxy.log" | tail -n 1

if command -v proxychains4 >/dev/null; then
	say "4. a client that knows nothing of SOCKS, under proxychains4 (proxy_dns)"
	cat >"$tmp/proxychains.conf" <<-EOF
		strict_chain
		proxy_dns
		remote_dns_subnet 224
		[ProxyList]
		socks5 127.0.0.1 11080 billing-app $HYBRID_SOCKS_PASSWORD
	EOF
	proxychains4 -q -f "$tmp/proxychains.conf" curl -sS --max-time 20 "$URL"
else
	say "4. (skipped: install proxychains4 to wrap any client, e.g. psql, the same way)"
fi

say "5. without the password: the proxy refuses the client"
if curl -sS --max-time 20 --socks5-hostname "$SOCKS" "$URL"; then
	die "got through without a password"
fi

say "the agent's audit log: the target each stream asked for, checked by the agent"
tail -n 4 "$tmp/audit.jsonl"

say "done: stopping everything"
