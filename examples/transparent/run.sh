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
# KEEP=1 keeps the temp dir.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

RESOURCE=127.0.0.1:18281          # agent.yaml: intranet/wiki.corp.example:18281
RELAY_PORTS=(17671 19372 18095)   # relay.yaml: control, data, http

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
for c in go curl unshare mount ss getent; do command -v "$c" >/dev/null || die "$c not found"; done
for p in "${RELAY_PORTS[@]}" 18281; do
	! listening 127.0.0.1 "$p" || die "127.0.0.1:$p is in use; this example uses fixed ports (see the yaml files)"
done
ns=(unshare -m --propagation private)
[[ $EUID -eq 0 ]] || ns=(unshare -r -m --propagation private)
"${ns[@]}" true 2>/dev/null || die "cannot make a private mount namespace (${ns[*]}): run as root"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/hybrid-transparent.XXXXXX")
chmod 755 "$tmp"
# with_hosts FILE CMD...: run CMD with FILE as its /etc/hosts. (Background
# starts below spell it out with exec at every step, so that $! is the
# program's own pid: signals must reach it, not a shell.)
with_hosts() { "${ns[@]}" sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$@"; }
# app CMD...: run CMD "on the app machine" (its /etc/hosts is app-hosts).
app() { with_hosts "$tmp/app-hosts" "$@"; }

# ------------------------------------------------------------ setup/cleanup
pids=()
proxy_pid=
cleanup() {
	local rc=$? pid i
	set +e
	trap - EXIT INT TERM
	for pid in $proxy_pid; do pids+=("$pid"); done
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

export HYBRID_SEND_KEY HYBRID_LISTEN_KEY
HYBRID_SEND_KEY=$("$hybrid" keys new)
HYBRID_LISTEN_KEY=$("$hybrid" keys new)
cp "$here"/{relay,agent,proxy}.yaml "$here/onprem-hosts" "$tmp/"
cp /etc/hosts "$tmp/app-hosts" # the app machine's hosts file: a copy of yours
chmod 644 "$tmp/app-hosts"
cp "$tmp/app-hosts" "$tmp/app-hosts.orig"
for f in relay agent proxy; do "$hybrid" check --config "$tmp/$f.yaml"; done

start_proxy() {
	: >"$tmp/proxy.log"
	(exec "${ns[@]}" sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$tmp/app-hosts" \
		"$hybrid" proxy --config "$tmp/proxy.yaml") >>"$tmp/proxy.log" 2>&1 &
	proxy_pid=$!
	wait_for "the proxy" 15 grep -qs 'forwarding: listen=127\.77\..*hc=intranet' "$tmp/proxy.log"
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
"$tmp/demo-resource" -listen "$RESOURCE" >"$tmp/resource.log" 2>&1 &
pids+=($!)
wait_for "the web server" 10 bound 127.0.0.1 18281
"$hybrid" relay --config "$tmp/relay.yaml" >"$tmp/relay.log" 2>&1 &
pids+=($!)
wait_for "the relay" 15 bound 127.0.0.1 "${RELAY_PORTS[1]}"
(exec "${ns[@]}" sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$tmp/onprem-hosts" \
	"$hybrid" agent --config "$tmp/agent.yaml") >"$tmp/agent.log" 2>&1 &
pids+=($!)
wait_for "the agent to attach" 15 grep -qs 'listening.*hc=wiki' "$tmp/agent.log"
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
proxy_pid=
if cmp -s "$tmp/app-hosts" "$tmp/app-hosts.orig"; then
	echo "the app machine's /etc/hosts is byte for byte what it was before the proxy started"
else
	diff "$tmp/app-hosts.orig" "$tmp/app-hosts" || true
	die "the hosts file differs from the original"
fi

say "done: stopping everything"
