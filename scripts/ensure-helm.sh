#!/usr/bin/env bash
# Install helm v3.22.0 into <repo>/.orbilnot/bin (built from source with the Go toolchain,
# from the Go module proxy) unless it is already there. Idempotent. Prints the path to helm.
set -euo pipefail

HELM_VERSION="v3.22.0"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${repo_root}/.orbilnot/bin"
helm="${bin_dir}/helm"

if [[ ! -x "${helm}" ]]; then
    if ! command -v go >/dev/null 2>&1; then
        echo "ensure-helm: 'go' is not on PATH; it is needed to build helm ${HELM_VERSION}" >&2
        exit 1
    fi
    mkdir -p "${bin_dir}"
    echo "ensure-helm: building helm ${HELM_VERSION} into ${bin_dir} (takes a few minutes)" >&2
    # Build into a temporary GOBIN and move into place, so an interrupted build never leaves
    # a half-written binary at the final path.
    tmp_bin="$(mktemp -d "${bin_dir}/.helm-build.XXXXXX")"
    trap 'rm -rf "${tmp_bin}"' EXIT
    GOBIN="${tmp_bin}" go install "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
    mv -f "${tmp_bin}/helm" "${helm}"
fi

echo "${helm}"
