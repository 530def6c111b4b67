#!/usr/bin/env bash
# run.sh — transparent hosts mode: ANY client on the app's machine reaches an
# on-premises host by its on-prem name, with no proxy settings and its
# connection string unchanged.
#
#   curl http://intranet.corp.example:18281/ ─► /etc/hosts: 127.77.x.y ─► proxy ═► relay ◄═ agent ─► intranet.corp.example:18281
#
# Builds hybrid and the demo web server (the resource, on 127.0.0.1:18281),
# makes fresh keys, runs relay, agent and proxy from relay.yaml, agent.yaml
# and proxy.yaml, then shows:
#   1. the block the proxy keeps in the app machine's /etc/hosts;
#   2. plain curl (and getent) on the app machine, by the on-prem name;
#   3. live reload: a second name added to proxy.yaml appears in the block,
#      and works; removed, it goes;
#   4. kill -9 leaves the block behind; the next start repairs it;
#   5. a clean exit removes the block and leaves the rest of the file as it
#      was.
#
# One machine plays both sides, so two private mount namespaces stand in for
# two machines' /etc/hosts: the agent's ("on-prem DNS": onprem-hosts) and the
# app machine's (a copy of your /etc/hosts, which the proxy edits and curl
# reads). Your real /etc/hosts is never touched. Needs root, or unprivileged
# user namespaces; go, curl, unshare and mount (util-linux), Linux.
# KEEP=1 keeps the temp dir. The steps shared by all examples are in ../lib.sh.
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

RESOURCE=127.0.0.1:18281          # agent.yaml: intranet/wiki.corp.example:18281
RELAY_PORTS=(17671 19372 18095)   # relay.yaml: control, data, http

# ---------------------------------------------------------------- preflight
need go curl unshare mount ss getent
ports_free 127.0.0.1 "${RELAY_PORTS[@]}" 18281
need_mount_ns # the agent's and the app machine's private /etc/hosts

# ------------------------------------------------------------ setup/cleanup
make_tmp transparent resource.log relay.log agent.log proxy.log
chmod 755 "$tmp"
# app CMD...: run CMD "on the app machine" (its /etc/hosts is app-hosts).
app() { with_hosts "$tmp/app-hosts" "$@"; }

say "building hybrid and the demo web server"
build_hybrid demo-resource=examples/demo-resource

new_keys
export HYBRID_SEND_KEY=$send_key HYBRID_LISTEN_KEY=$listen_key
copy_configs onprem-hosts
cp /etc/hosts "$tmp/app-hosts" # the app machine's hosts file: a copy of yours
chmod 644 "$tmp/app-hosts"
cp "$tmp/app-hosts" "$tmp/app-hosts.orig"
check_configs

proxy_pid=
# start_proxy: start the proxy "on the app machine" (it edits app-hosts), and
# wait until it forwards intranet.
start_proxy() {
	spawn proxy "${bind_hosts[@]}" "$tmp/app-hosts" "$hybrid" proxy --config "$tmp/proxy.yaml"
	wait_for "the proxy" 15 grep -qs 'forwarding: listen=127\.77\..*hc=intranet' "$tmp/proxy.log"
}
# stopped_proxy: the proxy was stopped and waited for: cleanup must leave it be.
stopped_proxy() {
	untrack "$proxy_pid"
	proxy_pid=
}
# reloaded: wait for the proxy to apply a changed proxy.yaml (it watches the
# file; SIGHUP makes it look at once).
reloaded() {
	local n
	n=$(grep -c 'config reloaded' "$tmp/proxy.log" || true)
	kill -HUP "$proxy_pid"
	wait_for "the reload" 15 sh -c '[ "$(grep -c "config reloaded" "$1")" -gt "$2" ]' sh "$tmp/proxy.log" "$n"
}
block() { sed -n '/^# BEGIN hybrid-proxy/,/^# END hybrid-proxy/p' "$tmp/app-hosts"; }

say "starting the web server, relay, agent (with the on-prem DNS) and proxy (hosts mode)"
start_onprem "$RESOURCE" wiki
start_proxy

say "1. the app machine's /etc/hosts now holds this block (the rest is untouched)"
block
grep 'forwarding: listen=' "$tmp/proxy.log" | sed 's/^.*proxy: /proxy: /'

say "2. on the app machine, by the on-prem name, no proxy settings"
echo "\$ getent hosts intranet.corp.example"
app getent hosts intranet.corp.example
echo "\$ curl http://intranet.corp.example:18281/hello"
app curl -sS --max-time 20 --noproxy '*' http://intranet.corp.example:18281/hello
echo "(on the real machine, outside the demo's namespace, the name does not exist:"
getent hosts intranet.corp.example || echo " getent hosts intranet.corp.example: no answer)"

say "3. live reload: add wiki.corp.example to proxy.yaml"
cat >>"$tmp/proxy.yaml" <<'EOF'
    - { name: wiki, endpoint: wiki.corp.example:18281, key_name: apps, key: "${HYBRID_SEND_KEY}" }
EOF
reloaded
block
app curl -sS --max-time 20 --noproxy '*' http://wiki.corp.example:18281/wiki
echo "and remove it again:"
cp "$here/proxy.yaml" "$tmp/proxy.yaml"
reloaded
block
app getent hosts wiki.corp.example || echo "wiki.corp.example: no longer resolves on the app machine"

say "4. kill -9: the block stays behind; the next start repairs it"
kill -KILL "$proxy_pid"
wait "$proxy_pid" 2>/dev/null || true
stopped_proxy
echo "after kill -9:"
block
# Make it worse, as a crash in the middle of a rewrite could: no END line.
sed -i '/^# END hybrid-proxy/d' "$tmp/app-hosts"
start_proxy
echo "after the restart:"
block
app curl -sS --max-time 20 --noproxy '*' -o /dev/null -w 'curl: HTTP %{http_code}\n' http://intranet.corp.example:18281/

say "5. a clean exit removes the block, and nothing else"
kill -TERM "$proxy_pid"
wait "$proxy_pid" || die "the proxy exited with status $?"
stopped_proxy
if cmp -s "$tmp/app-hosts" "$tmp/app-hosts.orig"; then
	echo "the app machine's /etc/hosts is byte for byte what it was before the proxy started"
else
	diff "$tmp/app-hosts.orig" "$tmp/app-hosts" || true
	die "the hosts file differs from the original"
fi

say "done: stopping everything"
