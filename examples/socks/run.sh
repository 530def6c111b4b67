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
# temp dir. The steps shared by all examples are in ../lib.sh.
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

RESOURCE=127.0.0.1:18181             # the intranet web server (agent.yaml: intranet.corp.example:18181)
URL=http://intranet.corp.example:18181/hello
SOCKS=127.0.0.1:11080                # proxy.yaml: socks
RELAY_PORTS=(16671 19362 18090)      # relay.yaml: control, data, http

# ---------------------------------------------------------------- preflight
need go curl unshare mount ss
ports_free 127.0.0.1 "${RELAY_PORTS[@]}" 18181 11080
need_mount_ns # the agent's private /etc/hosts

# ------------------------------------------------------------ setup/cleanup
make_tmp socks resource.log relay.log agent.log proxy.log

say "building hybrid and the demo web server"
build_hybrid demo-resource=examples/demo-resource

say "keys: hybrid keys new (send, listen) and a SOCKS password"
new_keys
export HYBRID_SEND_KEY=$send_key HYBRID_LISTEN_KEY=$listen_key HYBRID_SOCKS_PASSWORD
# Letters and digits only, so it fits curl's --proxy-user and proxychains.conf as is.
HYBRID_SOCKS_PASSWORD=$("$hybrid" keys new | tr -dc 'A-Za-z0-9')
copy_configs onprem-hosts
check_configs

say "starting the intranet web server, relay, agent (with the on-prem DNS) and proxy"
start_onprem "$RESOURCE" intranet
spawn proxy "$hybrid" proxy --config "$tmp/proxy.yaml"
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
