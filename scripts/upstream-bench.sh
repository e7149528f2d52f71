#!/usr/bin/env bash
# Upstream throughput (BENCHMARKS.md, "Client SENDs to the backend"): 1,000 STOMP clients SEND
# to /app/bench with receipts for a while, into the tenant's Redis stream and then through the
# webhook to a local receiver that checks every signature; each way is measured ROUNDS times.
# Every accepted message is accounted for: the stream's length, or the receiver's item count,
# must reach the number of RECEIPTs.
#   scripts/upstream-bench.sh [--clients N] [--window W] [--seconds S] [--rounds R]
# BATCH_MAX=N sets the tenant's upstream.batch_max (100 by default).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT=scripts/upstream-bench.sh
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

CLIENTS=1000 WINDOW=4 SECONDS_EACH=10 ROUNDS=2
while [ $# -gt 0 ]; do
    case "$1" in
    --clients) CLIENTS="$2"; shift ;;
    --window) WINDOW="$2"; shift ;;
    --seconds) SECONDS_EACH="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    *) die "unknown option $1" ;;
    esac
    shift
done
have redis-server || die "redis-server is needed (scripts/test.sh installs it)"
cd "$ROOT"
log "cargo build --release (stompbox, stompbox-bench)"
cargo build --release --quiet -p stompbox -p stompbox-bench --bins
BIN="$ROOT/target/release"
bench_workspace

mapfile -t PORTS < <("$BIN/stompbox-bench" free-port --count 3)
REDIS_PORT=${PORTS[0]} HTTP_PORT=${PORTS[1]} STOMP_PORT=${PORTS[2]}
redis-server --port "$REDIS_PORT" --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
SECRET=bench-webhook-secret-0123
"$BIN/stompbox-bench" webhook-sink --secret "$SECRET" >"$WORK/sink.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do grep -q listening "$WORK/sink.log" && break; sleep 0.1; done
SINK="$(sed -n 's/^listening //p' "$WORK/sink.log")"

# node MODE: starts a node whose tenant hands /app messages to the stream or the webhook.
node() {
    local mode="$1" upstream
    if [ "$mode" = stream ]; then
        upstream='stream = true
stream_max_len = 100000000'
    else
        upstream="webhook_url = \"http://$SINK/hook\"
webhook_secret = \"$SECRET\""
    fi
    cat >"$WORK/$mode.toml" <<TOML
[server]
max_connections = 20000
[[tenants]]
id = "default"
[tenants.upstream]
batch_max = ${BATCH_MAX:-100}
$upstream
TOML
    RUST_LOG=warn "$BIN/stompbox" serve --config "$WORK/$mode.toml" --http "127.0.0.1:$HTTP_PORT" \
        --stomp "127.0.0.1:$STOMP_PORT" --redis "redis://127.0.0.1:$REDIS_PORT/0" --node-id bench \
        >"$WORK/node-$mode.log" 2>&1 &
    NODE=$!
    PIDS+=("$NODE")
    wait_ready "http://127.0.0.1:$HTTP_PORT" "$WORK/node-$mode.log"
}

stream_length() { redis-cli -p "$REDIS_PORT" XLEN 'sb:{default}:upstream'; }
sink_items() { tail -1 "$WORK/sink.log" | sed -n 's/.*"items":\([0-9]*\).*/\1/p'; }

printf '| way out | round | accepted/s | p50 | p99 | max | accepted | found by the backend | node CPU s |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
for mode in stream webhook; do
    for round in $(seq "$ROUNDS"); do
        node "$mode"
        before=$([ "$mode" = stream ] && stream_length || sink_items)
        before=${before:-0}
        cpu0=$(awk '{print $14+$15}' "/proc/$NODE/stat")
        result=$("$BIN/stompbox-bench" upstream --stomp "127.0.0.1:$STOMP_PORT" --clients "$CLIENTS" \
            --window "$WINDOW" --duration "$SECONDS_EACH")
        cpu1=$(awk '{print $14+$15}' "/proc/$NODE/stat")
        sleep 1.5 # the sink prints its count every second
        after=$([ "$mode" = stream ] && stream_length || sink_items)
        accepted=$(echo "$result" | sed -n 's/.*"accepted":\([0-9]*\).*/\1/p')
        found=$((after - before))
        [ "$found" -ge "$accepted" ] || die "$mode: $accepted accepted but the backend found $found"
        echo "$result" | python3 -c "
import json, sys
r = json.load(sys.stdin)
print('| $mode | $round | {:,.0f} | {:.2f} ms | {:.2f} ms | {:.1f} ms | {:,} | {:,} | {:.1f} |'.format(
    r['per_second'], r['p50_ms'], r['p99_ms'], r['max_ms'], r['accepted'], $found,
    ($cpu1 - $cpu0) / $(getconf CLK_TCK)))"
        kill "$NODE"
        wait "$NODE" 2>/dev/null || true
    done
done
