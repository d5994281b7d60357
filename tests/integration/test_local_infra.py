"""The local infrastructure on real servers: the session's `infra`, and a `LocalInfra` of this
module's own for what stops, kills and restarts servers, so other tests never see that."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from orbilnot.infra import free_ports, process_cmdline
from orbilnot.infra.local import LocalInfra, infra_command
from orbilnot.migrations.runner import migrate_command

if TYPE_CHECKING:
    from support import RunningInfra

TIMEOUT_S = 30


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def create_topic(bootstrap_servers: str, partitions: int = 1) -> str:
    topic = f"test-{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    return topic


async def produce(bootstrap_servers: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def consume_one(bootstrap_servers: str, topic: str, group_id: str | None = None) -> tuple[bytes, bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), TIMEOUT_S)
    finally:
        await consumer.stop()
    return record.key, record.value


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


# -- the session's infrastructure -----------------------------------------------------------------


async def test_postgres_accepts_queries(infra: RunningInfra) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(infra.database_url))
    try:
        row = await connection.fetchrow("SELECT current_user AS who, current_database() AS db, 1 + 1 AS two")
        encoding = await connection.fetchval("SHOW server_encoding")
    finally:
        await connection.close()
    assert row is not None
    assert (row["who"], row["db"], row["two"]) == ("orbilnot", "orbilnot", 2)
    assert encoding == "UTF8"


async def test_kafka_round_trip_with_idempotent_producer(infra: RunningInfra) -> None:
    topic = await create_topic(infra.kafka_bootstrap_servers, partitions=3)
    await produce(infra.kafka_bootstrap_servers, topic, b"order-1", b'{"status": "NEW"}')
    # Through a consumer group: this also exercises the group coordinator and __consumer_offsets.
    received = await consume_one(infra.kafka_bootstrap_servers, topic, group_id=f"group-{topic}")
    assert received == (b"order-1", b'{"status": "NEW"}')


async def test_topics_are_not_created_by_accident(infra: RunningInfra) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap_servers, request_timeout_ms=2000)
    await producer.start()
    try:
        with pytest.raises(Exception):  # noqa: B017 - aiokafka reports it as a timeout or a KafkaError
            await producer.send_and_wait(f"never-created-{uuid.uuid4().hex}", b"x")
    finally:
        await producer.stop()


# -- a LocalInfra of our own, to stop and crash -----------------------------------------------------


@pytest.fixture(scope="module")
def local(kafka_lib_dir: Path) -> Iterator[LocalInfra]:
    root = Path(tempfile.mkdtemp(prefix="orbilnot-local-"))
    pg_port, kafka_port, controller_port = free_ports(3)
    with pytest.MonkeyPatch.context() as env:
        # Through the environment, as a developer would, so that `infra_command` sees it too.
        env.setenv("ORBILNOT_HOME", str(root))
        env.setenv("ORBILNOT_PG_PORT", str(pg_port))
        env.setenv("ORBILNOT_KAFKA_PORT", str(kafka_port))
        env.setenv("ORBILNOT_KAFKA_CONTROLLER_PORT", str(controller_port))
        env.setenv("ORBILNOT_KAFKA_LIB", str(kafka_lib_dir))
        infra = LocalInfra()
        try:
            yield infra
        finally:
            infra.down()
            shutil.rmtree(root, ignore_errors=True)


async def test_up_is_idempotent(local: LocalInfra) -> None:
    await asyncio.to_thread(local.down)
    assert await asyncio.to_thread(local.up) == ["postgres", "kafka"]
    assert await asyncio.to_thread(local.up) == []
    assert local.status() == {"postgres": True, "kafka": True}


async def test_infra_command(local: LocalInfra, capsys: pytest.CaptureFixture[str]) -> None:
    await asyncio.to_thread(local.up)
    capsys.readouterr()
    assert await asyncio.to_thread(infra_command, "env") == 0
    exported = dict(shlex.split(line)[1].split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert exported == local.env()
    assert exported["DATABASE_URL"] == local.postgres.url
    # What each process needs: the owner for `migrate` (and the passwords it sets), and each
    # service its own role.
    for service in ("billing", "order", "notification"):
        assert exported[f"{service.upper()}_DATABASE_URL"] == local.postgres.service_url(service)
        assert exported[f"{service.upper()}_DB_PASSWORD"] == local.postgres.passwords[service]
        assert exported[f"{service.upper()}_DATABASE_URL"].startswith(f"postgresql+asyncpg://orbilnot_{service}:")
    assert await asyncio.to_thread(infra_command, "status") == 0

    await asyncio.to_thread(infra_command, "down")
    assert await asyncio.to_thread(infra_command, "status") == 1


async def test_down_leaves_no_process(local: LocalInfra) -> None:
    await asyncio.to_thread(local.up)
    pids = [local.postgres.pid, local.kafka.pid]
    assert None not in pids

    await asyncio.to_thread(local.down)

    assert local.status() == {"postgres": False, "kafka": False}
    assert [pid for pid in pids if pid is not None and process_cmdline(pid) is not None] == []
    assert not local.kafka.pid_file.exists()
    assert not port_open(local.postgres.port)
    assert not port_open(local.kafka.port)
    assert not port_open(local.kafka.controller_port)


async def write_marks(infra: LocalInfra) -> tuple[str, str]:
    """A committed row and an acknowledged message, to look for after a restart."""
    mark = uuid.uuid4().hex
    connection = await asyncpg.connect(asyncpg_dsn(infra.postgres.url))
    try:
        await connection.execute("CREATE TABLE IF NOT EXISTS marks (mark text PRIMARY KEY)")
        await connection.execute("INSERT INTO marks VALUES ($1)", mark)
    finally:
        await connection.close()
    topic = await create_topic(infra.kafka.bootstrap_servers)
    await produce(infra.kafka.bootstrap_servers, topic, b"mark", mark.encode())
    return mark, topic


async def assert_marks_survived(infra: LocalInfra, mark: str, topic: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(infra.postgres.url))
    try:
        assert await connection.fetchval("SELECT count(*) FROM marks WHERE mark = $1", mark) == 1
    finally:
        await connection.close()
    assert await consume_one(infra.kafka.bootstrap_servers, topic) == (b"mark", mark.encode())


async def test_data_survives_a_restart(local: LocalInfra) -> None:
    await asyncio.to_thread(local.up)
    mark, topic = await write_marks(local)

    await asyncio.to_thread(local.down)
    assert await asyncio.to_thread(local.up) == ["postgres", "kafka"]

    await assert_marks_survived(local, mark, topic)


async def test_migrate_sets_up_the_service_roles_it_is_given(
    local: LocalInfra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract of compose and the chart: `orbilnot migrate` as the owner, with a service's
    password in BILLING_DB_PASSWORD, creates (or updates) that service's role, then grants it."""
    await asyncio.to_thread(local.up)
    monkeypatch.setenv("DATABASE_URL", local.postgres.url)
    for password in ("first-" + uuid.uuid4().hex, "changed-" + uuid.uuid4().hex):
        monkeypatch.setenv("BILLING_DB_PASSWORD", password)
        assert await asyncio.to_thread(migrate_command, wait=False, timeout_s=30) == 0
        connection = await asyncpg.connect(
            host="127.0.0.1", port=local.postgres.port, user="orbilnot_billing", database="orbilnot", password=password
        )
        try:
            assert await connection.fetchval("SELECT count(*) FROM billing.accounts") >= 0
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.fetchval("SELECT count(*) FROM order_service.orders")
        finally:
            await connection.close()


async def test_a_cluster_that_trusted_everyone_wants_passwords_after_up(local: LocalInfra) -> None:
    """A `.orbilnot/` made before passwords were required (initdb --auth=trust) keeps its data and
    asks for a password from the next `up` on."""
    await asyncio.to_thread(local.up)
    mark, topic = await write_marks(local)
    await asyncio.to_thread(local.down)
    hba = local.postgres.pgdata / "pg_hba.conf"
    hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    password = local.postgres.passwords_file.read_text()

    assert "postgres" in await asyncio.to_thread(local.up)

    assert local.postgres.passwords_file.read_text() == password, "generated once, kept"
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host="127.0.0.1", port=local.postgres.port, user="orbilnot", database="orbilnot", password="x"
        )
    await assert_marks_survived(local, mark, topic)


async def test_data_survives_a_crash(local: LocalInfra) -> None:
    await asyncio.to_thread(local.up)
    mark, topic = await write_marks(local)
    pids = [local.postgres.pid, local.kafka.pid]

    await asyncio.to_thread(local.postgres.stop, "immediate")
    await asyncio.to_thread(local.kafka.kill)
    assert [pid for pid in pids if pid is not None and process_cmdline(pid) is not None] == []

    assert await asyncio.to_thread(local.up) == ["postgres", "kafka"]
    await assert_marks_survived(local, mark, topic)
