"""`orbilnot migrate [--wait]`: Alembic upgrades, safe from many processes at once.

Every migrating process first takes one PostgreSQL advisory lock, so concurrent runs queue up
and each later one finds the database already at head. `--wait` migrates nothing: it blocks
until the database is at the latest revision (what service pods run before they start).

A database at a revision this code does not know was migrated by a newer release (after a
`helm rollback`, or while a rollout is half-way): both commands log a warning and go on,
leaving it as it is. That is safe because every migration stays backward-compatible with the
release before it (README, "Deploy").
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from orbilnot.migrations.roles import ensure_service_roles, grant_service_rights, service_passwords_from
from orbilnot.shared.config import DatabaseSettings, async_database_url

log = logging.getLogger(__name__)

MIGRATION_LOCK_ID = 0x0B11_707  # any constant shared by all orbilnot processes


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _warn_newer(revision: str) -> None:
    log.warning(
        "the database is at revision %s, newer than this release's %s (a newer release migrated it); "
        "leaving it as it is",
        revision,
        head_revision(),
    )


async def _upgrade(conn: AsyncConnection, service_passwords: Mapping[str, str]) -> None:
    await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    await conn.commit()
    try:

        def upgrade(sync_connection: Connection) -> None:
            current = _current_revision(sync_connection)
            if current is not None and current not in known_revisions():
                _warn_newer(current)
                return
            config = alembic_config()
            config.attributes["connection"] = sync_connection
            command.upgrade(config, "head")

        await conn.run_sync(upgrade)
        await conn.commit()
        # After the upgrade, so that tables a new revision created are granted too.
        await conn.run_sync(ensure_service_roles, service_passwords)
        await conn.run_sync(grant_service_rights)
        await conn.commit()
    finally:
        await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
        await conn.commit()


class DatabaseUnreachable(RuntimeError):
    pass


async def _connect(engine: AsyncEngine, timeout_s: float) -> AsyncConnection:
    """The first connection, retried until `timeout_s` has passed: in a fresh install the Job
    starts before PostgreSQL accepts connections, and a retry here costs a second where a failed
    pod costs the Job controller's backoff (10 s, 20 s, 40 s ...)."""
    deadline = time.monotonic() + timeout_s
    pause_s = 0.5
    while True:
        try:
            return await engine.connect()
        except Exception as error:
            if time.monotonic() + pause_s > deadline:
                raise DatabaseUnreachable(f"could not connect to the database in {timeout_s:.0f}s: {error}") from error
            log.info("database not reachable yet (%s); retrying in %.1fs", error, pause_s)
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 5.0)


async def migrate(
    database_url: str, service_passwords: Mapping[str, str] | None = None, *, connect_timeout_s: float = 0.0
) -> None:
    """Upgrade as the owner role of `database_url`; create or update the service roles whose
    passwords are given, and grant every service role its own schema (see `roles`)."""
    engine = create_async_engine(async_database_url(database_url))
    try:
        conn = await _connect(engine, connect_timeout_s)
        try:
            await _upgrade(conn, service_passwords or {})
        finally:
            await conn.close()
    finally:
        await engine.dispose()


async def wait_until_migrated(database_url: str, timeout_s: float) -> bool:
    """Poll until the database is at head (or at a newer revision); unreachable databases are
    waited for too."""
    head = head_revision()
    known = known_revisions()
    deadline = time.monotonic() + timeout_s
    engine = create_async_engine(async_database_url(database_url), pool_pre_ping=True)
    try:
        while True:
            try:
                async with engine.connect() as conn:
                    current = await conn.run_sync(_current_revision)
                    if current == head:
                        return True
                    if current is not None and current not in known:
                        _warn_newer(current)
                        return True
            except Exception as error:
                log.info("database not reachable yet: %s", error)
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)
    finally:
        await engine.dispose()


def migrate_command(*, wait: bool, timeout_s: float, connect_timeout_s: float = 60.0) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        database_url = DatabaseSettings().database_url  # DATABASE_URL (+ DATABASE_PASSWORD)
    except ValidationError:
        print("orbilnot migrate: DATABASE_URL is not set", file=sys.stderr)
        return 2
    if wait:
        if asyncio.run(wait_until_migrated(database_url, timeout_s)):
            print(f"database is at revision {head_revision()} or newer")
            return 0
        print(f"database did not reach revision {head_revision()} in {timeout_s:.0f}s", file=sys.stderr)
        return 1
    passwords = service_passwords_from(os.environ)
    try:
        asyncio.run(migrate(database_url, passwords, connect_timeout_s=connect_timeout_s))
    except DatabaseUnreachable as error:
        print(f"orbilnot migrate: {error}", file=sys.stderr)
        return 1
    print(f"database is at revision {head_revision()}")
    if passwords:
        print(f"service roles set: {', '.join(sorted(passwords))}")
    return 0
