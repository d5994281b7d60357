"""`orbilnot migrate [--wait]`: Alembic upgrades, safe from many processes at once.

Every migrating process first takes one PostgreSQL advisory lock, so concurrent runs queue up
and each later one finds the database already at head. `--wait` migrates nothing: it blocks
until the database is at the latest revision (what service pods run before they start).
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
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from orbilnot.migrations.roles import ensure_service_roles, grant_service_rights, service_passwords_from
from orbilnot.shared.config import async_database_url

log = logging.getLogger(__name__)

MIGRATION_LOCK_ID = 0x0B11_707  # any constant shared by all orbilnot processes


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def _upgrade(conn: AsyncConnection, service_passwords: Mapping[str, str]) -> None:
    await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    await conn.commit()
    try:

        def upgrade(sync_connection: Connection) -> None:
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


async def migrate(database_url: str, service_passwords: Mapping[str, str] | None = None) -> None:
    """Upgrade as the owner role of `database_url`; create or update the service roles whose
    passwords are given, and grant every service role its own schema (see `roles`)."""
    engine = create_async_engine(async_database_url(database_url))
    try:
        async with engine.connect() as conn:
            await _upgrade(conn, service_passwords or {})
    finally:
        await engine.dispose()


async def wait_until_migrated(database_url: str, timeout_s: float) -> bool:
    """Poll until the database is at head; unreachable databases are waited for too."""
    head = head_revision()
    deadline = time.monotonic() + timeout_s
    engine = create_async_engine(async_database_url(database_url), pool_pre_ping=True)
    try:
        while True:
            try:
                async with engine.connect() as conn:
                    if await conn.run_sync(_current_revision) == head:
                        return True
            except Exception as error:
                log.info("database not reachable yet: %s", error)
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)
    finally:
        await engine.dispose()


def migrate_command(*, wait: bool, timeout_s: float) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print("orbilnot migrate: DATABASE_URL is not set", file=sys.stderr)
        return 2
    if wait:
        if asyncio.run(wait_until_migrated(database_url, timeout_s)):
            print(f"database is at revision {head_revision()}")
            return 0
        print(f"database did not reach revision {head_revision()} in {timeout_s:.0f}s", file=sys.stderr)
        return 1
    passwords = service_passwords_from(os.environ)
    asyncio.run(migrate(database_url, passwords))
    print(f"database is at revision {head_revision()}")
    if passwords:
        print(f"service roles set: {', '.join(sorted(passwords))}")
    return 0
