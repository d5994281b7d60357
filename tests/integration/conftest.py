"""Integration fixtures: a migrated database, engines and a connected producer, on the real
PostgreSQL and Kafka of the session's `infra`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from orbilnot.shared.kafka import ProducerHandle, ensure_topics
from support import create_migrated_database


@pytest.fixture
async def database_url(infra) -> str:  # type: ignore[no-untyped-def]
    """A database of the test's own: relays claim every pending row of a table."""
    return await create_migrated_database(infra.database_url)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, pool_size=10)
    yield engine
    await engine.dispose()


@pytest.fixture
async def producer(infra) -> AsyncIterator[ProducerHandle]:  # type: ignore[no-untyped-def]
    handle = ProducerHandle(infra.kafka_bootstrap_servers, client_id="test")
    await handle.connect()
    yield handle
    await handle.close()


@pytest.fixture
async def topic(infra) -> str:  # type: ignore[no-untyped-def]
    """A topic (and its DLT) of the test's own."""
    name = f"test.{uuid.uuid4().hex[:10]}"
    await ensure_topics(infra.kafka_bootstrap_servers, [name, f"{name}.dlt"], partitions=3)
    return name
