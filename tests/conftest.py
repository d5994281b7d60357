"""Shared fixtures. `infra` is a real PostgreSQL and a real Kafka broker for the whole session, in
a temporary directory on free ports, so tests never touch a developer's `.orbilnot/`."""

from __future__ import annotations

import atexit
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import RunningInfra, started_infra

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kafka_lib_dir() -> Path:
    """Shared by every run (and with `orbilnot infra up`), so the jars are downloaded once."""
    return Path(os.environ.get("ORBILNOT_KAFKA_LIB") or REPO / ".orbilnot" / "kafka-lib")


@pytest.fixture(scope="session")
def infra(kafka_lib_dir: Path) -> Iterator[RunningInfra]:
    # SIGTERM (a CI timeout) is made to act like Ctrl-C, so the context manager's clean-up runs
    # for it too; atexit covers an interpreter that exits without unwinding the fixture.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    with started_infra("orbilnot-test-", kafka_lib_dir) as running:
        atexit.register(running.kafka.stop)
        atexit.register(running.postgres.stop)
        yield running
    atexit.unregister(running.kafka.stop)
    atexit.unregister(running.postgres.stop)
