#!/usr/bin/env bash
# Builds the Kubernetes v1.34.0 binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl) and CoreDNS from the Go module proxy into a cache
# outside the clone ($ORBILNOT_K8S_CACHE, default /var/cache/orbilnot-k8s/bin). A second run
# with everything built returns at once.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the staging modules
# (k8s.io/api, client-go, ...) with local paths. A wrapper module requires it and replaces each
# staging module with its published v0.34.0 release instead.
set -euo pipefail

K8S_VERSION=v1.34.0
STAGING_VERSION=v0.34.0
COREDNS_VERSION=v1.12.3
CACHE=${ORBILNOT_K8S_CACHE:-/var/cache/orbilnot-k8s}
BIN=$CACHE/bin
COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
STAGING=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
  kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller)

mkdir -p "$BIN"
missing=()
for cmd in "${COMMANDS[@]}"; do
  [[ -x $BIN/$cmd ]] || missing+=("$cmd")
done

if ((${#missing[@]})); then
  src=$CACHE/src
  mkdir -p "$src"
  cd "$src"
  if [[ ! -f go.mod ]]; then
    {
      echo "module orbilnot.local/k8s-binaries"
      echo
      echo "go 1.24"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      for module in "${STAGING[@]}"; do
        echo "	k8s.io/$module => k8s.io/$module $STAGING_VERSION"
      done
      echo ")"
    } > go.mod
    echo "package main" > tools.go
    for cmd in "${COMMANDS[@]}"; do
      echo "import _ \"k8s.io/kubernetes/cmd/$cmd\"" >> tools.go
    done
    sed -i '1s/^/\/\/go:build tools\n\n/' tools.go
    go get "k8s.io/kubernetes@$K8S_VERSION" >&2
    go mod tidy >&2 || true
  fi
  # Without these the binaries report v0.0.0-master, which kubectl and the kubelet dislike.
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=34"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=2025-08-27T00:00:00Z"
  done
  for cmd in "${missing[@]}"; do
    echo "building $cmd ..." >&2
    go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" >&2
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  done
fi

if [[ ! -x $BIN/coredns ]]; then
  echo "building coredns ..." >&2
  GOBIN=$BIN go install "github.com/coredns/coredns@$COREDNS_VERSION" >&2
fi
echo "$BIN"
