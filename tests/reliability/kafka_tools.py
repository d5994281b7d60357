"""Kafka helpers for the scenarios that feed the running services by hand: read a whole topic,
publish copies of it, and wait (by polling the consumer groups' committed offsets, never by a fixed
sleep) until the services have consumed everything up to a topic's end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from aiokafka.structs import ConsumerRecord

GROUPS_OF_ORDER_TOPIC = ("orbilnot-billing",)
GROUPS_OF_PAYMENT_TOPIC = ("orbilnot-order", "orbilnot-notification")


async def end_offsets(bootstrap_servers: str, topic: str) -> dict[TopicPartition, int]:
    # Subscribed (without a group), the consumer fetches the topic's metadata as it starts.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"topic {topic} has no partitions"
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def read_all(bootstrap_servers: str, topic: str, *, timeout_s: float = 60.0) -> list[ConsumerRecord]:
    """Every record on `topic` up to its current end, in partition order."""
    ends = await end_offsets(bootstrap_servers, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        # A poison message may be as large as the broker takes; a fetch must hold it.
        max_partition_fetch_bytes=2 * 1024 * 1024,
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        deadline = time.monotonic() + timeout_s
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end {ends} in {timeout_s}s")
            batch = await consumer.getmany(timeout_ms=200)
            for tp, partition_records in batch.items():
                records.extend(r for r in partition_records if r.offset < ends[tp])
    finally:
        await consumer.stop()
    return records


async def publish_copies(bootstrap_servers: str, records: Iterable[ConsumerRecord]) -> int:
    """Publish each record again, same topic, partition, key, value and headers."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        acks = [
            await producer.send(
                r.topic, value=r.value, key=r.key, partition=r.partition, headers=list(r.headers or ()) or None
            )
            for r in records
        ]
        await asyncio.gather(*acks)
        return len(acks)
    finally:
        await producer.stop()


async def publish(
    bootstrap_servers: str, topic: str, messages: Sequence[tuple[bytes | None, bytes | None]]
) -> list[tuple[int, int]]:
    """Publish (key, value) pairs in order; returns each one's (partition, offset)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True, max_request_size=1024 * 1024
    )
    await producer.start()
    try:
        placed = []
        for key, value in messages:
            metadata = await producer.send_and_wait(topic, value=value, key=key)
            placed.append((metadata.partition, metadata.offset))
        return placed
    finally:
        await producer.stop()


async def committed(bootstrap_servers: str, group: str, topic: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def wait_consumed(
    bootstrap_servers: str, topic: str, groups: Sequence[str], *, timeout_s: float = 90.0
) -> dict[TopicPartition, int]:
    """Wait until every group committed offsets up to `topic`'s current end on every partition.

    The services commit an offset only after the database commit of what they consumed, so once
    this returns, everything before the end is stored (or dead-lettered)."""
    ends = await end_offsets(bootstrap_servers, topic)
    deadline = time.monotonic() + timeout_s
    while True:
        behind = {}
        for group in groups:
            done = await committed(bootstrap_servers, group, topic)
            lag = {tp.partition: end - done.get(tp, 0) for tp, end in ends.items() if done.get(tp, 0) < end}
            if lag:
                behind[group] = lag
        if not behind:
            return ends
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic} not consumed in {timeout_s}s; lag per group and partition: {behind}")
        await asyncio.sleep(0.2)


async def wait_groups_stable(
    bootstrap_servers: str, topic_groups: dict[str, Sequence[str]], *, members: int, timeout_s: float = 60.0
) -> None:
    """Wait until each group has at least `members` members subscribed to its topic and no
    rebalance under way, so that what a scenario publishes next is consumed once, not again after
    a rebalance. (Members are counted by subscription: other stacks' consumers, such as the e2e
    suite's, share the group ids but read other topics.)"""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            states: dict[tuple[str, str], tuple[str, int]] = {}
            for topic, groups in topic_groups.items():
                for group in groups:
                    for response in await admin.describe_consumer_groups([group]):
                        for described in response.groups:
                            subscribed = [m for m in described[5] if topic in _subscription(m[3])]
                            states[(topic, described[1])] = (described[2], len(subscribed))
            wanted = [(t, g) for t, groups in topic_groups.items() for g in groups]
            if all(states.get(k, ("", 0))[0] == "Stable" and states[k][1] >= members for k in wanted):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"consumer groups not stable in {timeout_s}s: {states}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def _subscription(member_metadata: bytes) -> list[str]:
    try:
        return list(ConsumerProtocolMemberMetadata.decode(member_metadata).subscription)
    except Exception:
        return []
