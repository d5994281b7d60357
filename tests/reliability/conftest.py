"""The reliability suite's stack: replicas of every service as separate `orbilnot serve`
processes behind a gateway that balances across them, on the session's real PostgreSQL and
Kafka, with a database and topics of each scenario's own. Processes can be killed and restarted.

Short form in `make test`; `make chaos` sets ORBILNOT_CHAOS=long for the long form.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest

# Defined in their own module (see there why); imported here for the fixture, and re-exported
# for test modules that still import them from `conftest`.
from replicated import LONG, SERVICES, ReplicatedStack  # noqa: F401

from support import create_migrated_database


@pytest.fixture
def replicated_stack(infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedStack]:  # type: ignore[no-untyped-def]
    """A fresh stack per scenario: two of each service, its own database and topics."""
    database_url = asyncio.run(create_migrated_database(infra.database_url))
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers,
        "ORDER_EVENT_TOPIC": f"rel-{run}.order.event",
        "PAYMENT_EVENT_TOPIC": f"rel-{run}.payment.event",
        "TOPIC_PARTITIONS": "4",
        "LOG_FORMAT": "text",
        # A short safety-net poll, so work left by a killed replica is picked up quickly.
        "SAFETY_NET_POLL_S": "0.5",
    }
    stack = ReplicatedStack(env, tmp_path_factory.mktemp("reliability-logs"), replicas=2)
    try:
        stack.start_all()
        yield stack
    finally:
        stack.stop_all()
        for log in sorted(stack.logs.glob("*.log")):  # shown by pytest only when a test failed
            tail = log.read_text(errors="replace").splitlines()[-10:]
            print(f"--- {log.name}\n" + "\n".join(tail))
