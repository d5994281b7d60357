#!/usr/bin/env bash
# A Docker engine on this machine, for building and running the orbilnot image (make image,
# make image-test). Debian's docker.io runs here as root, with no bridge and no iptables:
# containers use the host network, so all their traffic stays on this machine.
#
#   scripts/docker-engine.sh up     installs docker.io and debootstrap when missing; starts dockerd
#                                   unless a daemon already answers. Prints "started" (this call
#                                   started it: call `down` when done) or "running" (someone else's:
#                                   leave it alone). Fails within 120 s if no daemon answers.
#   scripts/docker-engine.sh down   stops the daemon that `up` started (its pid file), waiting for it
#                                   to exit; does nothing when there is none. Images stay on disk.
#   scripts/docker-engine.sh status prints "running" or "stopped".
#
# The daemon serves the default socket (/var/run/docker.sock) and keeps images under the default
# /var/lib/docker, so a later `up` finds the stand-in base image and the build cache again.
set -euo pipefail

PIDFILE=/var/run/orbilnot-dockerd.pid
LOGFILE=/var/log/orbilnot-dockerd.log
LOCKFILE=/var/lock/orbilnot-docker-engine.lock
START_TIMEOUT_S=120
STOP_TIMEOUT_S=60

log() { echo "docker-engine: $*" >&2; }

answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install_missing() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v docker >/dev/null || missing+=(docker.io)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} with apt"
  # RUNLEVEL=1: the package's init script must not start a daemon of its own (with the default
  # bridge and iptables set-up, which this machine cannot do); `up` starts the one we want.
  # Waits for the dpkg lock rather than failing when another apt run holds it.
  apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
  RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends "${missing[@]}" >&2
}

pid_alive() {
  local pid
  pid=$(head -n1 "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

up() {
  install_missing
  exec 9>"$LOCKFILE"
  flock -w 120 9 || { log "another up/down holds $LOCKFILE"; exit 1; }
  if answers; then
    echo running
    return 0
  fi
  log "starting dockerd (log: $LOGFILE)"
  # setsid: the daemon outlives this script and is not hit by a Ctrl-C meant for the caller.
  # 9>&-: nor does it inherit the lock, which it would otherwise hold for as long as it runs.
  setsid dockerd --storage-driver=vfs --bridge=none --iptables=false --ip6tables=false \
    --pidfile "$PIDFILE" --host unix:///var/run/docker.sock >>"$LOGFILE" 2>&1 </dev/null 9>&- &
  local started=$!
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until answers; do
    if ! kill -0 "$started" 2>/dev/null; then
      log "dockerd exited; the end of its log:"
      tail -n 30 "$LOGFILE" >&2
      exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "dockerd did not answer within ${START_TIMEOUT_S}s; stopping it"
      kill -TERM "$started" 2>/dev/null || true
      tail -n 30 "$LOGFILE" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo started
}

down() {
  exec 9>"$LOCKFILE"
  flock -w 120 9 || { log "another up/down holds $LOCKFILE"; exit 1; }
  if ! pid_alive; then
    rm -f "$PIDFILE"
    return 0
  fi
  local pid
  pid=$(head -n1 "$PIDFILE")
  log "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      log "dockerd still running after ${STOP_TIMEOUT_S}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$PIDFILE"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if answers; then echo running; else echo stopped; fi ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
