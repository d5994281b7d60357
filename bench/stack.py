"""The benchmark's own stack: PostgreSQL and Kafka in a temporary directory on free ports, the
four `orbilnot serve` processes and the bare FastAPI ceiling, all stopped on the way out of
`running_stack()`, whatever happened (an error, Ctrl-C, SIGTERM)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import asyncpg

from bench.procstat import Watched
from orbilnot.infra import free_ports
from orbilnot.infra.kafka import LocalKafka
from orbilnot.infra.postgres import LocalPostgres, find_pg_bin
from orbilnot.migrations.runner import migrate
from orbilnot.up import gateway_env, wait_ready

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("billing", "order", "notification")
STOP_TIMEOUT_S = 10.0


@dataclass
class BenchStack:
    postgres: LocalPostgres
    kafka: LocalKafka
    logs: Path
    urls: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ready_s: dict[str, float] = field(default_factory=dict)
    pg_stat_statements: bool = False

    @property
    def database_url(self) -> str:
        """The owner's URL (a superuser: it reads every schema, pg_stat_statements and may ALTER
        SYSTEM), for asyncpg (the services' URLs name SQLAlchemy's driver)."""
        return self.postgres.url.replace("postgresql+asyncpg://", "postgresql://")

    def port(self, name: str) -> int:
        return int(self.urls[name].rsplit(":", 1)[1])

    def watched(self) -> dict[str, Watched]:
        """The processes whose CPU and memory the benchmark reports, in the table's order."""
        postgres_pid, kafka_pid = self.postgres.pid, self.kafka.pid
        if postgres_pid is None or kafka_pid is None:
            raise RuntimeError("PostgreSQL or Kafka is not running")
        services = {name: Watched(self.processes[name].pid) for name in ("gateway", *SERVICES)}
        return {**services, "postgres": Watched(postgres_pid, tree=True), "kafka": Watched(kafka_pid)}

    def spawn(self, name: str, command: list[str], env: dict[str, str], port: int) -> None:
        log: IO[bytes] = (self.logs / f"{name}.log").open("ab")
        spawned = time.monotonic()
        # From the repository root, where `python -m bench.ceiling` finds its package.
        self.processes[name] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()  # the child holds its own descriptor
        self.urls[name] = f"http://127.0.0.1:{port}"
        # The ceiling has no health route: it is ready once it accepts connections.
        ready = _listening(port) if name == "ceiling" else wait_ready(self.urls[name], self.processes[name])
        if not ready:
            raise RuntimeError(f"{name} did not become ready; see {self.logs / f'{name}.log'}")
        self.ready_s[name] = time.monotonic() - spawned

    def stop_processes(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _listening(port: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def pg_stat_statements_available() -> bool:
    """Whether this PostgreSQL installation ships the extension (Debian's server package does)."""
    pg_config = find_pg_bin() / "pg_config"
    try:
        libdir = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        libdir = str(find_pg_bin().parent / "lib")
    return (Path(libdir.strip()) / "pg_stat_statements.so").exists()


async def _enable_pg_stat_statements(stack: BenchStack) -> None:
    connection = await asyncpg.connect(stack.database_url)
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await connection.close()


async def _preload_pg_stat_statements(stack: BenchStack) -> None:
    # ALTER SYSTEM writes postgresql.auto.conf, which LocalPostgres leaves alone; takes effect on restart.
    connection = await asyncpg.connect(stack.database_url)
    try:
        await connection.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    finally:
        await connection.close()


@contextmanager
def running_stack(results: Path, kafka_lib: Path, extra_env: dict[str, str] | None = None) -> Iterator[BenchStack]:
    root = Path(tempfile.mkdtemp(prefix="orbilnot-bench-"))
    logs = results / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    pg_port, kafka_port, controller_port, *ports = free_ports(8)
    stack = BenchStack(
        postgres=LocalPostgres(root / "postgres", pg_port),
        kafka=LocalKafka(root / "kafka", kafka_port, controller_port, kafka_lib),
        logs=logs,
    )
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        starts = [pool.submit(stack.postgres.start), pool.submit(stack.kafka.start)]
        for start in starts:
            start.result()
        if pg_stat_statements_available():
            asyncio.run(_preload_pg_stat_statements(stack))
            stack.postgres.stop()
            stack.postgres.start()
            asyncio.run(_enable_pg_stat_statements(stack))
            stack.pg_stat_statements = True
        # As the owner, which also sets up the services' roles (SPEC §9).
        asyncio.run(migrate(stack.postgres.url, stack.postgres.service_passwords))
        env = {
            **os.environ,
            "DATABASE_URL": stack.postgres.url,
            # Each service as its own role, as `orbilnot up` runs them.
            **{f"{service.upper()}_DATABASE_URL": stack.postgres.service_url(service) for service in SERVICES},
            "KAFKA_BOOTSTRAP_SERVERS": stack.kafka.bootstrap_servers,
            "LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        serve = [sys.executable, "-m", "orbilnot.cli", "serve"]
        for service, port in zip(SERVICES, ports, strict=False):
            stack.spawn(service, [*serve, service, "--port", str(port)], env, port)
        gateway_port, ceiling_port = ports[3], ports[4]
        stack.spawn(
            "gateway", [*serve, "gateway", "--port", str(gateway_port)], gateway_env(env, stack.urls), gateway_port
        )
        stack.spawn("ceiling", [sys.executable, "-m", "bench.ceiling", str(ceiling_port)], env, ceiling_port)
        yield stack
    finally:
        # Interrupted during set-up, a start may still be under way: let it finish, then stop it.
        pool.shutdown(wait=True)
        stack.stop_processes()
        try:
            stack.kafka.stop()
        finally:
            stack.postgres.stop()
            shutil.rmtree(root, ignore_errors=True)
