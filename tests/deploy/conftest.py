"""Fixtures of the deployment checks (static: no Docker engine, no cluster)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from deploy_support import MODES, Mode, Rendered, ensure_helm, parse_manifests, run_helm


@pytest.fixture(scope="session")
def helm() -> str:
    """helm v3.22.0; scripts/ensure-helm.sh builds it (go install) on first use."""
    try:
        return ensure_helm()
    except RuntimeError as exc:
        pytest.fail(f"cannot get helm: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def render(helm: str) -> Callable[[Mode], Rendered]:
    cache: dict[Mode, Rendered] = {}

    def render_mode(mode: Mode) -> Rendered:
        if mode not in cache:
            proc = run_helm(helm, *mode.template_args())
            assert proc.returncode == 0, f"helm template ({mode.name}) failed:\n{proc.stderr}"
            cache[mode] = Rendered(mode, parse_manifests(proc.stdout))
        return cache[mode]

    return render_mode


@pytest.fixture(scope="session", params=MODES, ids=[mode.name for mode in MODES])
def rendered(request: pytest.FixtureRequest, render: Callable[[Mode], Rendered]) -> Rendered:
    """The chart rendered with the default values, with external infrastructure, and customised."""
    return render(request.param)
