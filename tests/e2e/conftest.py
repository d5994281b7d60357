"""The whole stack as separate `orbilnot serve` processes — billing, order, notification and the
gateway — on the session's real PostgreSQL and Kafka, with a database and topics of its own."""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orbilnot.infra import free_ports
from orbilnot.infra.keycloak import API_AUDIENCE, LocalKeycloak
from orbilnot.up import gateway_env
from support import Stack, create_migrated_database, running_stack, stack_env

SERVICES = ("billing", "order", "notification")
# Shared by every run (and with `orbilnot infra up --auth`), so the zip is fetched once.
KEYCLOAK_ZIP_CACHE = Path(__file__).resolve().parents[2] / ".orbilnot"


@pytest.fixture(scope="session")
def stack(infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    with running_stack(infra, tmp_path_factory.mktemp("stack-logs"), "e2e", TOPIC_PARTITIONS="3") as stack:
        yield stack


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway, timeout=10) as client:
        yield client


# -- issue 9: a real Keycloak and a stack that requires its tokens --------------------------------
# Started lazily: only a session that selects a test using them pays Keycloak's start-up.


@pytest.fixture(scope="session")
def keycloak() -> Iterator[LocalKeycloak]:
    """Laid out as `orbilnot infra up --auth` lays it out (`<home>/keycloak`), so that test_up can
    run `orbilnot up --auth` with ORBILNOT_HOME=<home> on this same server instead of a second one."""
    home = Path(tempfile.mkdtemp(prefix="orbilnot-keycloak-"))
    server = LocalKeycloak(home / "keycloak", free_ports(1)[0], zip_cache_dir=KEYCLOAK_ZIP_CACHE)
    atexit.register(server.stop)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def auth_stack(infra, keycloak: LocalKeycloak, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """The services and the gateway with AUTH_MODE=oidc against the session's Keycloak. A short
    leeway and refresh interval keep the expiry and rotation tests quick; the notification
    service also restricts /metrics."""
    database_url = asyncio.run(create_migrated_database(infra.database_url))
    env = stack_env(
        infra,
        database_url,
        "auth",
        TOPIC_PARTITIONS="3",
        AUTH_MODE="oidc",
        OIDC_ISSUER_URL=keycloak.issuer_url,
        OIDC_AUDIENCE=API_AUDIENCE,
        OIDC_LEEWAY_S="1",
        OIDC_JWKS_MIN_REFRESH_S="0.5",
    )
    stack = Stack(urls={}, env=env, logs=tmp_path_factory.mktemp("auth-stack-logs"))
    ports = free_ports(4)
    try:
        stack.start("billing", "billing", ports[0])
        stack.start("order", "order", ports[1])
        stack.start("notification", "notification", ports[2], {"METRICS_REQUIRE_AUTH": "true"})
        stack.start("gateway", "gateway", ports[3], gateway_env({}, stack.urls))
        yield stack
    finally:
        stack.stop_all()
