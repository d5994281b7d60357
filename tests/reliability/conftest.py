"""The reliability suite's stack: replicas of every service as separate `orbilnot serve`
processes behind a gateway that balances across them, on the session's real PostgreSQL and
Kafka, with a database and topics of each scenario's own. Processes can be killed and restarted.

Short form in `make test`; `make chaos` sets ORBILNOT_CHAOS=long for the long form.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

# Defined in their own module (see there why).
from replicated import ReplicatedStack

from support import create_migrated_database, stack_env


@pytest.fixture
def replicated_stack(infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedStack]:  # type: ignore[no-untyped-def]
    """A fresh stack per scenario: two of each service, its own database and topics."""
    database_url = asyncio.run(create_migrated_database(infra.database_url))
    env = stack_env(
        infra,
        database_url,
        "rel",
        TOPIC_PARTITIONS="4",
        # A short safety-net poll, so work left by a killed replica is picked up quickly.
        SAFETY_NET_POLL_S="0.5",
    )
    stack = ReplicatedStack(env, tmp_path_factory.mktemp("reliability-logs"), replicas=2)
    try:
        stack.start_all()
        yield stack
    finally:
        stack.stop_all(log_lines=10)
