"""Least privilege in the database (SPEC §9, issue 8): the local server wants a password from
everyone, and each service's role may use its own schema and nothing else."""

from __future__ import annotations

import stat
import uuid

import asyncpg
import pytest

from orbilnot.migrations.roles import SERVICE_SCHEMAS, role_of
from orbilnot.migrations.runner import wait_until_migrated
from support import RunningInfra, service_database_url

# One table of each schema, and a statement a service needs on its own.
TABLES = {
    "billing": "billing.accounts",
    "order": "order_service.orders",
    "notification": "notification_service.notifications",
}


def dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def test_the_local_server_wants_a_password(infra: RunningInfra) -> None:
    postgres = infra.postgres
    for user in (postgres.user, role_of("billing")):
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            await asyncpg.connect(host="127.0.0.1", port=postgres.port, user=user, database="postgres", password="")
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(
                host="127.0.0.1",
                port=postgres.port,
                user=user,
                database="postgres",
                password="wrong-" + uuid.uuid4().hex,
            )
    assert stat.S_IMODE(postgres.passwords_file.stat().st_mode) == 0o600
    method = await _auth_method(infra)
    assert method == "scram-sha-256"


async def _auth_method(infra: RunningInfra) -> str:
    connection = await asyncpg.connect(dsn(infra.database_url))
    try:
        rules = await connection.fetch("SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE error IS NULL")
        stored = await connection.fetchval(
            "SELECT count(*) FROM pg_authid WHERE rolcanlogin AND rolpassword NOT LIKE 'SCRAM-SHA-256$%'"
        )
    finally:
        await connection.close()
    assert stored == 0, "a login role without a SCRAM verifier"
    assert len(rules) == 1, rules
    return str(rules[0]["auth_method"])


@pytest.mark.parametrize("service", sorted(SERVICE_SCHEMAS))
async def test_a_service_role_uses_its_own_schema_and_is_refused_the_others(
    infra: RunningInfra, database_url: str, service: str
) -> None:
    own_url = service_database_url(infra, database_url, service)
    connection = await asyncpg.connect(dsn(own_url))
    try:
        assert await connection.fetchval("SELECT current_user") == role_of(service)
        await connection.fetch(f"SELECT * FROM {TABLES[service]} LIMIT 1")
        for other, table in TABLES.items():
            if other == service:
                continue
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.fetch(f"SELECT * FROM {table} LIMIT 1")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(f"DELETE FROM {table}")
        # Nor may it change the shape of anything: that is the migrations' job, as the owner.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(f"CREATE TABLE {SERVICE_SCHEMAS[service]}.intruder (id int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(f"DROP TABLE {TABLES[service]}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute("CREATE TABLE public.intruder (id int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute("UPDATE public.alembic_version SET version_num = 'x'")
    finally:
        await connection.close()
    # What its pods run before they start (`orbilnot migrate --wait`) works as the service itself.
    assert await wait_until_migrated(own_url, timeout_s=10)
