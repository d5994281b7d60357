"""`orbilnot migrate` as a Job and an initContainer run it: rollback-safe and patient with a
database that is not up yet (issue 13, item 3)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from orbilnot.infra import free_ports
from orbilnot.migrations import runner
from support import Stack, create_migrated_database, stack_env

MIGRATIONS = Path(runner.__file__).parent
FUTURE_REVISION = "9000_next_release"


def orbilnot(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orbilnot.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


async def migrate_as_next_release(database_url: str, scripts: Path) -> None:
    """What the next release's `migrate` does: this tree plus one more, additive revision."""
    shutil.copytree(MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / f"{FUTURE_REVISION}.py").write_text(
        textwrap.dedent(
            f'''
            """a later release: a nullable column this release does not know"""
            import sqlalchemy as sa
            from alembic import op

            revision = "{FUTURE_REVISION}"
            down_revision = "{runner.head_revision()}"
            branch_labels = None
            depends_on = None


            def upgrade() -> None:
                op.add_column("accounts", sa.Column("nickname", sa.Text, nullable=True), schema="billing")


            def downgrade() -> None:
                op.drop_column("accounts", "nickname", schema="billing")
            '''
        )
    )
    config = Config()
    config.set_main_option("script_location", str(scripts))
    engine = create_async_engine(database_url)

    def upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    try:
        async with engine.connect() as conn:
            await conn.run_sync(upgrade)
            await conn.commit()
    finally:
        await engine.dispose()


async def database_revision(database_url: str) -> str | None:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return await conn.fetchval("SELECT version_num FROM alembic_version")  # type: ignore[no-any-return]
    finally:
        await conn.close()


async def create_database(server_url: str, name: str) -> None:
    base, _, _ = server_url.rpartition("/")
    admin = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://") + "/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def test_an_older_release_runs_against_a_newer_schema(infra, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`helm rollback` across a migration: the older image's Job and initContainers see a
    revision they do not know. They must go on (with a warning), and the older service works."""
    database_url = asyncio.run(create_migrated_database(infra.database_url))
    asyncio.run(migrate_as_next_release(database_url, tmp_path / "next-release"))
    env = stack_env(infra, database_url, "rollback")

    migrated = orbilnot("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert FUTURE_REVISION in migrated.stderr and "newer" in migrated.stderr, migrated.stderr

    waited = orbilnot("migrate", "--wait", "--timeout", "20", env=env)
    assert waited.returncode == 0, waited.stderr
    assert FUTURE_REVISION in waited.stderr and "newer" in waited.stderr, waited.stderr

    # The database was left at the newer revision, not downgraded or re-stamped.
    assert asyncio.run(database_revision(database_url)) == FUTURE_REVISION

    # This release's billing service opens and reads an account on the newer schema.
    stack = Stack(urls={}, env=env, logs=tmp_path)
    try:
        (port,) = free_ports(1)
        stack.start("billing", "billing", port)
        base_url = stack.urls["billing"]
        opened = httpx.post(f"{base_url}/account", json={"actionType": "CREATE_NEW", "amount": 5}, timeout=10)
        assert opened.status_code == 200, opened.text
        account = httpx.get(f"{base_url}/account/{opened.json()}", timeout=10)
        assert account.status_code == 200, account.text
    finally:
        stack.stop_all()


def test_migrate_waits_for_a_database_that_is_not_up_yet(infra, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The Job's pod succeeds once PostgreSQL accepts connections instead of failing at once.

    The database is created only after `migrate` has started (and found nothing to connect to):
    the connection is refused with "database does not exist" until then.
    """
    base, _, _ = infra.database_url.rpartition("/")
    name = f"test_late_{int(time.time() * 1000)}"
    env = stack_env(infra, f"{base}/{name}", "late")
    process = subprocess.Popen(
        [sys.executable, "-m", "orbilnot.cli", "migrate", "--connect-timeout", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Proceed once migrate has tried and been refused at least once.
        assert process.stderr is not None
        for line in process.stderr:
            if "not reachable yet" in line:
                break
        else:
            pytest.fail(f"migrate ended without retrying (exit {process.wait()})")
        asyncio.run(create_database(infra.database_url, name))
        out, err = process.communicate(timeout=90)
        assert process.returncode == 0, err
        assert f"database is at revision {runner.head_revision()}" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_migrate_gives_up_after_its_connect_timeout(infra) -> None:  # type: ignore[no-untyped-def]
    base, _, _ = infra.database_url.rpartition("/")
    env = stack_env(infra, f"{base}/never_created", "never")
    started = time.monotonic()
    result = orbilnot("migrate", "--connect-timeout", "2", env=env)
    assert result.returncode != 0
    assert "could not connect" in result.stderr, result.stderr
    assert time.monotonic() - started < 60
