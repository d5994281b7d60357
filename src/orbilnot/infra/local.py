"""The local PostgreSQL and Kafka of `orbilnot infra up|down|status|env` and `orbilnot up`
(SPEC §7): both under one directory (`.orbilnot/` unless `ORBILNOT_HOME` says otherwise), so data
survives restarts and `infra down` + `infra up` picks up where it left off. With `--auth` a local
Keycloak joins them (issue 9), in the same directory."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx

from orbilnot.infra.kafka import LocalKafka
from orbilnot.infra.keycloak import ADMIN_ROLE, API_AUDIENCE, DEMO_USERS, LocalKeycloak
from orbilnot.infra.postgres import LocalPostgres
from orbilnot.migrations.roles import SERVICE_SCHEMAS, password_variable

DEFAULT_ROOT = Path(".orbilnot")
DEFAULT_PG_PORT = 55432
DEFAULT_KAFKA_PORT = 59092
DEFAULT_KAFKA_CONTROLLER_PORT = 59093
DEFAULT_KEYCLOAK_PORT = 58080

_T = TypeVar("_T")


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


class LocalInfra:
    """PostgreSQL in `root/postgres`, Kafka in `root/kafka`, Kafka's jars in `root/kafka-lib`.

    `root` defaults to `$ORBILNOT_HOME`, else `.orbilnot` in the current directory; the ports and
    the jar directory come from `ORBILNOT_PG_PORT`, `ORBILNOT_KAFKA_PORT`,
    `ORBILNOT_KAFKA_CONTROLLER_PORT` and `ORBILNOT_KAFKA_LIB` when set. Keycloak (only with
    `--auth`) lives in `root/keycloak` on `ORBILNOT_KEYCLOAK_PORT`; its zip is kept in `root`."""

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
        self.keycloak = LocalKeycloak(
            self.root / "keycloak", _env_port("ORBILNOT_KEYCLOAK_PORT", DEFAULT_KEYCLOAK_PORT), zip_cache_dir=self.root
        )

    def up(self, *, auth: bool = False) -> list[str]:
        """Start whatever is not running (Keycloak too with `auth`); return once all accept
        connections. Returns the names of the components this call started."""
        self.root.mkdir(parents=True, exist_ok=True)
        components: dict[str, Callable[[], bool]] = {"postgres": self.postgres.start, "kafka": self.kafka.start}
        if auth:
            components["keycloak"] = self.keycloak.start
        started = _all(list(components.values()))
        return [name for name, did_start in zip(components, started, strict=True) if did_start]

    def down(self) -> None:
        stops: list[Callable[[], None]] = [self.postgres.stop, self.kafka.stop, self.keycloak.stop]
        _all(stops)

    @property
    def auth_configured(self) -> bool:
        """Whether `--auth` was ever used here (Keycloak's directory exists)."""
        return self.keycloak.data_dir.exists()

    def status(self) -> dict[str, bool]:
        running = {"postgres": self.postgres.is_running(), "kafka": self.kafka.is_running()}
        if self.auth_configured:
            running["keycloak"] = self.keycloak.is_running()
        return running

    def env(self) -> dict[str, str]:
        """The environment that points every process at this infrastructure (SPEC §7), and at the
        local Keycloak while it runs (issue 9).

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
        if self.keycloak.is_running():
            env |= self.auth_env()
        return env

    def auth_env(self) -> dict[str, str]:
        return {"AUTH_MODE": "oidc", "OIDC_ISSUER_URL": self.keycloak.issuer_url, "OIDC_AUDIENCE": API_AUDIENCE}


def own_database_url_variable(service: str) -> str:
    """The variable a service reads its database URL from before `DATABASE_URL`."""
    return f"{service.upper()}_DATABASE_URL"


def _all(calls: list[Callable[[], _T]]) -> list[_T]:
    """Run blocking calls at once (the servers are independent, and each start mostly waits on
    its server), and wait for all even if one fails."""
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="infra") as pool:
        futures = [pool.submit(call) for call in calls]
    return [future.result() for future in futures]


def infra_command(action: str, *, auth: bool = False) -> int:
    """`orbilnot infra up|down|status|env`; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    infra = LocalInfra()
    addresses = {
        "postgres": infra.postgres.display_url,
        "kafka": infra.kafka.bootstrap_servers,
        "keycloak": infra.keycloak.issuer_url,
    }
    if action == "up":
        try:
            started = infra.up(auth=auth)
        except (RuntimeError, OSError) as error:  # OSError includes TimeoutError
            print(f"infra up failed: {error}", file=sys.stderr)
            return 1
        for name in ("postgres", "kafka", "keycloak") if auth else ("postgres", "kafka"):
            print(f"{name}: {'started' if name in started else 'already running'} ({addresses[name]})")
        if auth:
            print_demo_users(infra)
        return 0
    if action == "down":
        infra.down()
        for name in infra.status():
            print(f"{name}: stopped")
        return 0
    if action == "status":
        running = infra.status()
        for name, is_running in running.items():
            print(f"{name}: running ({addresses[name]})" if is_running else f"{name}: stopped")
        if infra.auth_configured:
            print_demo_users(infra)
        return 0 if all(running.values()) else 1
    if action == "env":
        for name, value in infra.env().items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    raise ValueError(f"unknown infra action {action!r}")


def print_demo_users(infra: LocalInfra) -> None:
    """The demo users of the local realm and their passwords (generated once, local use only)."""
    passwords = infra.keycloak.passwords()
    print(f"demo users of realm orbilnot (get a token: orbilnot token USER; admin has the role {ADMIN_ROLE}):")
    for user in DEMO_USERS:
        print(f"  {user:<6} {passwords[user]}")


def token_command(user: str) -> int:
    """`orbilnot token USER`: an access token of a demo user, alone on the last line (for curl)."""
    infra = LocalInfra()
    if not infra.keycloak.is_running():
        print("the local Keycloak is not running: orbilnot infra up --auth (or orbilnot up --auth)", file=sys.stderr)
        return 1
    passwords = infra.keycloak.passwords()
    if user not in DEMO_USERS:
        print(f"unknown demo user {user!r}; one of: {', '.join(DEMO_USERS)}", file=sys.stderr)
        return 2
    try:
        token = infra.keycloak.password_token(user, passwords[user])
    except (RuntimeError, OSError, httpx.HTTPError) as error:
        print(f"no token for {user}: {error}", file=sys.stderr)
        return 1
    print(token)
    return 0
