"""Shared fixtures. `infra` is a real PostgreSQL and a real Kafka broker for the whole session, in
a temporary directory on free ports, so tests never touch a developer's `.orbilnot/`."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from orbilnot.infra import free_ports
from orbilnot.infra.kafka import LocalKafka
from orbilnot.infra.postgres import LocalPostgres

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunningInfra:
    postgres: LocalPostgres
    kafka: LocalKafka

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def kafka_bootstrap_servers(self) -> str:
        return self.kafka.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_lib_dir() -> Path:
    """Shared by every run (and with `orbilnot infra up`), so the jars are downloaded once."""
    return Path(os.environ.get("ORBILNOT_KAFKA_LIB") or REPO / ".orbilnot" / "kafka-lib")


@pytest.fixture(scope="session")
def infra(kafka_lib_dir: Path) -> Iterator[RunningInfra]:
    # Not tmp_path_factory: its directories are private (0700) and, as root, PostgreSQL runs as
    # the `postgres` user, who must be able to reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="orbilnot-test-"))
    pg_port, kafka_port, controller_port = free_ports(3)
    running = RunningInfra(
        postgres=LocalPostgres(root / "postgres", pg_port),
        kafka=LocalKafka(root / "kafka", kafka_port, controller_port, kafka_lib_dir),
    )

    def teardown() -> None:
        try:
            running.kafka.stop()
        finally:
            running.postgres.stop()
            shutil.rmtree(root, ignore_errors=True)

    # The finally below covers failures and Ctrl-C, and SIGTERM (a CI timeout) is made to act
    # like Ctrl-C so that it does too; atexit covers an interpreter that exits without unwinding
    # the fixture. Stopping twice is harmless.
    atexit.register(teardown)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    pool = ThreadPoolExecutor(max_workers=2)  # PostgreSQL and Kafka start side by side
    starts = [pool.submit(running.postgres.start), pool.submit(running.kafka.start)]
    try:
        for start in starts:
            start.result()
        yield running
    finally:
        # Interrupted during set-up, a start may still be under way: let it finish first, or the
        # server it launches would outlive the stop below.
        pool.shutdown(wait=True)
        teardown()
        atexit.unregister(teardown)
