#!/usr/bin/env bash
# A Docker engine of our own for the image tests (tests/image/), on a machine that has none running
# and no registry to pull from: Debian's docker.io (Docker 20.10, the oldest engine the Dockerfile
# must build on), a daemon on its own socket and data folder, and a local Python 3.11 base image
# made with debootstrap, since nothing can be pulled.
#
#   scripts/image-env.sh start   # as root: prints the lines to eval (COMFYRUN_DOCKER_HOST, ...)
#   scripts/image-env.sh stop    # stops the daemon this script started
#
# The tests find the engine through COMFYRUN_DOCKER_HOST (a unix:// socket) and the base through
# COMFYRUN_PYTHON_IMAGE; without them they skip and say why. The daemon's data (its layer cache)
# stays in COMFYRUN_DOCKER_DIR (default ~/.cache/comfyrun/docker), so a second run rebuilds only
# what changed. Outbound TLS may go through an intercepting proxy whose CA certificates this
# machine adds in /usr/local/share/ca-certificates: the base carries them and points pip at the
# system bundle, or every download during the build fails its certificate checks.
set -euo pipefail

dir="${COMFYRUN_DOCKER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/comfyrun/docker}"
sock="$dir/docker.sock"
pidfile="$dir/dockerd.pid"
base="comfyrun-test-base:bookworm"
# The engine's own client: a newer docker on PATH may want buildx for `docker build`.
docker_=(/usr/bin/docker -H "unix://$sock")

log() { echo "image-env: $*" >&2; }

install_engine() {
    local missing=()
    [[ -x /usr/sbin/dockerd && -x /usr/bin/docker ]] || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) != 0 ]]; then
        log "needs root to install ${missing[*]}"
        exit 3
    fi
    log "installing ${missing[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_daemon() {
    mkdir -p "$dir/data" "$dir/exec"
    if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null && "${docker_[@]}" info >/dev/null 2>&1; then
        log "daemon already running (pid $(cat "$pidfile"))"
        return 0
    fi
    log "starting dockerd (data in $dir/data)"
    # No iptables or bridge: builds and containers use the host's network (--network host).
    /usr/sbin/dockerd --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$pidfile" \
        -H "unix://$sock" --iptables=false --bridge=none >"$dir/dockerd.log" 2>&1 &
    for _ in $(seq 1 150); do
        if "${docker_[@]}" info >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    log "dockerd did not answer in 30 s:"
    tail -20 "$dir/dockerd.log" >&2
    exit 1
}

make_base() {
    if "${docker_[@]}" image inspect "$base" >/dev/null 2>&1; then
        return 0
    fi
    log "making $base with debootstrap (about a minute)"
    local root
    root=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates,curl \
        bookworm "$root" http://deb.debian.org/debian >"$dir/debootstrap.log" 2>&1 ||
        { tail -20 "$dir/debootstrap.log" >&2; exit 1; }
    if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
        cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    fi
    chroot "$root" update-ca-certificates >/dev/null
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
    local bundle=/etc/ssl/certs/ca-certificates.crt
    tar -C "$root" -c . | "${docker_[@]}" import \
        -c "ENV PIP_CERT=$bundle SSL_CERT_FILE=$bundle REQUESTS_CA_BUNDLE=$bundle" \
        -c 'CMD ["python3"]' - "$base" >/dev/null
    rm -rf "$root"
}

case "${1:-}" in
start)
    install_engine
    start_daemon
    make_base
    echo "export COMFYRUN_DOCKER_HOST=unix://$sock COMFYRUN_PYTHON_IMAGE=$base"
    ;;
stop)
    if [[ -f $pidfile ]]; then
        pid=$(cat "$pidfile")
        log "stopping dockerd (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
    fi
    # dockerd leaves its network namespace mounted: the folder could not be removed otherwise.
    if mountpoint -q "$dir/exec/netns/default" 2>/dev/null; then
        umount "$dir/exec/netns/default" || true
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
