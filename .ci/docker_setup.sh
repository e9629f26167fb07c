#!/usr/bin/env bash
# Docker engine and base images for the container tests, on a machine that has only a docker client
# and can pull nothing from a container registry (only the Debian/PyPI/npm package registries answer).
#
#   .ci/docker_setup.sh         install docker.io + mmdebstrap if missing, start dockerd if no daemon
#                               answers, build ncf-base:bookworm if missing, (re)build ncf-python:bookworm
#   .ci/docker_setup.sh stop    stop the dockerd that this script started (PID from the pidfile)
#
# Idempotent: every step is skipped when its result is already there (ncf-python is a cached build).
# To rebuild the rootfs from scratch: docker rmi ncf-python:bookworm ncf-base:bookworm
set -euo pipefail

PIDFILE=${NCF_DOCKERD_PIDFILE:-/tmp/ncf-dockerd.pid}
LOG=${NCF_DOCKERD_LOG:-/tmp/ncf-dockerd.log}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Both clients on the machine (/usr/local/bin/docker 28.x first on PATH, Debian's /usr/bin/docker 20.10)
# default to this socket; pinning it means a stray DOCKER_HOST/context can't send us to another engine.
export DOCKER_HOST=unix:///var/run/docker.sock
# Debian's docker.io has no buildx plugin, so BuildKit builds fail: use the legacy builder explicitly.
export DOCKER_BUILDKIT=0

log() { printf '[docker_setup %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

daemon_up() { timeout 10 docker info >/dev/null 2>&1; }

stop_dockerd() {
    if [[ ! -s $PIDFILE ]]; then
        log "no $PIDFILE: no dockerd of ours to stop"
        return 0
    fi
    local pid
    pid=$(<"$PIDFILE")
    # Only ever kill the process the pidfile names, and only if it still is a dockerd.
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]]; then
        log "stopping dockerd (pid $pid)"
        kill -TERM "$pid" # dockerd stops its containers, then its own containerd, then exits
        for _ in $(seq 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "dockerd $pid still alive after 60 s: SIGKILL"
            kill -KILL "$pid"
        fi
    fi
    rm -f "$PIDFILE"
}

install_packages() {
    # docker.io = dockerd + containerd + runc + docker-proxy (+ iptables); mmdebstrap builds the rootfs.
    # docker-compose (1.29): the serving tests bring docker-compose.yml up.
    if command -v dockerd >/dev/null && command -v mmdebstrap >/dev/null && command -v docker-compose >/dev/null; then
        return 0
    fi
    log "apt-get install docker.io mmdebstrap docker-compose"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        docker.io mmdebstrap docker-compose >/dev/null
}

start_dockerd() {
    if daemon_up; then
        log "a docker daemon already answers: using it"
        return 0
    fi
    # A pidfile left by a dockerd that was killed: dockerd refuses to start if its PID is in use again.
    if [[ -s $PIDFILE && $(cat "/proc/$(<"$PIDFILE")/comm" 2>/dev/null) != dockerd ]]; then
        rm -f "$PIDFILE"
    fi
    log "starting dockerd (log: $LOG)"
    # Defaults work in this sandbox (overlay2 on ext4, iptables via nf_tables, bridge networking):
    # containers reach each other on user-defined networks, reach the apt mirror through NAT (docker
    # build's apt-get needs it), and published 127.0.0.1 ports are reachable from the host.
    # setsid: dockerd must outlive this script and not get the caller's terminal signals; it writes
    # its own PID to --pidfile (and removes it on a clean exit). -w keeps $! alive as long as dockerd.
    setsid -w dockerd --host="$DOCKER_HOST" --pidfile="$PIDFILE" >"$LOG" 2>&1 </dev/null &
    local starter=$!
    for _ in $(seq 60); do
        if daemon_up; then
            log "dockerd up (pid $(<"$PIDFILE"), storage driver $(docker info -f '{{.Driver}}'))"
            return 0
        fi
        kill -0 "$starter" 2>/dev/null || break # dockerd exited: no point waiting
        sleep 1
    done
    log "dockerd did not come up; last lines of $LOG:"
    tail -n 20 "$LOG" >&2
    return 1
}

# The host's own Debian mirror(s) for bookworm, as one-line "deb URI SUITE main" entries, read at run
# time from deb822 .sources files and one-line .list files (no mirror host is written in this repo).
apt_mirrors() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -e $f ]] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
        {
            types = uris = suites = comps = ""; enabled = "yes"
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^[ \t]*#/) continue
                key = tolower($i); sub(/:.*/, "", key)
                val = $i; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "components") comps = val
                else if (key == "enabled") enabled = tolower(val)
            }
            # Debian archives only: a third-party repo for bookworm (docker, nodesource...) has no "main".
            if (enabled == "no" || types !~ /(^| )deb( |$)/ || comps !~ /(^| )main( |$)/) next
            n = split(uris, u, /[ \t]+/); m = split(suites, s, /[ \t]+/)
            for (a = 1; a <= n; a++) for (b = 1; b <= m; b++)
                if (s[b] ~ /^bookworm(-updates|-security)?$/) print "deb " u[a] " " s[b] " main"
        }' "$f"
    done
    # One-line style: "deb [options] URI SUITE COMPONENT..."
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" { sub(/\[[^]]*\]/, ""); main = 0; for (i = 4; i <= NF; i++) if ($i == "main") main = 1
                           if (main && $3 ~ /^bookworm(-updates|-security)?$/) print "deb " $2 " " $3 " main" }'
}

build_base() {
    if docker image inspect ncf-base:bookworm >/dev/null 2>&1; then
        log "ncf-base:bookworm exists"
        return 0
    fi
    local mirrors tmp
    mapfile -t mirrors < <(apt_mirrors | sort -u)
    if [[ ${#mirrors[@]} -eq 0 ]]; then
        log "no bookworm entry found in /etc/apt/sources.list{,.d}: cannot build the rootfs"
        return 1
    fi
    log "mmdebstrap bookworm minbase from: ${mirrors[*]}"
    tmp=$(mktemp -d /tmp/ncf-rootfs.XXXXXX)
    # shellcheck disable=SC2064 # expand $tmp now: it is local to this function
    trap "rm -rf '$tmp'" EXIT
    # minbase = Essential + apt. The dpkg path-excludes are also written into the image's
    # /etc/dpkg/dpkg.cfg.d, so later apt-get installs stay free of docs, man pages and locales too.
    # The merged-usr hook sets up merged /usr itself (as debootstrap does); without it apt pulls in
    # usrmerge and with it ~45 MB of perl. mmdebstrap empties the apt lists and package cache itself.
    mmdebstrap --variant=minbase --mode=root --format=tar \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        bookworm "$tmp/rootfs.tar" "${mirrors[@]}" >"$tmp/mmdebstrap.log" 2>&1 || {
        tail -n 30 "$tmp/mmdebstrap.log" >&2
        return 1
    }
    # Through a file, not a pipe: a failed mmdebstrap must not leave a half-imported, tagged image.
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        "$tmp/rootfs.tar" ncf-base:bookworm >/dev/null
    rm -rf "$tmp"
    trap - EXIT
}

build_python() {
    # Always run: the layer cache makes it a no-op when containers/base/Dockerfile is unchanged.
    log "docker build ncf-python:bookworm"
    docker build --quiet -t ncf-python:bookworm -f "$ROOT/containers/base/Dockerfile" "$ROOT/containers/base" >/dev/null
}

case ${1:-up} in
    stop) stop_dockerd ;;
    up)
        install_packages
        start_dockerd
        build_base
        build_python
        docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^ncf-(base|python):' >&2
        ;;
    *)
        echo "usage: $0 [up|stop]" >&2
        exit 2
        ;;
esac
