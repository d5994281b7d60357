"""Kafka clients as every service uses them: built at start-up, acks=all and idempotence on.

aiokafka is the maintained asyncio client; 0.12+ speaks to Kafka 4 brokers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36
DEAD_LETTER_SUFFIX = ".dlt"


def dead_letter_topic(topic: str) -> str:
    return topic + DEAD_LETTER_SUFFIX


def create_producer(bootstrap_servers: str, *, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        # The relay hands a whole batch over at once, so sends batch up without waiting for a
        # linger timer; a timer here would only add latency to a lone order.
        linger_ms=0,
        request_timeout_ms=15000,
        retry_backoff_ms=100,
    )


class KafkaNotConnected(RuntimeError):
    pass


class ProducerHandle:
    """The process's one producer, connected in the background so a service can start (and say
    it is not ready) before the broker is reachable. Once started, aiokafka reconnects by itself."""

    def __init__(self, bootstrap_servers: str, *, client_id: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise KafkaNotConnected("the Kafka producer is not connected yet")
        return self._producer

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def connect(self) -> None:
        """Start a producer; a failed start leaves nothing behind, so callers simply retry."""
        producer = create_producer(self._bootstrap_servers, client_id=self._client_id)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def create_consumer(topic: str, *, bootstrap_servers: str, group_id: str, client_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        client_id=client_id,
        # Offsets are committed by hand, after the database commit of what was consumed.
        enable_auto_commit=False,
        # A new consumer group must still see events published before it first started.
        auto_offset_reset="earliest",
        # A fetch returns as soon as one record is there; the wait only bounds an idle poll.
        fetch_max_wait_ms=100,
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
        metadata_max_age_ms=30000,
    )


async def ensure_topics(
    bootstrap_servers: str, topics: Iterable[str], *, partitions: int, replication_factor: int = 1
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="orbilnot-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)
            for name in topics
            if name not in existing
        ]
        if not missing:
            return
        response = await admin.create_topics(missing, timeout_ms=15000)
        for name, code, *_ in response.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"could not create topic {name}: error code {code}")
        log.info("created topics %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()


async def send_to_dead_letter(
    producer: AIOKafkaProducer, record: ConsumerRecord, error: str, *, group: str | None = None
) -> None:
    """Forward a message we cannot use to `<topic>.dlt`, unchanged, with the reason in headers."""
    headers = [
        ("error", error[:4000].encode("utf-8", "replace")),
        ("original-topic", record.topic.encode()),
        ("original-partition", str(record.partition).encode()),
        ("original-offset", str(record.offset).encode()),
    ]
    if group is not None:
        # Several groups read one topic (payment.event: order and notification), and each may
        # reject a message for its own reason: say which one did, so it can be re-driven to it.
        headers.append(("consumer-group", group.encode()))
    value = record.value
    # A message larger than the broker takes cannot be forwarded whole; keep its head and say so.
    if value is not None and len(value) > 900_000:
        headers.append(("truncated-from-bytes", str(len(value)).encode()))
        value = value[:900_000]
    await producer.send_and_wait(dead_letter_topic(record.topic), value=value, key=record.key, headers=headers)
