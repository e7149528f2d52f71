# Helpers shared by the project's scripts (sourced, not run): messages, and installing Debian
# packages as root or through sudo. The sourcing script sets SCRIPT to its name for errors.

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf '%s: %s\n' "${SCRIPT:-$0}" "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if have sudo; then SUDO=(sudo -n); fi
fi
APT_UPDATED=0

# apt_install PKG...: installs Debian packages; runs `apt-get update` once, before the first.
apt_install() {
    have apt-get || die "need the Debian packages $* but apt-get is not available; install them by hand"
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        die "need the Debian packages $* and cannot install them: not root and no sudo"
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" ||
        die "apt-get install $* failed"
}

# bench_workspace: a scratch folder ($WORK) and a list of background processes ($PIDS) that
# are both cleaned up when the script exits, however it exits; and the file-descriptor limit
# raised for many connections. For the benchmark scripts.
bench_workspace() {
    WORK="$(mktemp -d)"
    PIDS=()
    trap bench_cleanup EXIT
    ulimit -n 20000 2>/dev/null || true
}
bench_cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}

# wait_ready URL LOG: waits up to 30 s for a node's /readyz, or dies with the end of its log.
wait_ready() {
    for _ in $(seq 300); do
        curl -fs "$1/readyz" >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "the node did not become ready: $(tail -5 "$2")"
}
