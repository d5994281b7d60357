#!/usr/bin/env bash
# The images the live cluster needs, as image archives in $ORBILNOT_K8S_CACHE/images (imported by
# cluster.sh with `ctr images import`; no registry is reachable here):
#   pause.tar          the sandbox ("pause") image: a static binary that waits for a signal
#   orbilnot.tar       the project's image (scripts/build-image.sh, the one `make image` builds),
#                      tagged orbilnot.local/orbilnot:<tag printed on stdout>
#   orbilnot-next.tar  "the next release", <tag>-next: the same image with one more, additive
#                      migration (next_release_migration.py.in), for the rollback step
#
# The orbilnot images need a Docker engine: scripts/docker-engine.sh starts one when none answers
# (and stops it again when this script started it). The archives are kept until the sources change.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
K8S_CACHE=${ORBILNOT_K8S_CACHE:-/var/cache/orbilnot-k8s}
IMAGES=$K8S_CACHE/images
WORK=$K8S_CACHE/build
mkdir -p "$IMAGES" "$WORK"

log() { echo "[images] $*" >&2; }

# archive <rootfs> <tag> <output.tar> <config-json-fragment>
archive() {
  local rootfs=$1 tag=$2 output=$3 config=$4 dir
  dir=$(mktemp -d "$WORK/archive.XXXXXX")
  tar -C "$rootfs" --numeric-owner --owner=0 --group=0 --sort=name -cf "$dir/layer.tar" .
  local diff_id
  diff_id=$(sha256sum "$dir/layer.tar" | cut -d' ' -f1)
  cat >"$dir/config.json" <<EOF
{"architecture": "amd64", "os": "linux", "config": $config,
 "rootfs": {"type": "layers", "diff_ids": ["sha256:$diff_id"]}}
EOF
  cat >"$dir/manifest.json" <<EOF
[{"Config": "config.json", "RepoTags": ["$tag"], "Layers": ["layer.tar"]}]
EOF
  tar -C "$dir" -cf "$output.tmp" manifest.json config.json layer.tar
  mv "$output.tmp" "$output"
  rm -rf "$dir"
}

# ---------------------------------------------------------------------------------------- pause
if [[ ! -f $IMAGES/pause.tar ]]; then
  log "building the pause image"
  src=$WORK/pause-src
  mkdir -p "$src" "$WORK/pause-root"
  cat >"$src/main.go" <<'EOF'
// The pod sandbox's process: holds the namespaces until it is told to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
EOF
  (cd "$src" && [[ -f go.mod ]] || (cd "$src" && go mod init orbilnot.local/pause >/dev/null 2>&1))
  (cd "$src" && CGO_ENABLED=0 go build -ldflags "-s -w" -o "$WORK/pause-root/pause" .)
  archive "$WORK/pause-root" orbilnot.local/pause:1 "$IMAGES/pause.tar" '{"Entrypoint": ["/pause"]}'
fi

# ------------------------------------------------------------------------------------- orbilnot
# The tag names the content: what the image is built from (tracked files and uncommitted changes).
sources=(src requirements.lock pyproject.toml README.md Dockerfile .dockerignore scripts/build-image.sh
  scripts/k8s/build-images.sh scripts/k8s/next_release_migration.py.in)
tag=$( (cd "$REPO" && git ls-files -s "${sources[@]}" 2>/dev/null | git hash-object --stdin
  git diff HEAD -- "${sources[@]}" | sha256sum) | sha256sum | cut -c1-12)
image=orbilnot.local/orbilnot:$tag
if [[ -f $IMAGES/orbilnot.tar && -f $IMAGES/orbilnot-next.tar && $(cat "$IMAGES/orbilnot.tag" 2>/dev/null) == "$image" ]]; then
  log "orbilnot image $image is cached"
  echo "$image"
  exit 0
fi

engine=$("$REPO/scripts/docker-engine.sh" up)
trap 'if [[ $engine == started ]]; then "$REPO/scripts/docker-engine.sh" down; fi' EXIT
log "building the orbilnot image with scripts/build-image.sh"
"$REPO/scripts/build-image.sh" "$image" >/dev/null
docker save "$image" -o "$IMAGES/orbilnot.tar.tmp"
mv "$IMAGES/orbilnot.tar.tmp" "$IMAGES/orbilnot.tar"

# The next release: the migration goes where the image's package keeps its migrations.
versions=$(docker run --rm --network none --entrypoint python "$image" \
  -c 'import os, orbilnot.migrations.versions as v; print(os.path.dirname(v.__file__))')
head=$("$REPO/.venv/bin/python" -c 'from orbilnot.migrations.runner import head_revision; print(head_revision())')
context=$(mktemp -d "$WORK/next.XXXXXX")
sed "s/@HEAD@/$head/" "$REPO/scripts/k8s/next_release_migration.py.in" >"$context/9000_next_release.py"
printf 'FROM %s\nCOPY 9000_next_release.py %s/\n' "$image" "$versions" >"$context/Dockerfile"
DOCKER_BUILDKIT=0 docker build --network none --quiet --tag "$image-next" "$context" >/dev/null
rm -rf "$context"
docker save "$image-next" -o "$IMAGES/orbilnot-next.tar.tmp"
mv "$IMAGES/orbilnot-next.tar.tmp" "$IMAGES/orbilnot-next.tar"
# The engine keeps $image, whose layers are the build cache of the next build, and no earlier
# one of these tags (each would hold a copy of its layers under the vfs storage driver).
docker image rm "$image-next" >/dev/null || true
docker images --format '{{.Repository}}:{{.Tag}}' orbilnot.local/orbilnot | grep -vxF "$image" \
  | xargs -r docker image rm >/dev/null || true
rm -f "$IMAGES/orbilnot.source"
echo "$image" >"$IMAGES/orbilnot.tag"
log "orbilnot images $image and $image-next ($(du -h "$IMAGES/orbilnot.tar" | cut -f1))"
echo "$image"
