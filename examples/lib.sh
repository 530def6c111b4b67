# lib.sh — the shell every examples/*/run.sh shares. Source it, don't run it:
#
#   set -euo pipefail
#   . "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
#
# It defines functions and a few variables and starts nothing by itself. All of
# it is written for `set -euo pipefail`: no unset variable is read, and a
# function that fails returns non-zero (so the caller's set -e stops the run)
# or dies with a message.
#
# Variables it sets on sourcing:
#   here   the directory of the run.sh that sources it (the example's own)
#   root   the repository's root (built from, with go build)
# and later, as the functions below say: tmp, pids, failure_logs, hybrid,
# send_key, listen_key, relay_keys, agent_keys, proxy_keys, as_user,
# server_user, ns, bind_hosts and a NAME_pid for each process started with
# spawn. A script may define stop_resource: cleanup calls it.
#
# Variables it reads, where a function says so: RELAY_PORTS (control, data,
# http), PROXY_HOST and PROXY_PORT (the proxy's port forward), KEEP (1 keeps
# the temp dir).
# shellcheck shell=bash
# shellcheck disable=SC2034 # variables set here for the sourcing scripts
# shellcheck disable=SC2154 # NAME_pid variables are set by spawn (printf -v)

here=$(cd "$(dirname "${BASH_SOURCE[1]:-$0}")" && pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ------------------------------------------------------------------- output

# say TEXT...: print a step's heading (bold when stdout is a terminal).
if [[ -t 1 ]]; then
	say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
	say() { printf '\n== %s\n' "$*"; }
fi

# die TEXT...: print "run.sh: TEXT" on stderr and exit 1 (the EXIT trap then
# cleans up and prints the end of the logs).
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- preflight

# need PROG...: die "PROG not found" for the first PROG not on PATH.
need() {
	local p
	for p in "$@"; do
		command -v "$p" >/dev/null || die "$p not found"
	done
}

# listening HOST PORT: true when something accepts TCP connections there.
listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# ports_free HOST PORT...: die unless every HOST:PORT is free. The examples
# use fixed ports, the ones their yaml files name.
ports_free() {
	local host=$1 p
	shift
	for p in "$@"; do
		! listening "$host" "$p" ||
			die "$host:$p is in use; this example uses fixed ports (see the yaml files)"
	done
}

# run_as USER WHAT: servers that refuse to run as root (PostgreSQL, MariaDB)
# run as USER when we are root. Sets the array as_user to the prefix that does
# that (runuser -u USER --), or to nothing when not root; dies when root and
# USER does not exist (WHAT names the server in the message).
run_as() {
	as_user=()
	server_user=$1
	if [[ $EUID -eq 0 ]]; then
		id "$1" >/dev/null 2>&1 || die "running as root, but there is no $1 user to run $2 as"
		as_user=(runuser -u "$1" --)
	fi
}

# user_dir DIR: make $tmp/DIR for the server that run_as set up: when root,
# DIR belongs to that user and $tmp lets it through (mode 711).
user_dir() {
	mkdir -p "$tmp/$1"
	if [[ $EUID -eq 0 ]]; then
		chmod 711 "$tmp"
		chown "$server_user": "$tmp/$1"
	fi
}

# need_mount_ns: check that a private mount namespace can be made (as root,
# or in a user namespace of our own), or die. Sets ns, the unshare command
# that makes one, and bind_hosts, a command prefix: `"${bind_hosts[@]}" FILE
# CMD...` runs CMD with FILE bind-mounted over its /etc/hosts, the real one
# untouched. It is a prefix, not a function, so that spawn's pid is CMD's own
# (each step execs the next).
need_mount_ns() {
	ns=(unshare -m --propagation private)
	[[ $EUID -eq 0 ]] || ns=(unshare -r -m --propagation private)
	"${ns[@]}" true 2>/dev/null || die "cannot make a private mount namespace (${ns[*]}): run as root"
	# shellcheck disable=SC2016 # $0 and $@ are sh's, not ours
	bind_hosts=("${ns[@]}" sh -c 'mount --bind "$0" /etc/hosts && exec "$@"')
}

# with_hosts FILE CMD...: run CMD in the foreground with FILE as its
# /etc/hosts (after need_mount_ns).
with_hosts() { "${bind_hosts[@]}" "$@"; }

# ------------------------------------------------------------ setup/cleanup

# make_tmp NAME LOG...: make the temp dir $tmp (${TMPDIR:-/tmp}/hybrid-NAME.*)
# and set the traps that clean up on any exit: see cleanup. LOG... are the
# files in $tmp whose last lines are printed if the run fails, in that order.
make_tmp() {
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/hybrid-$1.XXXXXX")
	shift
	failure_logs=("$@")
	pids=()
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# cleanup: the EXIT trap make_tmp sets. Stops every process in pids with
# SIGTERM, the last started first, and waits up to 15 s for each before
# SIGKILL; then calls the script's stop_resource, if it defines one (to stop a
# server that is not in pids, e.g. a database with its own way to stop); on
# failure prints the last 20 lines of each failure log; removes $tmp unless
# KEEP=1; and exits with the script's status.
cleanup() {
	local rc=$? pid i f
	set +e
	# Finish even when interrupted again: a second Ctrl-C must not leave
	# processes or the temp dir behind (each wait below is bounded).
	trap - EXIT
	trap '' INT TERM
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null
	done
	for pid in "${pids[@]}"; do
		for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if declare -F stop_resource >/dev/null; then
		stop_resource
	fi
	if ((rc != 0)); then
		for f in "${failure_logs[@]}"; do
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

# ---------------------------------------------------------------- processes

# spawn NAME CMD...: start CMD in the background, stdout and stderr to
# $tmp/NAME.log, and set NAME_pid to its pid, which cleanup stops (it is added
# to pids). CMD must be a program, not a shell function, so that the pid is
# the program's own and signals reach it.
spawn() {
	local name=$1
	shift
	"$@" >"$tmp/$name.log" 2>&1 &
	printf -v "${name}_pid" %s "$!"
	pids+=("$!")
}

# untrack PID: drop PID from pids, once the script has stopped and waited for
# it itself (so that cleanup never signals a pid that may have been reused).
untrack() {
	local p keep=()
	for p in "${pids[@]}"; do
		[[ $p == "$1" ]] || keep+=("$p")
	done
	pids=("${keep[@]}")
}

# bound HOST PORT...: true when a socket listens on each HOST:PORT. Used to
# wait for our own processes instead of connecting: a probe connection to the
# proxy would be a real stream through the tunnel (and a line in the audit
# log), and one to the relay a refused handshake in its log.
bound() {
	local host=$1 p
	shift
	for p in "$@"; do
		# grep without -q reads all of its input: with -q it may exit first
		# and fail the pipeline (SIGPIPE under pipefail).
		ss -Hltn "sport = :$p" 2>/dev/null | grep -F "$host:$p" >/dev/null || return 1
	done
}

# wait_for WHAT SECONDS CMD...: poll CMD every 0.1 s until it succeeds, or die
# "timed out after SECONDS s waiting for WHAT".
wait_for() {
	local what=$1 secs=$2 i
	shift 2
	for ((i = 0; i < secs * 10; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	die "timed out after ${secs}s waiting for $what"
}

# alive PID NAME: true while PID runs; else die "NAME exited early".
alive() { kill -0 "$1" 2>/dev/null || die "$2 exited early (see its log below)"; }

# wait_alive PID NAME WHAT SECONDS CMD...: wait_for WHAT SECONDS CMD..., but
# die at once if PID (the process NAME) exits first.
wait_alive() {
	local pid=$1 name=$2
	shift 2
	wait_for "$1" "$2" _alive_and "$pid" "$name" "${@:3}"
}
_alive_and() { alive "$1" "$2" && "${@:3}"; }

# ------------------------------------------------------------------- hybrid

# build_hybrid [NAME=PKG...]: go build ./cmd/hybrid into $tmp/hybrid, and each
# package PKG (relative to the repository's root) into $tmp/NAME. Sets hybrid.
build_hybrid() {
	(
		cd "$root" || exit
		go build -o "$tmp/hybrid" ./cmd/hybrid || exit
		for spec in "$@"; do
			go build -o "$tmp/${spec%%=*}" "./${spec#*=}" || exit
		done
	) || return
	hybrid=$tmp/hybrid
}

# new_keys: make two fresh keys with `hybrid keys new`: send_key (key "apps",
# the send right, for the proxy) and listen_key (key "onprem", the listen
# right, for the agent). Sets relay_keys, agent_keys and proxy_keys, the
# environment each role gets (VAR=VALUE words for env): each process only the
# keys it needs. A script may change them before copy_configs/start_roles.
new_keys() {
	send_key=$("$hybrid" keys new)
	listen_key=$("$hybrid" keys new)
	relay_keys=(HYBRID_SEND_KEY="$send_key" HYBRID_LISTEN_KEY="$listen_key")
	agent_keys=(HYBRID_LISTEN_KEY="$listen_key")
	proxy_keys=(HYBRID_SEND_KEY="$send_key")
}

# copy_configs [FILE...]: copy relay.yaml, agent.yaml, proxy.yaml and FILE...
# from the example's directory into $tmp, where the roles read them.
# shellcheck disable=SC2120 # FILE... is optional
copy_configs() {
	local f
	for f in relay.yaml agent.yaml proxy.yaml "$@"; do
		cp "$here/$f" "$tmp/"
	done
}

# check_configs: `hybrid check` the three copied files, each with its role's
# keys (relay_keys, agent_keys, proxy_keys) in the environment.
check_configs() {
	env "${relay_keys[@]}" "$hybrid" check --config "$tmp/relay.yaml"
	env "${agent_keys[@]}" "$hybrid" check --config "$tmp/agent.yaml"
	env "${proxy_keys[@]}" "$hybrid" check --config "$tmp/proxy.yaml"
}

# keys_and_configs: the keys step of the port-forward examples (postgres,
# mysql, https-api): new_keys, then copy_configs and check_configs, saying so.
keys_and_configs() {
	say "making fresh keys (hybrid keys new)"
	new_keys
	echo "send key (apps) and listen key (onprem) generated; they travel in the environment only"
	# shellcheck disable=SC2119 # no extra files here
	copy_configs
	check_configs
}

# start_roles HC ENDPOINT: start relay, agent and proxy from the copied files,
# each with its keys (relay_keys, agent_keys, proxy_keys) and its own log, and
# wait for each: the relay until its control and data ports
# (RELAY_PORTS[0..1]) listen, the agent until it listens for the hybrid
# connection HC (publishing ENDPOINT), the proxy until PROXY_HOST:PROXY_PORT
# listens. Prints a line for each, with its pid.
start_roles() {
	local hc=$1 endpoint=$2
	say "starting relay, agent and proxy (three processes)"
	spawn relay env "${relay_keys[@]}" "$hybrid" relay --config "$tmp/relay.yaml"
	wait_alive "$relay_pid" relay "the relay" 15 bound 127.0.0.1 "${RELAY_PORTS[0]}" "${RELAY_PORTS[1]}"
	echo "relay  pid $relay_pid  control 127.0.0.1:${RELAY_PORTS[0]}, data 127.0.0.1:${RELAY_PORTS[1]}"

	spawn agent env "${agent_keys[@]}" "$hybrid" agent --config "$tmp/agent.yaml"
	wait_alive "$agent_pid" agent "the agent to attach" 15 grep -qs "listening.*hc=$hc" "$tmp/agent.log"
	echo "agent  pid $agent_pid  listening for \"$hc\", publishing $endpoint"

	spawn proxy env "${proxy_keys[@]}" "$hybrid" proxy --config "$tmp/proxy.yaml"
	wait_alive "$proxy_pid" proxy "the proxy to listen" 15 bound "$PROXY_HOST" "$PROXY_PORT"
	echo "proxy  pid $proxy_pid  listening on $PROXY_HOST:$PROXY_PORT"
}

# start_onprem ADDR HC: the on-prem side of the name-based examples (socks,
# transparent): the demo web server ($tmp/demo-resource) on ADDR, the relay,
# and the agent with $tmp/onprem-hosts as its /etc/hosts (the simulated
# on-prem DNS; after need_mount_ns), waiting for each: the agent until it
# listens for the hybrid connection HC. Keys come from the environment.
start_onprem() {
	spawn resource "$tmp/demo-resource" -listen "$1"
	wait_for "the web server" 10 bound "${1%:*}" "${1##*:}"
	spawn relay "$hybrid" relay --config "$tmp/relay.yaml"
	wait_for "the relay" 15 bound 127.0.0.1 "${RELAY_PORTS[1]}"
	# The agent alone sees onprem-hosts as its /etc/hosts.
	spawn agent "${bind_hosts[@]}" "$tmp/onprem-hosts" "$hybrid" agent --config "$tmp/agent.yaml"
	wait_for "the agent to attach" 15 grep -qs "listening.*hc=$2" "$tmp/agent.log"
}

# audit_closed N: true once the agent's audit log ($tmp/audit.jsonl) holds N
# or more "close" events, one per stream that ended.
audit_closed() { [[ $(grep -c '"event":"close"' "$tmp/audit.jsonl" 2>/dev/null) -ge $1 ]]; }

# wait_audit N: wait (10 s at most) until the audit log has N close events.
wait_audit() { wait_for "the audit log" 10 audit_closed "$1"; }
