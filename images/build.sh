#!/usr/bin/env bash
# Build every image under images/ on a Debian trixie base, and save each one
# as an archive for engines that cannot reach a registry (the lab's inner
# engines, air-gapped sites).
#
#   images/build.sh [NAME ...]      default: every images/*/Dockerfile
#
# The base image tide/debian:trixie is pulled where a registry answers, and
# otherwise made with debootstrap from a Debian mirror and imported: the path
# an air-gapped site takes too. Re-runs reuse the base, Docker's build cache
# and saved archives whose image ID has not changed, and take seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
state=${TIDE_STATE_DIR:-$top/.lab}
archives="$state/images"
base=tide/debian:trixie
mirror=${TIDE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
version=$(sed -n 's/^version: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$top/galaxy.yml")
log() { printf '[images] %s\n' "$*" >&2; }

"$here/engine.sh"
mkdir -p "$archives"

ensure_base() {
    if docker image inspect "$base" >/dev/null 2>&1; then
        return
    fi
    log "base $base: trying a registry (docker pull debian:trixie)"
    if timeout 120 docker pull -q debian:trixie >/dev/null 2>&1; then
        docker tag debian:trixie "$base"
        log "base $base: pulled"
        return
    fi
    log "base $base: no registry answers; building it with debootstrap (about a minute)"
    if ! command -v debootstrap >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    local root="$state/rootfs-trixie"
    rm -rf "$root"
    debootstrap --variant=minbase trixie "$root" "$mirror" >"$state/debootstrap.log" 2>&1 ||
        { log "ERROR: debootstrap failed, see $state/debootstrap.log"; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import - "$base" >/dev/null
    rm -rf "$root"
    log "base $base: imported"
}

build_one() {
    local name=$1 dir="$here/$1" tag="tide/$1:$version"
    [ -f "$dir/Dockerfile" ] || { log "ERROR: no image named '$name' (expected $dir/Dockerfile)"; exit 2; }
    log "building $tag (log: $state/build-$name.log)"
    # Progress: one line per Dockerfile step; the whole output goes to the log.
    if ! docker build --network host --build-arg "BASE=$base" -t "$tag" "$dir" 2>&1 |
        tee "$state/build-$name.log" | { grep --line-buffered '^Step ' || true; } | sed -u 's/^/[images]   /' >&2; then
        tail -20 "$state/build-$name.log" >&2
        log "ERROR: docker build of $tag failed; see $state/build-$name.log"
        exit 1
    fi
    # The lab's hosts and Slurm cluster run only on this machine's engine: no archive needed.
    case $name in lab-host | slurm-lab) return ;; esac
    local id
    id=$(docker image inspect -f '{{.Id}}' "$tag")
    if [ "$(cat "$archives/$name.id" 2>/dev/null)" != "$id" ]; then
        log "saving $tag to $archives/$name.tar"
        docker save -o "$archives/$name.tar.part" "$tag"
        mv "$archives/$name.tar.part" "$archives/$name.tar"
        echo "$id" >"$archives/$name.id"
    fi
}

ensure_base
if [ $# -eq 0 ]; then
    set -- $(cd "$here" && ls -d */ | tr -d / | while read -r d; do [ -f "$d/Dockerfile" ] && echo "$d"; done)
fi
for name in "$@"; do
    build_one "$name"
done
# A rebuild leaves the previous image untagged: drop ours, nothing else.
docker image prune -f --filter label=org.tide.image >/dev/null
log "images ready: $*"
