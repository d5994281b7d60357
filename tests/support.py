"""Helpers shared by the integration and end-to-end tests: fresh databases, polling with a
deadline (never a fixed sleep), and reading back what landed on a Kafka topic."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from orbilnot.migrations.runner import migrate

T = TypeVar("T")


async def create_migrated_database(server_url: str) -> str:
    """A new, empty, migrated database on the test server; returns its URL. Tests that need a
    table to themselves (a relay claims every pending row) take one of these."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    base, _, _ = server_url.rpartition("/")
    admin = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://") + "/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"{base}/{name}"
    await migrate(url)
    return url


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, timeout_s: float = 20.0, what: str = "condition"
) -> T:
    """Poll `probe` until `done(result)`, or fail after `timeout_s` showing the last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout_s}s; last value: {result!r}")
        await asyncio.sleep(0.02)


def eventually_sync(
    probe: Callable[[], T], done: Callable[[T], bool], *, timeout_s: float = 20.0, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout_s}s; last value: {result!r}")
        time.sleep(0.02)


async def read_topic(
    bootstrap_servers: str, topic: str, *, at_least: int, timeout_s: float = 20.0, settle_s: float = 0.5
) -> list[ConsumerRecord]:
    """Everything on `topic` from the beginning: waits until `at_least` records arrived, then a
    little longer so that any extra (duplicate) record would show up too."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for partition_records in batch.values():
                records.extend(partition_records)
            now = time.monotonic()
            if len(records) >= at_least and settle_until is None:
                settle_until = now + settle_s
            if settle_until is not None and now >= settle_until:
                return records
            if now > deadline:
                raise AssertionError(f"only {len(records)} of {at_least} records on {topic} after {timeout_s}s")
    finally:
        await consumer.stop()
