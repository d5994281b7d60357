"""The whole stack as separate `orbilnot serve` processes — billing, order, notification and the
gateway — on the session's real PostgreSQL and Kafka, with a database and topics of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from orbilnot.infra import free_ports
from orbilnot.up import gateway_env
from support import Stack, create_migrated_database, stack_env

SERVICES = ("billing", "order", "notification")


@pytest.fixture(scope="session")
def stack(infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    database_url = asyncio.run(create_migrated_database(infra.database_url))
    env = stack_env(infra, database_url, "e2e", TOPIC_PARTITIONS="3")
    stack = Stack(urls={}, env=env, logs=tmp_path_factory.mktemp("stack-logs"))
    ports = free_ports(4)
    try:
        for service, port in zip(SERVICES, ports, strict=False):
            stack.start(service, service, port)
        stack.start("gateway", "gateway", ports[3], gateway_env({}, stack.urls))
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway, timeout=10) as client:
        yield client
