#!/usr/bin/env bash
# The images the live cluster needs, as image archives in $ORBILNOT_K8S_CACHE/images (imported by
# cluster.sh with `ctr images import`; no registry is reachable here):
#   pause.tar     the sandbox ("pause") image: a static binary that waits for a signal
#   orbilnot.tar  the orbilnot image, tagged orbilnot.local/orbilnot:<tag printed on stdout>
#
# The orbilnot image: with a container engine and scripts/build-image.sh (the project's image
# build), that image is built and saved. Without them a stand-in is assembled from this machine's
# own Python and the locked dependencies (pip), with the same entrypoint, user (10001) and paths
# the chart relies on; the README says which one a run used.
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
# The tag names the content: the source tree, the lock and this script.
tag=$( (cd "$REPO" && git ls-files -s src requirements.lock pyproject.toml Dockerfile scripts/k8s/build-images.sh \
  | git hash-object --stdin; git -C "$REPO" diff HEAD -- src requirements.lock | sha256sum) | sha256sum | cut -c1-12)
image=orbilnot.local/orbilnot:$tag
if [[ -f $IMAGES/orbilnot.tar && $(cat "$IMAGES/orbilnot.tag" 2>/dev/null) == "$image" ]]; then
  log "orbilnot image $image is cached"
  echo "$image"
  exit 0
fi

if [[ -x $REPO/scripts/build-image.sh ]] && docker info >/dev/null 2>&1; then
  log "building the orbilnot image with scripts/build-image.sh"
  built=$("$REPO/scripts/build-image.sh" | tail -1)
  docker tag "$built" "$image"
  docker save "$image" -o "$IMAGES/orbilnot.tar"
  echo "docker: $built" >"$IMAGES/orbilnot.source"
else
  log "no container engine: assembling a stand-in orbilnot image from this machine's Python"
  python=$("$REPO/.venv/bin/python" -c 'import sys; print(sys.base_prefix)')
  pyexe=$("$REPO/.venv/bin/python" -c 'import sys, os; print(os.path.realpath(sys.executable))')
  pyversion=$("$REPO/.venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  root=$WORK/orbilnot-root
  rm -rf "$root"
  mkdir -p "$root$python" "$root/opt/orbilnot/lib" "$root/usr/local/bin" "$root/etc" "$root/tmp" "$root/bin"
  chmod 1777 "$root/tmp"
  # The interpreter and its standard library, without tests and caches.
  tar -C "$python" --exclude='test' --exclude='tests' --exclude='__pycache__' --exclude='idlelib' \
    --exclude='tkinter' --exclude='ensurepip' --exclude='site-packages/*' -cf - . | tar -C "$root$python" -xf -
  # The locked dependencies and the package itself (pip's cache makes this quick after once).
  "$REPO/.venv/bin/python" -m pip install --quiet --no-deps --no-compile --target "$root/opt/orbilnot/lib" \
    -r <(grep -viE '^[[:space:]]*(-e[[:space:]]|orbilnot[[:space:]]*(==|@|$))' "$REPO/requirements.lock")
  # The package is pure Python with its data files in the tree (migrations, Kafka's pom).
  tar -C "$REPO/src" --exclude='__pycache__' --exclude='*.egg-info' -cf - orbilnot | tar -C "$root/opt/orbilnot/lib" -xf -
  cat >"$root/usr/local/bin/orbilnot" <<EOF
#!$pyexe
import sys

from orbilnot.cli import main

sys.exit(main())
EOF
  chmod 755 "$root/usr/local/bin/orbilnot"
  # /bin/sh and sleep (the preStop hook), and every shared library any of it needs.
  cp /bin/sh /bin/sleep "$root/bin/"
  libs=$( { find "$root$python" "$root/opt/orbilnot/lib" -type f \( -name '*.so*' -o -perm -u+x \) -print0 \
      | xargs -0 -r ldd 2>/dev/null; ldd /bin/sh /bin/sleep; } \
    | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]+ \(/{print $1}' | sort -u)
  # glibc loads these by name at run time (host name lookups), so ldd cannot see them.
  libs+=$'\n'$(ls /lib/x86_64-linux-gnu/libnss_dns.so.2 /lib/x86_64-linux-gnu/libnss_files.so.2 \
    /lib/x86_64-linux-gnu/libresolv.so.2 2>/dev/null || true)
  for lib in $libs; do
    [[ -e $lib ]] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\norbilnot:x:10001:10001:orbilnot:/tmp:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\norbilnot:x:10001:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  chmod 755 "$root/root" 2>/dev/null || true
  find "$root" -type d -exec chmod a+rx {} +
  config="{\"Entrypoint\": [\"orbilnot\"], \"User\": \"10001:10001\", \"WorkingDir\": \"/tmp\", \"Env\": [\"PATH=/usr/local/bin:$python/bin:/usr/bin:/bin\", \"PYTHONPATH=/opt/orbilnot/lib\", \"PYTHONDONTWRITEBYTECODE=1\", \"PYTHONUNBUFFERED=1\"]}"
  archive "$root" "$image" "$IMAGES/orbilnot.tar" "$config"
  echo "stand-in from $pyexe" >"$IMAGES/orbilnot.source"
  # "The next release": the same image with one more, additive migration, for the rollback step.
  head=$("$REPO/.venv/bin/python" -c 'from orbilnot.migrations.runner import head_revision; print(head_revision())')
  sed "s/@HEAD@/$head/" "$REPO/scripts/k8s/next_release_migration.py.in" \
    >"$root/opt/orbilnot/lib/orbilnot/migrations/versions/9000_next_release.py"
  archive "$root" "$image-next" "$IMAGES/orbilnot-next.tar" "$config"
  rm -rf "$root"
fi
echo "$image" >"$IMAGES/orbilnot.tag"
log "orbilnot image $image ($(du -h "$IMAGES/orbilnot.tar" | cut -f1))"
echo "$image"
