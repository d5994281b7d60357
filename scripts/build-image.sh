#!/usr/bin/env bash
# Builds the orbilnot image from this checkout and prints its name (e.g. orbilnot:local) on
# stdout, alone; progress, the build time and the image size go to stderr.
#
#   scripts/build-image.sh [NAME:TAG]          default orbilnot:local (the name compose.yaml uses)
#
# Needs a Docker engine that answers (scripts/docker-engine.sh up starts one here). Public image
# registries cannot be reached from this machine, so python:3.11-slim-bookworm cannot be pulled:
# unless PYTHON_IMAGE names a base image the engine already has (or can pull), a stand-in is made
# from Debian's own packages with debootstrap (Python 3.11 on bookworm, like the official slim
# image) and imported as orbilnot-python-base:<hash of its recipe>. It is made once; later builds
# reuse it and the engine's layer cache, and take seconds when nothing changed.
#
#   PYTHON_IMAGE=python:3.11-slim-bookworm scripts/build-image.sh    (where a registry is reachable)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-orbilnot:local}
SUITE=bookworm
PACKAGES=python3.11,python3.11-venv,python3-pip,ca-certificates
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
DEBOOTSTRAP_TIMEOUT_S=900
BUILD_TIMEOUT_S=1500

log() { echo "build-image: $*" >&2; }

# The first Debian mirror among this machine's apt sources that serves the suite itself (not
# -updates or -security): a one-line sources.list entry or a deb822 .sources stanza.
debian_mirror() {
  local files=() file
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] && files+=("$file")
  done
  awk -v suite="$SUITE" '
    /^[[:space:]]*#/ { next }
    $1 == "deb" {
      i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      if ($(i + 1) == suite && $i ~ /debian\/?$/) { print $i; exit }
    }
    /^URIs:/ { uris = $2 }
    /^Suites:/ { for (j = 2; j <= NF; j++) if ($j == suite && uris ~ /debian\/?$/) { print uris; exit } }
    /^[[:space:]]*$/ { uris = "" }
  ' "${files[@]}" </dev/null
}

# Everything that decides the stand-in's content; its hash names the image, so a change to the
# recipe (or to the machine's CA bundle, copied in) makes a new one and an unchanged one is reused.
base_recipe() {
  printf 'debootstrap --variant=minbase --include=%s %s\n' "$PACKAGES" "$SUITE"
  printf 'ln -s python3.11 /usr/bin/python\nca-bundle %s\n' "$(sha256sum "$CA_BUNDLE" | cut -c1-64)"
  printf 'env LANG=C.UTF-8\nrm apt caches\nchmod 0755 /\n'
}

build_base() {
  local name=$1 mirror rootfs
  mirror=$(debian_mirror)
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d /tmp/orbilnot-base-XXXXXX)
  # The root filesystem is owned by root and full of device nodes: removed on any exit.
  trap 'rm -rf "$rootfs"' EXIT
  log "making the stand-in base $name: debootstrap $SUITE from $mirror (about a minute)"
  local started=$SECONDS
  if ! timeout "$DEBOOTSTRAP_TIMEOUT_S" debootstrap --variant=minbase --include="$PACKAGES" \
      "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
    log "debootstrap failed; the end of its log ($rootfs.log):"
    tail -n 30 "$rootfs.log" >&2
    exit 1
  fi
  rm -f "$rootfs.log"
  ln -sf python3.11 "$rootfs/usr/bin/python"
  # pip inside the build trusts what this machine trusts (Debian's pip reads this bundle).
  cp "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # mktemp made the directory 0700, and it becomes the image's "/": a non-root user could
  # not reach anything below it.
  chmod 0755 "$rootfs"
  tar -C "$rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' - "$name" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  log "stand-in base $name made in $((SECONDS - started)) s"
  # Stand-ins of older recipes are never used again (an image built on one keeps its layers).
  docker image ls --format '{{.Repository}}:{{.Tag}}' orbilnot-python-base | grep -vxF "$name" \
    | xargs -r docker image rm >/dev/null 2>&1 || true
}

if ! timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  log "no Docker engine answers (start one with: scripts/docker-engine.sh up)"
  exit 1
fi

if [ -z "${PYTHON_IMAGE:-}" ]; then
  PYTHON_IMAGE="orbilnot-python-base:$(base_recipe | sha256sum | cut -c1-16)"
  if ! docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { log "debootstrap is missing (scripts/docker-engine.sh up installs it)"; exit 1; }
    build_base "$PYTHON_IMAGE"
  fi
fi

log "building $IMAGE on $PYTHON_IMAGE"
started=$SECONDS
# --network host: the build's pip reaches the package index the way this machine does.
# The classic builder: BuildKit would fetch the Dockerfile's syntax frontend from a registry.
build_log=$(mktemp /tmp/orbilnot-image-build-XXXXXX.log)
if ! DOCKER_BUILDKIT=0 timeout "$BUILD_TIMEOUT_S" docker build --network host \
    --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" --tag "$IMAGE" . >"$build_log" 2>&1; then
  log "docker build failed; the end of its log ($build_log):"
  tail -n 40 "$build_log" >&2
  exit 1
fi
rm -f "$build_log"
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
log "built $IMAGE in $((SECONDS - started)) s; size $((size / 1000000)) MB"
echo "$IMAGE"
