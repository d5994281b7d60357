"""Readiness and the connection pool (issue 13, item 2): a pool fully in use means the
database is busy, not down, so it must not mark the pod unready."""

from __future__ import annotations

from orbilnot.shared.config import ServiceSettings
from orbilnot.shared.service import ServiceKernel


async def test_readiness_does_not_wait_on_a_full_pool(infra, database_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = ServiceSettings(
        database_url=database_url, kafka_bootstrap_servers=infra.kafka_bootstrap_servers, db_pool_size=1
    )
    kernel = ServiceKernel(settings, service="billing")
    try:
        async with kernel.engine.connect():  # the pool's only connection, held by "a request"
            assert (await kernel.readiness())["database"] is True
    finally:
        await kernel.stop()


async def test_readiness_sees_a_database_that_is_down(infra) -> None:  # type: ignore[no-untyped-def]
    base, _, _ = infra.database_url.rpartition("/")
    settings = ServiceSettings(
        database_url=f"{base}/no_such_database", kafka_bootstrap_servers=infra.kafka_bootstrap_servers
    )
    kernel = ServiceKernel(settings, service="billing")
    try:
        assert (await kernel.readiness())["database"] is False
    finally:
        await kernel.stop()
