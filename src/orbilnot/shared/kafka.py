"""Kafka clients as every service uses them: built at start-up, acks=all and idempotence on.

aiokafka is the maintained asyncio client; 0.12+ speaks to Kafka 4 brokers. Every client is
made from one `KafkaConnection`: where the brokers are and how to authenticate (PLAINTEXT, or
SASL with PLAIN or SCRAM-SHA-512, over TLS or not).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import ConsumerRecord

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36
DEAD_LETTER_SUFFIX = ".dlt"


def dead_letter_topic(topic: str) -> str:
    return topic + DEAD_LETTER_SUFFIX


@dataclass(frozen=True)
class KafkaConnection:
    """How every client of a process reaches the brokers (KAFKA_* settings, README)."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None  # None with TLS: the system's trusted CAs

    def __repr__(self) -> str:  # never print the password
        return f"KafkaConnection({self.bootstrap_servers!r}, {self.security_protocol}, {self.sasl_mechanism})"

    def client_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            # Verifies the broker's certificate and host name against the CA file (or the system's).
            options["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile)
        if self.security_protocol.startswith("SASL_"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options


def as_connection(kafka: KafkaConnection | str) -> KafkaConnection:
    """A bare "host:port[,...]" is a PLAINTEXT connection (tests and local tools use these)."""
    return kafka if isinstance(kafka, KafkaConnection) else KafkaConnection(kafka)


def create_producer(kafka: KafkaConnection | str, *, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **as_connection(kafka).client_options(),
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

    def __init__(self, kafka: KafkaConnection | str, *, client_id: str) -> None:
        self._kafka = as_connection(kafka)
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
        producer = create_producer(self._kafka, client_id=self._client_id)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def renew(self) -> None:
        """Swap in a fresh producer (a new producer id, sequence numbers from zero), then stop the
        old one, which still delivers what was handed to it. Needed after the broker refused a
        batch outright (a message too large for the topic): the idempotent producer had counted
        that batch's sequence numbers, the broker had not, and aiokafka answers every later send
        to that partition with OutOfOrderSequenceNumber instead of recovering."""
        fresh = create_producer(self._kafka, client_id=self._client_id)
        try:
            await fresh.start()
        except BaseException:
            await fresh.stop()
            raise
        stale, self._producer = self._producer, fresh
        if stale is not None:
            await stale.stop()

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def create_consumer(topic: str, *, kafka: KafkaConnection | str, group_id: str, client_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        **as_connection(kafka).client_options(),
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
    kafka: KafkaConnection | str,
    topics: Iterable[str],
    *,
    partitions: int,
    replication_factor: int = 1,
    min_insync_replicas: int | None = None,
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are.

    A real cluster wants replication_factor 3 and min.insync.replicas 2 (with acks=all, a write
    then survives the loss of a broker); some managed services refuse anything less. None for
    min_insync_replicas keeps the broker's default.
    """
    admin = AIOKafkaAdminClient(**as_connection(kafka).client_options(), client_id="orbilnot-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        configs = {} if min_insync_replicas is None else {"min.insync.replicas": str(min_insync_replicas)}
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=replication_factor, topic_configs=configs)
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


async def wait_for_group_coordinator(kafka: KafkaConnection | str, group_id: str, *, timeout_s: float = 30.0) -> None:
    """Return once the broker names a coordinator for `group_id`, or after `timeout_s`.

    A broker that has just started has no group coordinator until its `__consumer_offsets` topic
    is up (the first lookup creates it), and a consumer started before then logs each failed
    lookup at ERROR (aiokafka's group_coordinator) though it only retries. Waiting here keeps a
    normal start free of those; past `timeout_s` the consumer starts anyway, and its errors then
    say something real.
    """
    admin = AIOKafkaAdminClient(**as_connection(kafka).client_options(), client_id="orbilnot-admin")
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        pause_s = 0.05
        while True:
            try:
                await admin.find_coordinator(group_id)
                return
            except KafkaError as error:
                if not error.retriable or asyncio.get_running_loop().time() + pause_s > deadline:
                    log.warning("no group coordinator for %s yet (%r); starting the consumer anyway", group_id, error)
                    return
                log.debug("no group coordinator for %s yet (%r)", group_id, error)
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 1.0)
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
