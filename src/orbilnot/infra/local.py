"""The local PostgreSQL and Kafka of `orbilnot infra up|down|status|env` and `orbilnot up`
(SPEC §7): both under one directory (`.orbilnot/` unless `ORBILNOT_HOME` says otherwise), so data
survives restarts and `infra down` + `infra up` picks up where it left off."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from orbilnot.infra.kafka import LocalKafka
from orbilnot.infra.postgres import LocalPostgres
from orbilnot.migrations.roles import SERVICE_SCHEMAS, password_variable

DEFAULT_ROOT = Path(".orbilnot")
DEFAULT_PG_PORT = 55432
DEFAULT_KAFKA_PORT = 59092
DEFAULT_KAFKA_CONTROLLER_PORT = 59093

_T = TypeVar("_T")


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


class LocalInfra:
    """PostgreSQL in `root/postgres`, Kafka in `root/kafka`, Kafka's jars in `root/kafka-lib`.

    `root` defaults to `$ORBILNOT_HOME`, else `.orbilnot` in the current directory; the ports and
    the jar directory come from `ORBILNOT_PG_PORT`, `ORBILNOT_KAFKA_PORT`,
    `ORBILNOT_KAFKA_CONTROLLER_PORT` and `ORBILNOT_KAFKA_LIB` when set."""

    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            root = Path(os.environ.get("ORBILNOT_HOME") or DEFAULT_ROOT)
        self.root = root.resolve()
        lib_dir = Path(os.environ.get("ORBILNOT_KAFKA_LIB") or self.root / "kafka-lib")
        self.postgres = LocalPostgres(self.root / "postgres", _env_port("ORBILNOT_PG_PORT", DEFAULT_PG_PORT))
        self.kafka = LocalKafka(
            self.root / "kafka",
            port=_env_port("ORBILNOT_KAFKA_PORT", DEFAULT_KAFKA_PORT),
            controller_port=_env_port("ORBILNOT_KAFKA_CONTROLLER_PORT", DEFAULT_KAFKA_CONTROLLER_PORT),
            lib_dir=lib_dir,
        )

    def up(self) -> list[str]:
        """Start whatever is not running; return once both accept connections. Returns the names
        of the components this call started (empty if both were already up)."""
        self.root.mkdir(parents=True, exist_ok=True)
        started = _both(self.postgres.start, self.kafka.start)
        return [name for name, did_start in zip(("postgres", "kafka"), started, strict=True) if did_start]

    def down(self) -> None:
        _both(self.postgres.stop, self.kafka.stop)

    def status(self) -> dict[str, bool]:
        return {"postgres": self.postgres.is_running(), "kafka": self.kafka.is_running()}

    def env(self) -> dict[str, str]:
        """The environment that points every process at this infrastructure (SPEC §7).

        `DATABASE_URL` is the owner's, for `orbilnot migrate`, which also reads the services'
        passwords (`BILLING_DB_PASSWORD`, …) to set their roles up. A service reads its own
        `<SERVICE>_DATABASE_URL` (`BILLING_DATABASE_URL`, …) before `DATABASE_URL`, so one
        environment serves every process and each service connects as its own role."""
        env = {"DATABASE_URL": self.postgres.url}
        for service in SERVICE_SCHEMAS:
            env[password_variable(service)] = self.postgres.passwords[service]
        for service in SERVICE_SCHEMAS:
            env[own_database_url_variable(service)] = self.postgres.service_url(service)
        env["KAFKA_BOOTSTRAP_SERVERS"] = self.kafka.bootstrap_servers
        return env


def own_database_url_variable(service: str) -> str:
    """The variable a service reads its database URL from before `DATABASE_URL`."""
    return f"{service.upper()}_DATABASE_URL"


def _both(first: Callable[[], _T], second: Callable[[], _T]) -> tuple[_T, _T]:
    """Run two blocking calls at once (PostgreSQL and Kafka are independent, and each mostly waits
    on its server), and wait for both even if one fails."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="infra") as pool:
        futures = pool.submit(first), pool.submit(second)
    return futures[0].result(), futures[1].result()


def infra_command(action: str) -> int:
    """`orbilnot infra up|down|status|env`; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    infra = LocalInfra()
    addresses = {"postgres": infra.postgres.display_url, "kafka": infra.kafka.bootstrap_servers}
    if action == "up":
        try:
            started = infra.up()
        except (RuntimeError, OSError) as error:  # OSError includes TimeoutError
            print(f"infra up failed: {error}", file=sys.stderr)
            return 1
        for name, address in addresses.items():
            print(f"{name}: {'started' if name in started else 'already running'} ({address})")
        return 0
    if action == "down":
        infra.down()
        for name in addresses:
            print(f"{name}: stopped")
        return 0
    if action == "status":
        running = infra.status()
        for name, is_running in running.items():
            print(f"{name}: running ({addresses[name]})" if is_running else f"{name}: stopped")
        return 0 if all(running.values()) else 1
    if action == "env":
        for name, value in infra.env().items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    raise ValueError(f"unknown infra action {action!r}")
