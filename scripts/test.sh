#!/usr/bin/env bash
# The project's test command: installs what the tests need when it is missing, then runs
#   cargo test --all-targets [ARGS...]
# then each fuzz target for 60 s (SKIP_FUZZ=1 skips that), then the small benchmark (SKIP_BENCH=1).
# Safe to run again and from any directory. On a fresh Debian machine it may call apt-get
# (as root, or through sudo). Set FORCE_INSTALL=1 to reinstall the test clients.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENTS="$ROOT/tests/clients"
VENV="$CLIENTS/.venv"

SCRIPT=scripts/test.sh
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

# sha FILE: a content hash, to tell whether an install is up to date.
sha() { sha256sum "$1" | cut -d' ' -f1; }

# --- what the tests need ----------------------------------------------------------------------

ensure_rust() {
    have cargo || die "cargo is not installed (this machine's Rust toolchain comes from rustup)"
}

# Python 3 with venv support, for stomp.py (tests/external_clients.rs). Debian ships `venv`'s
# ensurepip separately, in python3-venv.
ensure_python() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        return # the virtualenv exists and works
    fi
    have python3 || apt_install python3 python3-venv
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
}

# tests/clients/.venv with tests/clients/requirements.txt (the test clients, schemathesis) and
# examples/backend-python/requirements.txt (the example backend the tests run).
ensure_python_clients() {
    local reqs=("$CLIENTS/requirements.txt" "$ROOT/examples/backend-python/requirements.txt")
    local stamp="$VENV/.requirements.sha256" want
    want="$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)"
    if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        log "tests/clients/.venv is broken (its Python moved?); recreating it"
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating tests/clients/.venv"
        if ! python3 -m venv "$VENV"; then
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV" || die "python3 -m venv fails even with python3-venv installed"
        fi
    fi
    if [ "${FORCE_INSTALL:-0}" = 1 ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        log "pip install -r tests/clients/requirements.txt -r examples/backend-python/requirements.txt"
        "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
            -r "${reqs[0]}" -r "${reqs[1]}"
        echo "$want" >"$stamp"
    fi
}

# Node.js and npm, for @stomp/stompjs (the machine image has them; Debian's as a fallback).
ensure_node() {
    have node || apt_install nodejs
    have npm || apt_install npm
}

# node_modules of tests/clients (the test clients), examples/backend-node (the example
# backend the tests run) and the TypeScript plugins (componentize-js, jco, typescript), each
# from its committed package-lock.json.
ensure_node_clients() {
    local dir lock stamp
    for dir in "$CLIENTS" "$ROOT/examples/backend-node" "$ROOT/plugins/jwt-auth-ts" \
        "$ROOT/tests/plugins/hostile-ts"; do
        lock="$dir/package-lock.json" stamp="$dir/node_modules/.stompbox-lock.sha256"
        if [ "${FORCE_INSTALL:-0}" = 1 ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$(sha "$lock")" ]; then
            log "npm ci in ${dir#"$ROOT"/}"
            (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
            sha "$lock" >"$stamp"
        fi
    done
}

# componentize-py for the Python plugins: each plugin's .venv, as its build.sh makes it (the
# tests build the plugins themselves; this is the part that needs the network).
ensure_python_plugins() {
    local dir reqs="$ROOT/plugins/jwt-auth-py/requirements.txt" stamp want
    want="$(sha "$reqs")"
    for dir in "$ROOT/plugins/jwt-auth-py" "$ROOT/tests/plugins/hostile-py"; do
        stamp="$dir/.venv/.requirements.sha256"
        if [ "${FORCE_INSTALL:-0}" = 1 ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
            || ! "$dir/.venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
            log "pip install componentize-py in ${dir#"$ROOT"/}/.venv"
            rm -rf "$dir/.venv"
            python3 -m venv "$dir/.venv"
            "$dir/.venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$reqs"
            echo "$want" >"$stamp"
        fi
    done
}

# --- hooks for what later tests will need (not installed yet) ---------------------------------

# redis-server, for the cluster tests: each test starts its own on a free port (the binary is
# all that is needed; no service is started here).
ensure_redis() {
    have redis-server || apt_install redis-server
    # redis-cli makes and reshards the Redis Clusters of the cluster tests (Debian ships it
    # in redis-tools, which redis-server depends on). Sharded pub/sub needs Redis 7.
    have redis-cli || apt_install redis-tools
    local version
    version="$(redis-server --version | sed -n 's/.*v=\([0-9]*\)\..*/\1/p')"
    [ "${version:-0}" -ge 7 ] || die "redis-server ${version:-?} is too old: the Redis Cluster tests need Redis 7 (sharded pub/sub)"
}

# The wasm32-wasip2 target: the tests build the example and hostile plugins with it.
ensure_wasm_target() {
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        have rustup || die "the wasm32-wasip2 target is missing and rustup is not installed"
        log "rustup target add wasm32-wasip2"
        rustup target add wasm32-wasip2
    fi
    # Built here, one workspace at a time, rather than from inside the parallel test binaries.
    local ws
    for ws in plugins tests/plugins; do
        log "building $ws for wasm32-wasip2"
        (cd "$ROOT/$ws" && cargo build --release --target wasm32-wasip2 --quiet)
    done
}

# Debian's Chromium, for the browser tests (tests/browser.rs drives /usr/bin/chromium through
# playwright-core, which never downloads a browser).
ensure_chromium() {
    [ -x /usr/bin/chromium ] || apt_install chromium
}

# nginx, for tests/packaging.rs (it runs its own nginx, on a free port, with the example
# packaging/nginx.conf). Debian's package starts a default instance on port 80; the tests
# never use it.
ensure_nginx() {
    have nginx || [ -x /usr/sbin/nginx ] || apt_install nginx
}

# node_modules at the repo root from the committed package-lock.json: the libraries the demo
# page serves under /vendor (sockjs-client, stompjs, @stomp/stompjs) and playwright-core.
ensure_node_root() {
    local lock="$ROOT/package-lock.json" stamp="$ROOT/node_modules/.stompbox-lock.sha256"
    if [ "${FORCE_INSTALL:-0}" = 1 ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$(sha "$lock")" ]; then
        log "npm ci in the repo root"
        (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
        sha "$lock" >"$stamp"
    fi
}

# --- fuzzing ----------------------------------------------------------------------------------

# The cargo-fuzz targets in fuzz/ (TESTING.md says what each checks).
FUZZ_TARGETS=(decode websocket sockjs publish)

# cargo-fuzz. Its targets need nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take
# them.
ensure_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        log "cargo install cargo-fuzz --locked"
        cargo install cargo-fuzz --locked
    fi
}

# Runs each fuzz target for FUZZ_SECONDS (60) from its committed corpus. The corpus is only
# read: what a run adds goes to a scratch directory. A crash fails the test command; its input
# is left in fuzz/artifacts/TARGET/.
run_fuzz() {
    local seconds="${FUZZ_SECONDS:-60}" target scratch
    ensure_cargo_fuzz
    cd "$ROOT"
    log "cargo fuzz build --sanitizer none"
    RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer none
    for target in "${FUZZ_TARGETS[@]}"; do
        scratch="$(mktemp -d)"
        log "cargo fuzz run $target for ${seconds}s"
        if ! RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" "$scratch" "fuzz/corpus/$target" \
            -- -max_total_time="$seconds" -print_final_stats=1; then
            rm -rf "$scratch"
            die "fuzz target $target failed; the input is in fuzz/artifacts/$target/"
        fi
        rm -rf "$scratch"
    done
}

# free_space: logs what is left on the target's disk; the test build, the fuzz build and the
# release build together take several GiB.
free_space() { df -h "$ROOT" | awk 'NR==2 { print "free on " $6 ": " $4 }' | while read -r l; do log "$l"; done; }

main() {
    # A one-off build: the incremental caches would only fill the disk.
    export CARGO_INCREMENTAL=0
    ensure_rust
    ensure_python
    ensure_python_clients
    ensure_python_plugins
    ensure_node
    ensure_node_clients
    ensure_node_root
    ensure_redis
    ensure_wasm_target
    ensure_chromium
    ensure_nginx
    cd "$ROOT"
    free_space
    log "cargo test --workspace --all-targets $*"
    cargo test --workspace --all-targets "$@"
    # Fuzzing after the tests: a few minutes spent only once the suite passed.
    if [ "${SKIP_FUZZ:-0}" != 1 ]; then
        free_space
        run_fuzz
    fi
    # The benchmark is not a timed test: it runs once at a small size to show that the load
    # tool, the scenarios and the RabbitMQ comparison work; its figures are not checked.
    if [ "${SKIP_BENCH:-0}" != 1 ]; then
        free_space
        log "scripts/bench.sh --small"
        "$ROOT/scripts/bench.sh" --small
    fi
}

main "$@"
