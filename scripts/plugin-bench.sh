#!/usr/bin/env bash
# What each plugin language costs (BENCHMARKS.md, "Plugins in three languages"): jwt-auth in
# Rust, TypeScript and Python, the same policy, measured the same way:
#   - the component's size;
#   - its compile time at load: the first load (an empty compile cache), then a load from the
#     cache (`stompbox plugin check`, the whole process);
#   - the linear memory of a warm instance (the node's plugin status, after the load below);
#   - CONNECTs per second through it: `stompbox-bench connects`, CLIENTS clients each
#     connecting with a fresh JWT, waiting for CONNECTED and closing, for SECONDS; the node's
#     resident memory after it.
# The languages take turns, ROUNDS times (Rust, TypeScript, Python, Rust, ...).
# `authenticate` through the warm pool, per language: cargo bench --bench plugin.
#   scripts/plugin-bench.sh [--clients N] [--seconds S] [--rounds R]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT=scripts/plugin-bench.sh
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

CLIENTS=32 SECONDS_EACH=10 ROUNDS=2
while [ $# -gt 0 ]; do
    case "$1" in
    --clients) CLIENTS="$2"; shift ;;
    --seconds) SECONDS_EACH="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    *) die "unknown option $1" ;;
    esac
    shift
done
cd "$ROOT"
log "cargo build --release (stompbox, stompbox-bench)"
cargo build --release --quiet -p stompbox -p stompbox-bench --bins
log "building the plugins (Rust, TypeScript, Python)"
(cd plugins && cargo build --release --quiet --target wasm32-wasip2)
(cd plugins/jwt-auth-ts && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; } && npm run --silent build)
plugins/jwt-auth-py/build.sh >/dev/null
BIN="$ROOT/target/release"
bench_workspace

declare -A WASM=(
    [Rust]="$ROOT/plugins/target/wasm32-wasip2/release/jwt_auth.wasm"
    [TypeScript]="$ROOT/plugins/jwt-auth-ts/dist/plugin.wasm"
    [Python]="$ROOT/plugins/jwt-auth-py/dist/plugin.wasm"
)
SECRET=bench-secret-bench-secret-bench
ADMIN=bench-admin-token-0123456789
mapfile -t PORTS < <("$BIN/stompbox-bench" free-port --count 2)
HTTP_PORT=${PORTS[0]} STOMP_PORT=${PORTS[1]}

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

printf '| language | round | component | first load | cached load | instance memory | CONNECTs/s | p50 | p99 | node RSS after |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
for round in $(seq "$ROUNDS"); do
    for lang in Rust TypeScript Python; do
        wasm="${WASM[$lang]}" cache="$WORK/cache-$lang-$round"
        size=$(stat -c %s "$wasm")
        t0=$(date +%s%N)
        XDG_CACHE_HOME="$cache" "$BIN/stompbox" plugin check "$wasm" >/dev/null
        first=$(ms_since "$t0")
        t0=$(date +%s%N)
        XDG_CACHE_HOME="$cache" "$BIN/stompbox" plugin check "$wasm" >/dev/null
        cached=$(ms_since "$t0")
        cat >"$WORK/node.toml" <<TOML
[server]
max_connections = 20000
admin_token = "$ADMIN"
plugin_compile_cache_dir = "$cache/stompbox/plugins"
[[tenants]]
id = "default"
plugin = "$wasm"
[tenants.settings]
jwt_secret = "$SECRET"
TOML
        RUST_LOG=warn "$BIN/stompbox" serve --config "$WORK/node.toml" --http "127.0.0.1:$HTTP_PORT" \
            --stomp "127.0.0.1:$STOMP_PORT" >"$WORK/node.log" 2>&1 &
        NODE=$!
        PIDS+=("$NODE")
        wait_ready "http://127.0.0.1:$HTTP_PORT" "$WORK/node.log"
        result=$("$BIN/stompbox-bench" connects --stomp "127.0.0.1:$STOMP_PORT" --secret "$SECRET" \
            --clients "$CLIENTS" --seconds "$SECONDS_EACH")
        status=$(curl -fs -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$HTTP_PORT/admin/v1/tenants/default/plugin")
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$NODE/status")
        kill "$NODE"
        wait "$NODE" 2>/dev/null || true
        python3 - "$result" "$status" <<PY
import json, sys
r, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
mib = lambda b: f"{b / 1048576:.1f} MiB"
print(f"| $lang | $round | {$size / 1e6:.2f} MB | {$first / 1000:.2f} s | {$cached / 1000:.2f} s "
      f"| {mib(s['instance_memory_bytes'])} | {r['connects_per_s']:,.0f} | {r['p50_ms']:.2f} ms "
      f"| {r['p99_ms']:.2f} ms | {mib($rss * 1024)} |")
PY
    done
done
