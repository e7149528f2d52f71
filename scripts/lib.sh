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
