"""The outbox, written once: one table per schema holding every event a service owes Kafka.

An event is recorded as an immutable, serialised message (topic, key, value, headers) in the same
transaction as the state change that causes it, so it is a snapshot decided at the change (STYLE
habit 9) and never rebuilt later from a row that may have changed since. The relay
(`shared/relay.py`) publishes the rows in id order.

A row moves through these states:
- `attempts = 0`: not yet handed to Kafka. The event is surely not out; only then may the
  service still withdraw it (an order that is deleted or amended while `NEW`).
- `attempts > 0`, `published_at` NULL: the relay committed its attempt *before* sending, so from
  here on the event may be out, whatever happens to the relay afterwards. `claimed_until` is the
  lease that keeps other replicas off it while one relay sends it; past that, it is sent again
  (same event id: consumers drop the copy).
- `published_at` set: the broker acknowledged it. The relay deletes such rows once they are
  older than the retention (`OUTBOX_RETENTION_HOURS`): Kafka has them, consumers' inboxes
  recognise a copy, and nothing reads them again.
- `refused_at` set (with `error`): the broker refused this message on its own (too large for
  the topic, say), which no retry cures. The relay sets it aside so that the rows behind it keep
  flowing; it stays for an operator, who may publish it again by clearing `refused_at`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, Insert
from sqlalchemy.ext.asyncio import AsyncConnection

from orbilnot.shared import tracing
from orbilnot.shared.unnest import arrays, insert_columns


def outbox_table(metadata: MetaData) -> Table:
    """The outbox of one schema (each service's `tables.py` declares its own)."""
    return Table(
        "outbox",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("event_id", Uuid, nullable=False, unique=True),
        Column("topic", Text, nullable=False),
        Column("key", Text, nullable=False),
        Column("value", Text, nullable=False),  # the event's JSON, exactly as it goes on the wire
        # Kafka headers to send with the message, {name: value}: e.g. the W3C trace context.
        Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("claimed_until", DateTime(timezone=True)),
        Column("published_at", DateTime(timezone=True)),
        Column("refused_at", DateTime(timezone=True)),
        Column("error", Text),
        # The relay's claim scans only what is still to publish.
        Index("outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),
    )


def outbox_row(
    event_id: uuid.UUID, topic: str, key: str, value: bytes, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "topic": topic,
        "key": key,
        "value": value.decode(),
        # With tracing on, the trace context of this state change: the relay publishes the row
        # later, in another task, and continues the trace from here (shared/tracing.py).
        "headers": tracing.with_trace_context(headers),
    }


_inserts: dict[tuple[Table, tuple[str, ...]], Insert] = {}
"""The insert of each outbox and set of columns, built once (`shared/unnest.py`)."""


async def record(conn: AsyncConnection, outbox: Table, rows: list[dict[str, Any]]) -> None:
    """Record events to publish, in the caller's transaction: one statement for many, numbered
    (`id`, the relay's order) in the order given."""
    if rows:
        names = tuple(rows[0])
        statement = _inserts.get((outbox, names))
        if statement is None:
            statement = _inserts[outbox, names] = insert_columns(outbox, names)
        await conn.execute(statement, arrays(rows, names))
