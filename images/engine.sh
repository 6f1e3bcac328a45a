#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine: install Debian's docker.io
# when the daemon is missing and start it when no service manager runs it.
# Idempotent: when an engine already answers this takes well under a second.
set -euo pipefail
log() { printf '[engine] %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    log "installing Debian's docker.io (first run only, about a minute)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io iptables >/dev/null
fi

if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    log "starting docker.service"
    systemctl start docker
else
    log "no service manager here: starting dockerd in the background (log: /var/log/tide-dockerd.log)"
    nohup dockerd >/var/log/tide-dockerd.log 2>&1 &
fi

for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        log "engine is up: $(docker version --format '{{.Server.Version}}')"
        exit 0
    fi
    sleep 1
done
log "ERROR: dockerd did not answer within 60 s; see /var/log/tide-dockerd.log"
exit 1
