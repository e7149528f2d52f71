#!/usr/bin/env bash
# The benchmark of the benchmark issue in one command: every scenario against stompbox, against
# RabbitMQ 3.10 Web-STOMP and (where it measures throughput or latency) against the null
# broker of `stompbox-bench`, all on this machine, each case run A B A B, then one Markdown
# table with every system's figures and the ratios.
#
#   scripts/bench.sh                    full sizes (long: the better part of an hour)
#   scripts/bench.sh --small            every scenario once at a small size (CI; ~2 minutes)
#   scripts/bench.sh --only fanout,idle scenarios by name (see --help)
#   scripts/bench.sh --skip-rabbitmq    no RabbitMQ: stompbox and the null broker only
#   scripts/bench.sh --baseline OLD/target/release/stompbox
#                                       an earlier build beside this one, A B A B
#
# Raw figures, one JSON line per run: target/bench/results.jsonl; the table also goes to
# target/bench/results.md; the logs of every process to target/bench/logs/.
#
# This script installs what is missing (RabbitMQ, Redis; as root or through sudo), builds the
# two release binaries and the jwt-auth plugin, prepares a RabbitMQ node of its own and hands
# the scenarios to `stompbox-bench suite` (bench/src/suite/), which starts every process a run
# needs, runs the systems A B A B and renders the table. Everything started is stopped on exit,
# however the run ends.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/target/bench"
SCENARIOS="fanout targeted latency idle auth cluster attack"
RABBIT_HOME_DIR=/usr/lib/rabbitmq/bin

SCRIPT=scripts/bench.sh
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

usage() {
    cat <<EOF
usage: scripts/bench.sh [--small] [--only SCENARIO[,SCENARIO...]] [--skip-rabbitmq] [--rounds N]
                       [--baseline PATH]

scenarios: $SCENARIOS
  fanout    1 topic, 1,000 and 10,000 subscribers: bursts and a steady rate (deliveries/s)
  targeted  10,000 users, each message to one user (deliveries/s)
  latency   20,000 deliveries/s to 100 and to 1,000 subscribers (p99)
  idle      RSS per connected, subscribed client at 10,000 and at the most the fd limit allows
  auth      connect rate: stompbox with the jwt-auth plugin, RabbitMQ with per-user login
  cluster   2 stompbox nodes + Redis against 1 node (throughput, p99 at 10,000 msgs/s)
  attack    one hostile connection (transactions, destinations, subscriptions, a queue
            backlog): what the node's RSS grew by, and a bystander's p99 meanwhile

--small     every scenario once (one round), 50-200 connections, a second or two each
--rounds N  runs per case and system, alternating systems (default 2; 1 with --small)
--baseline PATH
            an earlier stompbox release binary, run as "stompbox (before)" in turn with this
            build in every case that runs stompbox (both cluster nodes too); the table gains
            its column and "stompbox ÷ before". To build one:
              git worktree add OLD <commit> && (cd OLD && cargo build --release --bin stompbox)
--baseline-tenant TOML
            tenant settings for the "before" systems only: with this build as --baseline,
            'history = false' runs its at-most-once path as "before", against the stored path
--tenant TOML
            tenant settings for the current build only (last in its tenant table): with this
            build as --baseline, $'[[tenants.topic_history]]\nprefix = "/topic/"' runs the
            fan-out with topic history against the same fan-out without it
EOF
}

SMALL=0
ONLY=""
SKIP_RABBIT=0
ROUNDS=""
BASELINE=""
BASELINE_TENANT=""
TENANT=""
while [ $# -gt 0 ]; do
    case "$1" in
    --small) SMALL=1 ;;
    --only)
        [ $# -ge 2 ] || die "--only needs a scenario name ($SCENARIOS)"
        ONLY="${ONLY:+$ONLY,}$2"
        shift
        ;;
    --only=*) ONLY="${ONLY:+$ONLY,}${1#--only=}" ;;
    --skip-rabbitmq) SKIP_RABBIT=1 ;;
    --rounds)
        [ $# -ge 2 ] || die "--rounds needs a number"
        ROUNDS="$2"
        shift
        ;;
    --baseline)
        [ $# -ge 2 ] || die "--baseline needs the path of an earlier stompbox binary"
        BASELINE="$2"
        shift
        ;;
    --baseline=*) BASELINE="${1#--baseline=}" ;;
    --baseline-tenant)
        [ $# -ge 2 ] || die "--baseline-tenant needs TOML lines (e.g. 'history = false')"
        BASELINE_TENANT="$2"
        shift
        ;;
    --tenant)
        [ $# -ge 2 ] || die "--tenant needs TOML lines"
        TENANT="$2"
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
if [ -n "$ONLY" ]; then
    for s in ${ONLY//,/ }; do
        case " $SCENARIOS " in
        *" $s "*) ;;
        *) die "unknown scenario '$s' (one of: $SCENARIOS)" ;;
        esac
    done
fi
if [ -n "$ROUNDS" ] && ! [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
    die "--rounds needs a positive number, got '$ROUNDS'"
fi
if [ -n "$BASELINE" ]; then
    [ -f "$BASELINE" ] && [ -x "$BASELINE" ] ||
        die "--baseline $BASELINE: not an executable file (an earlier stompbox release binary)"
    # Absolute: the script changes directory before the suite runs.
    BASELINE="$(cd "$(dirname "$BASELINE")" && pwd)/$(basename "$BASELINE")"
fi
wants() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# --- what the benchmark needs ---------------------------------------------------------------

have cargo || die "cargo is not installed (the Rust toolchain comes from rustup)"
have ss || die "'ss' is missing (Debian: iproute2)"
if wants cluster && ! have redis-server; then
    apt_install redis-server
    have redis-server || die "redis-server is still missing after installing redis-server"
fi

# The Debian package starts its own service on install; a policy-rc.d that refuses keeps that
# from happening (we start our own node), and is removed again at once.
install_rabbitmq() {
    local policy=/usr/sbin/policy-rc.d placed=0
    if [ ! -e "$policy" ] && { [ "$(id -u)" -eq 0 ] || [ ${#SUDO[@]} -gt 0 ]; }; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        placed=1
    fi
    local rc=0
    (apt_install rabbitmq-server) || rc=$?
    if [ "$placed" -eq 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi
    [ "$rc" -eq 0 ] || exit "$rc"
}

if [ "$SKIP_RABBIT" -eq 0 ]; then
    [ -x "$RABBIT_HOME_DIR/rabbitmq-server" ] || install_rabbitmq
    [ -x "$RABBIT_HOME_DIR/rabbitmq-server" ] ||
        die "RabbitMQ is not installed ($RABBIT_HOME_DIR/rabbitmq-server missing); try --skip-rabbitmq"
    RABBIT_VERSION="$(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo unknown)"
    case "$RABBIT_VERSION" in
    3.10.*) ;;
    *) log "warning: RabbitMQ $RABBIT_VERSION installed; the benchmark issue asks for 3.10" ;;
    esac
    have setpriv || [ "$(id -u)" -ne 0 ] || die "setpriv (util-linux) is missing"
fi

# --- builds -----------------------------------------------------------------------------------

cd "$ROOT"
[ -f bench/Cargo.toml ] || die "bench/ (the stompbox-bench load tool) is not in this tree yet"
log "cargo build --release -p stompbox-bench"
cargo build --release -p stompbox-bench
log "cargo build --release --bin stompbox"
cargo build --release --bin stompbox
BENCH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/stompbox-bench"
STOMPBOX_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/stompbox"
[ -x "$BENCH_BIN" ] || die "the build left no $BENCH_BIN"
[ -x "$STOMPBOX_BIN" ] || die "the build left no $STOMPBOX_BIN"
JWT_WASM=""
if wants auth; then
    log "plugins/build.sh (jwt-auth)"
    plugins/build.sh --quiet -p jwt-auth >/dev/null
    JWT_WASM="${CARGO_TARGET_DIR:-$ROOT/plugins/target}/wasm32-wasip2/release/jwt_auth.wasm"
    [ -f "$JWT_WASM" ] || die "plugins/build.sh left no $JWT_WASM"
fi

# --- the run's own processes ------------------------------------------------------------------

rm -rf "$OUT/logs"
mkdir -p "$OUT/logs"
WORK="$(mktemp -d /tmp/stompbox-bench.XXXXXX)"
chmod 755 "$WORK"
mkdir -p "$WORK/pids"
RUNNER_PID=""
EPMD_WAS_RUNNING=1

# stop_pid PID [SECONDS]: SIGTERM, then SIGKILL if it is still there after SECONDS.
stop_pid() {
    local pid="$1" wait_s="${2:-10}" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_s * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "pid $pid ignored SIGTERM for ${wait_s}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$RUNNER_PID" ]; then stop_pid "$RUNNER_PID" 90; fi
    # The suite records every process it starts (file name = pid, content = its executable); a
    # suite that died without cleaning up leaves them here. The executable check keeps a
    # recycled pid from being hit.
    local f pid
    for f in "$WORK"/pids/*; do
        [ -e "$f" ] || continue
        pid="$(basename "$f")"
        if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(cat "$f")" ]; then
            log "stopping leftover pid $pid ($(cat "$f"))"
            # RabbitMQ's start script stops the node on TERM, which takes a while.
            stop_pid "$pid" 60
        fi
    done
    if [ "$EPMD_WAS_RUNNING" -eq 0 ]; then
        # Erlang starts epmd as a daemon when none runs; it was not there before us.
        for pid in $(ss -ltnpH 'sport = :4369' 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
            stop_pid "$pid" 5
        done
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- RabbitMQ ---------------------------------------------------------------------------------

# A node of our own rather than the machine's (if any): a pre-started service may lack
# web_stomp and, started through su, has PAM's 1024 descriptors, which caps it below the
# scenarios' 10,000 connections. Ours has its own name, ports, data and logs, and the hard
# descriptor limit. This prepares it; the suite starts it, and restarts it where a measurement
# needs a fresh node (memory: Erlang keeps what an earlier run freed).
prepare_rabbitmq() {
    local dir="$WORK/rabbitmq" node="stompbox-bench-$$@localhost"
    local amqp_port web_port dist_port ports=()
    # Three different ports nothing listens on now (the kernel's choice for an ephemeral bind).
    mapfile -t ports < <("$BENCH_BIN" free-port --count 3)
    [ ${#ports[@]} -eq 3 ] || die "stompbox-bench free-port gave no ports"
    amqp_port="${ports[0]}"
    web_port="${ports[1]}"
    dist_port="${ports[2]}"
    mkdir -p "$dir/mnesia" "$dir/log"
    # The idle timeouts: the load tool's clients send no heart-beats, and Cowboy's default
    # closes a WebSocket after 60 s without a frame from the client, which cut off the early
    # subscribers of a long 10,000-subscriber run.
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$amqp_port
stomp.listeners.tcp = none
web_stomp.tcp.ip = 127.0.0.1
web_stomp.tcp.port = $web_port
web_stomp.tcp.backlog = 4096
web_stomp.max_connections = infinity
web_stomp.ws_opts.idle_timeout = 3600000
web_stomp.cowboy_opts.idle_timeout = 3600000
CONF
    echo '[rabbitmq_web_stomp].' >"$dir/enabled_plugins"
    : >"$dir/rabbitmq-env.conf" # keeps /etc/rabbitmq/rabbitmq-env.conf (its NODENAME) out

    local -a as_rabbit=()
    local home="$HOME"
    if [ "$(id -u)" -eq 0 ]; then
        # Straight to the rabbitmq user: `su` (what the packaged wrapper uses) would reset the
        # descriptor limit to PAM's 1024.
        chown -R rabbitmq:rabbitmq "$dir"
        as_rabbit=(setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups)
        home="$(getent passwd rabbitmq | cut -d: -f6)"
    fi
    local -a env=(
        env HOME="$home"
        RABBITMQ_NODENAME="$node"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$amqp_port"
        RABBITMQ_DIST_PORT="$dist_port"
        RABBITMQ_MNESIA_BASE="$dir/mnesia"
        RABBITMQ_LOG_BASE="$dir/log"
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
        RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
    )
    # Two commands for the suite: the server (descriptors raised to the hard limit, then the
    # rabbitmq user) and rabbitmqctl bound to this node.
    {
        echo '#!/usr/bin/env bash'
        echo 'ulimit -n "$(ulimit -Hn)"'
        printf 'exec'
        printf ' %q' "${as_rabbit[@]}" "${env[@]}" "$RABBIT_HOME_DIR/rabbitmq-server"
        printf '\n'
    } >"$WORK/rabbitmq-server"
    {
        echo '#!/usr/bin/env bash'
        printf 'exec'
        printf ' %q' "${as_rabbit[@]}" "${env[@]}" "$RABBIT_HOME_DIR/rabbitmqctl" -n "$node" -q
        printf ' "$@"\n'
    } >"$WORK/rabbitmqctl"
    chmod 755 "$WORK/rabbitmq-server" "$WORK/rabbitmqctl"
    if ss -ltnH 'sport = :4369' | grep -q .; then EPMD_WAS_RUNNING=1; else EPMD_WAS_RUNNING=0; fi
    RABBIT_ARGS=(--rabbitmq-server "$WORK/rabbitmq-server" --rabbitmqctl "$WORK/rabbitmqctl"
        --rabbitmq-start-script "$RABBIT_HOME_DIR/rabbitmq-server"
        --rabbitmq-url "ws://127.0.0.1:$web_port/ws" --rabbitmq-version "$RABBIT_VERSION")
    log "RabbitMQ $RABBIT_VERSION: node $node, Web-STOMP on 127.0.0.1:$web_port"
}

RABBIT_ARGS=(--skip-rabbitmq)
if [ "$SKIP_RABBIT" -eq 0 ]; then
    prepare_rabbitmq
fi

# --- the scenarios ----------------------------------------------------------------------------

args=(
    --out "$OUT"
    --work "$WORK"
    --stompbox-bin "$STOMPBOX_BIN"
    "${RABBIT_ARGS[@]}"
)
[ "$SMALL" -eq 1 ] && args+=(--small)
[ -n "$ONLY" ] && args+=(--only "$ONLY")
[ -n "$ROUNDS" ] && args+=(--rounds "$ROUNDS")
[ -n "$BASELINE" ] && args+=(--baseline-bin "$BASELINE")
[ -n "$BASELINE_TENANT" ] && args+=(--baseline-tenant "$BASELINE_TENANT")
[ -n "$TENANT" ] && args+=(--tenant "$TENANT")
[ -n "$JWT_WASM" ] && args+=(--jwt-wasm "$JWT_WASM")
if wants cluster; then args+=(--redis-server "$(command -v redis-server)"); fi

# The suite raises its descriptor limit to the hard one, for itself and what it starts.
"$BENCH_BIN" suite "${args[@]}" &
RUNNER_PID=$!
rc=0
wait "$RUNNER_PID" || rc=$?
RUNNER_PID=""
exit "$rc"
