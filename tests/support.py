"""Helpers shared by the integration and end-to-end tests: fresh databases, polling with a
deadline (never a fixed sleep), and reading back what landed on a Kafka topic."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from orbilnot.infra import free_ports
from orbilnot.infra.kafka import LocalKafka
from orbilnot.infra.postgres import LocalPostgres
from orbilnot.migrations.roles import SERVICE_SCHEMAS, role_of
from orbilnot.migrations.runner import migrate
from orbilnot.up import gateway_env

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
ACCEPTANCE = REPO.parent / "shared" / "acceptance"


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


@contextmanager
def started_infra(prefix: str, kafka_lib_dir: Path) -> Iterator[RunningInfra]:
    """A real PostgreSQL and Kafka in a new temporary directory on free ports, started side by
    side, and stopped (directory removed) on the way out, whatever happened.

    Not pytest's tmp_path: its directories are private (0700) and, as root, PostgreSQL runs as
    the `postgres` user, who must be able to reach its data directory.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    pg_port, kafka_port, controller_port = free_ports(3)
    running = RunningInfra(
        postgres=LocalPostgres(root / "postgres", pg_port),
        kafka=LocalKafka(root / "kafka", kafka_port, controller_port, kafka_lib_dir),
    )
    pool = ThreadPoolExecutor(max_workers=2)
    starts = [pool.submit(running.postgres.start), pool.submit(running.kafka.start)]
    try:
        for start in starts:
            start.result()
        # The services' roles belong to the server: set up once, granted in every test database.
        asyncio.run(migrate(running.database_url, running.postgres.service_passwords))
        yield running
    finally:
        # Interrupted during set-up, a start may still be under way: let it finish first, or the
        # server it launches would outlive the stop below. Stopping twice is harmless.
        pool.shutdown(wait=True)
        try:
            running.kafka.stop()
        finally:
            running.postgres.stop()
            shutil.rmtree(root, ignore_errors=True)


async def create_database(server_url: str) -> str:
    """A new, empty database (no tables) on the test server; returns its URL."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    base, _, _ = server_url.rpartition("/")
    admin = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://") + "/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{base}/{name}"


async def create_migrated_database(server_url: str) -> str:
    """A new, empty, migrated database on the test server; returns its URL. Tests that need a
    table to themselves (a relay claims every pending row) take one of these."""
    url = await create_database(server_url)
    await migrate(url)
    return url


def run_postman_collection(gateway: str) -> subprocess.CompletedProcess[str]:
    """The original system's Postman collection with newman (installed by `npm ci`), every
    service URL of its environment pointed at `gateway`."""
    newman = REPO / "node_modules" / ".bin" / "newman"
    assert newman.exists() or shutil.which("newman"), "newman is installed by `make test` (npm ci)"
    command = [
        str(newman) if newman.exists() else "newman",
        "run",
        str(ACCEPTANCE / "orbilnot.postman_collection.json"),
        "--environment",
        str(ACCEPTANCE / "otus.postman_environment.json"),
        "--bail",
        "--reporters",
        "cli",
    ]
    for name in ("billing_service_url", "order_service_url", "notification_service_url"):
        command += ["--env-var", f"{name}={gateway}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


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


@dataclass
class Stack:
    urls: dict[str, str]
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return self.urls["gateway"]

    def start(self, name: str, service: str, port: int, extra_env: dict[str, str] | None = None) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "orbilnot.cli", "serve", service, "--port", str(port)],
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        self.urls[name] = url
        eventually_sync(lambda: _ready(url, self.processes[name]), bool, timeout_s=30, what=f"{name} ready")

    def stop_all(self, *, log_lines: int = 15) -> None:
        """Stop every process, then print the tail of each log (pytest shows it for a failure)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in sorted(self.logs.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-log_lines:]
            print(f"--- {log.name}\n" + "\n".join(tail))


@contextmanager
def running_stack(infra: RunningInfra, logs: Path, topic_prefix: str, **env: str) -> Iterator[Stack]:
    """billing, order, notification and a gateway as `orbilnot serve` processes, with a database
    and topics of their own (tests/e2e's session stack, and any test that needs a stack apart)."""
    database_url = asyncio.run(create_migrated_database(infra.database_url))
    stack = Stack(urls={}, env=stack_env(infra, database_url, topic_prefix, **env), logs=logs)
    ports = free_ports(4)
    try:
        for service, port in zip(("billing", "order", "notification"), ports, strict=False):
            stack.start(service, service, port)
        stack.start("gateway", "gateway", ports[3], gateway_env({}, stack.urls))
        yield stack
    finally:
        stack.stop_all()


def service_database_url(infra: RunningInfra, database_url: str, service: str) -> str:
    """`database_url`'s database, as `service`'s own role (SPEC §9: least privilege)."""
    url = make_url(database_url).set(username=role_of(service), password=infra.postgres.passwords[service])
    return url.render_as_string(hide_password=False)


def stack_env(infra: RunningInfra, database_url: str, topic_prefix: str, **extra: str) -> dict[str, str]:
    """The environment of a test stack: its own database and topics on the session's servers;
    each service connects as its own role, as everywhere else."""
    run = uuid.uuid4().hex[:8]
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        **{f"{s.upper()}_DATABASE_URL": service_database_url(infra, database_url, s) for s in SERVICE_SCHEMAS},
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers,
        "ORDER_EVENT_TOPIC": f"{topic_prefix}-{run}.order.event",
        "PAYMENT_EVENT_TOPIC": f"{topic_prefix}-{run}.payment.event",
        "LOG_FORMAT": "text",
        **extra,
    }


def _ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"process serving {url} exited with {process.returncode}")
    try:
        return httpx.get(f"{url}/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# -- Prometheus ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """One `/metrics` answer: every sample by name and labels, and every metric name exposed."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    names: frozenset[str]

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a labelled child never created (a counter not yet moved)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}


# What a family of each type exposes: a counter `x` is `x_total` (and `x_created`), and so on.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def scrape(url: str) -> Scrape:
    """Read `url`/metrics. Names include those of families with no sample yet (a labelled
    metric whose first child was never created still says HELP and TYPE)."""
    response = httpx.get(f"{url}/metrics", timeout=5)
    response.raise_for_status()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
            names.add(sample.name)
    return Scrape(samples, frozenset(names))
