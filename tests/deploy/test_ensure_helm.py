"""scripts/ensure-helm.sh: installs the pinned helm once, then only reports where it is."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from deploy_support import ENSURE_HELM, REPO


def test_helm_is_the_pinned_version_under_orbilnot_bin(helm: str) -> None:
    assert Path(helm) == REPO / ".orbilnot" / "bin" / "helm"
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain to read the binary's module version")
    info = subprocess.run([go, "version", "-m", helm], capture_output=True, text=True, check=True).stdout
    assert any(line.split()[:3] == ["mod", "helm.sh/helm/v3", "v3.22.0"] for line in info.splitlines()), info


def test_second_run_is_a_no_op(helm: str) -> None:
    before = Path(helm).stat().st_mtime_ns
    started = time.monotonic()
    proc = subprocess.run(["bash", str(ENSURE_HELM)], cwd="/", capture_output=True, text=True, check=True)
    assert time.monotonic() - started < 10, "helm is present: nothing should be built"
    assert proc.stdout.strip() == helm, "prints the path, and works from any directory"
    assert Path(helm).stat().st_mtime_ns == before
