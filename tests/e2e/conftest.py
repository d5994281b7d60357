"""The whole stack as separate `orbilnot serve` processes — billing, order, notification and the
gateway — on the session's real PostgreSQL and Kafka, with a database and topics of its own."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import httpx
import pytest

from orbilnot.infra import free_ports
from support import Stack, create_migrated_database

SERVICES = ("billing", "order", "notification")


@pytest.fixture(scope="session")
def stack(infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    database_url = asyncio.run(create_migrated_database(infra.database_url))
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers,
        "ORDER_EVENT_TOPIC": f"e2e-{run}.order.event",
        "PAYMENT_EVENT_TOPIC": f"e2e-{run}.payment.event",
        "TOPIC_PARTITIONS": "3",
        "LOG_FORMAT": "text",
    }
    stack = Stack(urls={}, env=env, logs=tmp_path_factory.mktemp("stack-logs"))
    ports = free_ports(4)
    try:
        for service, port in zip(SERVICES, ports, strict=False):
            stack.start(service, service, port)
        stack.start(
            "gateway",
            "gateway",
            ports[3],
            {
                "BILLING_URL": stack.urls["billing"],
                "ORDER_URL": stack.urls["order"],
                "NOTIFICATION_URL": stack.urls["notification"],
            },
        )
        yield stack
    finally:
        stack.stop_all()
        for log in sorted(stack.logs.glob("*.log")):  # shown by pytest only when a test failed
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {log.name}\n" + "\n".join(tail))


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway, timeout=10) as client:
        yield client
