"""The idempotent consumer: the inbox half of the saga, written once.

For each batch polled from Kafka:

1. every message is parsed and validated into its event model; one that fails goes, unchanged,
   to `<topic>.dlt` with the error in a header, and is not looked at again;
2. the valid events are handed, all at once and in order, to the service's handler inside ONE
   database transaction; the handler lets the database detect duplicates (a primary key or
   unique constraint on the event id, `INSERT … ON CONFLICT DO NOTHING` first), so a redelivered
   event changes nothing. It stores the batch in a few statements, not a few per event;
3. only after that commit are the offsets committed to Kafka. A crash in between means the batch
   is delivered again, and step 2 drops what was already stored.

When the database is unreachable, or the transaction lost a race with another one (a
serialization failure, a deadlock), the batch is retried with backoff until it is stored (the
offsets stay put, so nothing is skipped); such errors are never blamed on an event. When a batch
fails for any other reason, it is stored again in one transaction with each event's work in a
savepoint of its own: an event that fails there, on its own, is rolled back alone and PARKED by
the service (`park`: its inbox keeps it with the error, and its order gets a final outcome where
the service can give one), counted in `orbilnot_parked_events_total`. A bad event must not stop
the partition behind it, and a valid event is the saga's: it is kept, not thrown away.

The dead-letter topic is for input rejected, not for the service's own failures: a message that
is no valid event (step 1), or one the service has no way to park (`park` None, or parking it
failed too), counted in `orbilnot_consumer_dead_letters_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orbilnot.shared import tracing
from orbilnot.shared.db import database_is_up, is_transient, savepoint, transaction
from orbilnot.shared.kafka import KafkaConnection, ProducerHandle, create_consumer, send_to_dead_letter
from orbilnot.shared.retry import FailureTracker, backoff

log = logging.getLogger(__name__)

CONSUMED = Counter("orbilnot_consumer_events_total", "Events consumed and stored", ["topic", "group"])
DEAD_LETTERED = Counter("orbilnot_consumer_dead_letters_total", "Messages sent to a DLT", ["topic"])
LAG = Gauge(
    "orbilnot_consumer_lag",
    "Messages of an assigned partition not yet consumed (high-water mark - position), at the last scrape",
    ["topic", "partition", "group"],
)
PARKED = Counter(
    "orbilnot_parked_events_total", "Events set aside because processing them failed on their own", ["service"]
)

Event = TypeVar("Event", bound=BaseModel)
T = TypeVar("T")
Handler = Callable[[AsyncConnection, Sequence[Event]], Awaitable[None]]
"""Stores a batch of events, in the order they were consumed, in the caller's transaction."""
Parker = Callable[[AsyncConnection, Event, str], Awaitable[bool]]
"""Sets one event aside with its error, in the caller's transaction; True when it was not parked
before (a redelivered copy of a parked event is counted once)."""

_consumed_records: ContextVar[dict[int, ConsumerRecord] | None] = ContextVar("consumed_records", default=None)
_consumed_contexts: ContextVar[dict[int, dict[str, str] | None] | None] = ContextVar("consumed_contexts", default=None)


def consumed_record(event: BaseModel) -> ConsumerRecord | None:
    """The Kafka record `event` was parsed from, while the handler given its batch runs (None
    anywhere else): for what travels beside the event (headers)."""
    records = _consumed_records.get()
    return None if records is None else records.get(id(event))


def consumed_trace_context(event: BaseModel) -> dict[str, str] | None:
    """The trace context (W3C headers) of `event`'s `process <topic>` span, while the handler
    given its batch runs: to store with work another task does for it later. None when tracing is
    off, and anywhere else."""
    contexts = _consumed_contexts.get()
    return None if contexts is None else contexts.get(id(event))


class DatabaseDown(Exception):
    """A statement failed while the database did not answer at all: the outage, not the event."""


def _reason(error: BaseException) -> str:
    # PostgreSQL text cannot hold NUL, and the reason is stored on the inbox row.
    return f"{type(error).__name__}: {error}"[:2000].replace("\x00", "\\x00")


class IdempotentConsumer(Generic[Event]):
    def __init__(
        self,
        *,
        topic: str,
        group_id: str,
        model: type[Event],
        handle: Handler[Event],
        park: Parker[Event] | None = None,
        service: str = "",
        engine: AsyncEngine,
        producer: ProducerHandle,
        kafka: KafkaConnection | str,
        client_id: str,
        batch_size: int,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self._model = model
        self._handle = handle
        self._park = park
        self._service = service or group_id
        self._engine = engine
        self._producer = producer
        self._kafka = kafka
        self._client_id = client_id
        self._batch_size = batch_size
        self._after_commit = after_commit
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.tracker = FailureTracker(f"consumer:{topic}")
        self._lag_labels: set[tuple[str, str, str]] = set()
        # At 0 from the start, not created by the first event: the alerts read these with
        # increase(), and a series whose first sample is already 1 shows no increase, so the first
        # dead letter or parked event after each start went unseen. (Billing's processor parks
        # under the same service label.)
        DEAD_LETTERED.labels(topic)
        PARKED.labels(self._service)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.topic}")

    async def stop(self, timeout_s: float = 8.0) -> None:
        """Finish the batch in hand (store it and commit its offsets), then leave the group."""
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        # Not only KafkaError and OSError: a broker killed mid-request also comes out of getmany()
        # as a RuntimeError of the closed transport ("the handler is closed"). Whatever it is, a
        # fresh consumer cures it; letting the task die would leave this replica consuming
        # nothing, and unready, for good (issue 4, scenario 3).
        try:
            async for attempt in backoff(
                f"consumer of {self.topic}",
                retry_on=lambda _: not self._stopping,
                tracker=self.tracker,
                give_up=lambda: self._stopping,
            ):
                with attempt:
                    await self._consume()
        except Exception:
            if not self._stopping:
                raise
            log.warning("consumer of %s stopped while failing", self.topic, exc_info=True)

    async def _consume(self) -> None:
        self._consumer = create_consumer(
            self.topic,
            kafka=self._kafka,
            group_id=self.group_id,
            client_id=self._client_id,
        )
        try:
            await self._consumer.start()
            while not self._stopping:
                await self._poll_once(self._consumer)
                self.tracker.succeeded()
        finally:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None

    async def measure_lag(self) -> None:
        """Set the lag of each partition assigned to this consumer, before a scrape.

        From what the client already knows (the high-water mark of its last fetch, its position):
        no request to the broker. A partition no longer assigned loses its series, so a rebalance
        leaves no stale lag behind in this process.
        """
        assigned: set[tuple[str, str, str]] = set()
        if (consumer := self._consumer) is not None:
            for tp in consumer.assignment():
                labels = (tp.topic, str(tp.partition), self.group_id)
                assigned.add(labels)
                highwater = consumer.highwater(tp)
                if highwater is None:  # nothing fetched from it yet
                    continue
                try:
                    # Immediate when the position is known; a partition still being reset is skipped.
                    position = await asyncio.wait_for(consumer.position(tp), 0.1)
                except (TimeoutError, IllegalStateError, KafkaError):
                    continue
                LAG.labels(*labels).set(max(0, highwater - position))
        for gone in self._lag_labels - assigned:
            with contextlib.suppress(KeyError):
                LAG.remove(*gone)
        self._lag_labels = assigned

    # -- one batch ---------------------------------------------------------------------------

    async def _poll_once(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=500, max_records=self._batch_size)
        if not batches:
            return
        records = [record for partition_records in batches.values() for record in partition_records]
        events: list[tuple[ConsumerRecord, Event]] = []
        for record in records:
            event = await self._parse_or_dead_letter(record)
            if event is not None:
                events.append((record, event))
        if events:
            await self._store(events)
            if self._after_commit is not None:
                self._after_commit()  # the stored work is committed: no need to wait for Kafka
        await self._commit_offsets(consumer, batches)

    async def _parse_or_dead_letter(self, record: ConsumerRecord) -> Event | None:
        try:
            if record.value is None:
                raise ValueError("message has no value")
            return self._model.model_validate_json(record.value)
        except (ValidationError, ValueError) as error:
            await self._dead_letter(record, f"{type(error).__name__}: {error}")
            return None

    async def _store(self, events: list[tuple[ConsumerRecord, Event]]) -> None:
        try:
            await self._in_transaction(lambda conn: self._handle_all(conn, events))
        except Exception as batch_error:
            log.warning("batch of %d from %s failed (%r); storing each alone", len(events), self.topic, batch_error)
            parked, rejected = await self._in_transaction(lambda conn: self._handle_each_alone(conn, events))
            # Counted and dead-lettered only now: the transaction may have run more than once.
            if parked:
                PARKED.labels(self._service).inc(parked)
            for record, reason in rejected:
                await self._dead_letter(record, reason)
        CONSUMED.labels(self.topic, self.group_id).inc(len(events))

    async def _handle_all(self, conn: AsyncConnection, events: list[tuple[ConsumerRecord, Event]]) -> None:
        """The batch in one transaction, no savepoints: a few statements for all of it."""
        try:
            await self._handle_batch(conn, events)
        except Exception as error:
            await self._raise_if_outage(error)
            raise

    async def _handle_batch(self, conn: AsyncConnection, events: list[tuple[ConsumerRecord, Event]]) -> None:
        # The handler may read each message's headers (`consumed_record`).
        token = _consumed_records.set({id(event): record for record, event in events})
        try:
            # With tracing on: a span per message, the child of its publish span, open while the
            # handler stores the batch; what the handler records for an event carries that
            # event's span on (`consumed_trace_context`).
            with tracing.consuming_batch([record for record, _ in events], self.group_id) as contexts:
                trace_token = _consumed_contexts.set(
                    {id(event): context for (_, event), context in zip(events, contexts, strict=True)}
                )
                try:
                    await self._handle(conn, [event for _, event in events])
                finally:
                    _consumed_contexts.reset(trace_token)
        finally:
            _consumed_records.reset(token)

    async def _handle_each_alone(
        self, conn: AsyncConnection, events: list[tuple[ConsumerRecord, Event]]
    ) -> tuple[int, list[tuple[ConsumerRecord, str]]]:
        """The batch again, each event's work in a savepoint: one that fails on its own is rolled
        back alone and parked (or, with nowhere to park it, rejected to the DLT after the commit)."""
        parked = 0
        rejected: list[tuple[ConsumerRecord, str]] = []
        for record, event in events:
            try:
                async with savepoint(conn):
                    await self._handle_batch(conn, [(record, event)])
                continue
            except Exception as error:
                await self._raise_if_outage(error)
                reason = _reason(error)
            log.error("%s[%d]@%d failed on its own: %s", record.topic, record.partition, record.offset, reason)
            if self._park is not None:
                try:
                    async with savepoint(conn):
                        with tracing.consuming(record, self.group_id):  # its answer continues the trace
                            parked += await self._park(conn, event, reason)
                    continue
                except Exception as error:
                    await self._raise_if_outage(error)
                    reason += f"; parking it failed too: {_reason(error)}"
            rejected.append((record, f"could not be processed: {reason}"))
        return parked, rejected

    async def _raise_if_outage(self, error: Exception) -> None:
        """Raise when `error` is the database's, not the event's: a transient error as it is, any
        other error while the database does not even answer `SELECT 1` as `DatabaseDown`; both
        make the whole transaction run again. Parking or dead-lettering events because of an
        outage would take them from the saga for nothing."""
        if is_transient(error):
            raise error
        if not await database_is_up(self._engine):
            raise DatabaseDown(repr(error)) from error

    async def _in_transaction(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `work` in one transaction, again while the database is away or the transaction
        lost a race (serialization failure, deadlock): the offsets stay put meanwhile."""
        async for attempt in backoff(
            f"storing from {self.topic}",
            retry_on=lambda error: is_transient(error) or isinstance(error, DatabaseDown),
            tracker=self.tracker,
        ):
            with attempt:
                async with transaction(self._engine) as conn:
                    return await work(conn)
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _dead_letter(self, record: ConsumerRecord, error: str) -> None:
        log.error("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, error[:500])
        await send_to_dead_letter(self._producer.producer, record, error, group=self.group_id)
        DEAD_LETTERED.labels(record.topic).inc()

    async def _commit_offsets(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
        try:
            await consumer.commit(offsets)
        except CommitFailedError as error:
            # The group rebalanced while we worked: the new owner gets these again and drops them
            # as duplicates. Nothing is lost.
            log.warning("offset commit for %s failed after a rebalance: %s", self.topic, error)
