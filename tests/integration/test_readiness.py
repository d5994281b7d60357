"""Health tells the truth (issue 7, item 2): a processor that keeps failing for longer than the
configured threshold makes /health/ready answer 503, naming the loop and its error; once it
recovers, the service is ready again. The backlog gauges say how old the oldest waiting row is."""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_saga_integrity import fail_ledger_writes_for, order_event, receive

from orbilnot.billing.app import create_app
from orbilnot.billing.handlers import open_account
from orbilnot.shared.config import ServiceSettings
from support import eventually


async def test_a_stuck_processor_makes_the_service_unready_and_says_why(
    engine: AsyncEngine, database_url: str, topic: str, infra
) -> None:
    settings = ServiceSettings(
        database_url=database_url,
        kafka_bootstrap_servers=infra.kafka_bootstrap_servers,
        order_event_topic=topic,
        payment_event_topic=f"{topic}.payments",
        safety_net_poll_s=0.2,
        stuck_after_s=1.0,
    )
    async with engine.begin() as conn:
        account = await open_account(conn, Decimal(100))
    event = order_event(account, Decimal(10))
    # A serialization failure on every try: transient, so retried for ever, never parked.
    await fail_ledger_writes_for(engine, event.order_number, "40001", times=None)

    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://billing") as http,
    ):
        await eventually(lambda: http.get("/health/ready"), lambda r: r.status_code == 200, what="ready at first")
        await receive(engine, event)

        stuck = await eventually(
            lambda: http.get("/health/ready"), lambda r: r.status_code == 503, timeout_s=30, what="503 while stuck"
        )
        loops = stuck.json()["checks"]["loops"]
        assert "billing.processor" in loops and "injected failure" in loops, loops
        metrics = (await http.get("/metrics")).text
        assert 'orbilnot_backlog_rows{queue="billing.inbox"} 1.0' in metrics

        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER inject_failure ON billing.ledger"))
        await eventually(lambda: http.get("/health/ready"), lambda r: r.status_code == 200, timeout_s=30)
        await eventually(
            lambda: http.get("/metrics"),
            lambda r: 'orbilnot_backlog_rows{queue="billing.inbox"} 0.0' in r.text,
            what="inbox drained",
        )
    assert uuid.UUID(str(account))
