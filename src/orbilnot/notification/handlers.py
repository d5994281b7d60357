"""Notification's use cases."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from prometheus_client import Histogram
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from orbilnot.model import PaymentEvent
from orbilnot.notification.domain import render
from orbilnot.notification.tables import notifications, parked_events
from orbilnot.shared.auth import Caller
from orbilnot.shared.consumer import consumed_record
from orbilnot.shared.db import after_commit
from orbilnot.shared.observability import FLOW_LATENCY_BUCKETS, ORDER_CREATED_AT_HEADER
from orbilnot.shared.pagination import DEFAULT_LIMIT, Page, lock_account_lists
from orbilnot.shared.unnest import arrays, insert_columns

NOTIFICATIONS_LIST = "notification_service.notifications"

NOTIFICATION_LATENCY = Histogram(
    "orbilnot_notification_latency_seconds",
    "Order created (its CREATED event's occurredAt, in a header of the payment result) → its "
    "notification stored; observed once the notification is committed",
    buckets=FLOW_LATENCY_BUCKETS,
)


_COLUMNS = ("event_id", "account_id", "owner_sub", "order_number", "notification_type", "title", "body")
# Built once (shared/unnest.py): a batch's values are its parameters. The id (a random UUID, as
# uuid4) is drawn by PostgreSQL, in C, rather than made and encoded in Python for every row.
_STORE = (
    insert_columns(notifications, _COLUMNS, id=func.gen_random_uuid())
    .on_conflict_do_nothing()
    .returning(notifications.c.event_id)
)


@dataclass(frozen=True, slots=True)
class Notification:
    id: UUID
    account_id: UUID
    order_number: str
    notification_type: str
    title: str
    body: str
    created_at: datetime


async def store_notifications(conn: AsyncConnection, events: Sequence[PaymentEvent]) -> None:
    """seed: PaymentEventListener. Insert first; the unique constraints drop a duplicate.

    The whole batch in two statements: the turns of its accounts, then the rows."""
    # Their place in the accounts' lists. A consumer batch holds these locks until it commits; the
    # events of one account share a partition, so two batches meet on an account only while a
    # rebalance hands a partition over (and the locks are taken in one order: no deadlock).
    await lock_account_lists(conn, NOTIFICATIONS_LIST, (event.account_id for event in events))
    rows = []
    for event in events:
        message = render(event)
        rows.append(
            {
                "event_id": event.event_id,
                "account_id": event.account_id,
                "owner_sub": event.owner_sub,
                "order_number": event.order_number,
                "notification_type": event.payment_event_type.value,
                "title": message.title,
                "body": message.body,
            }
        )
    stored = set(await conn.scalars(_STORE, arrays(rows, _COLUMNS)))
    # A duplicate is not returned (nor a second copy within the batch): it was observed when it
    # was stored the first time.
    created_at: list[datetime] = []
    for event in events:
        if event.event_id in stored:
            stored.discard(event.event_id)
            if (at := _order_created_at(event)) is not None:
                created_at.append(at)
    if created_at:
        after_commit(conn, lambda: _observe_since(created_at))


def _observe_since(created_at: list[datetime]) -> None:
    # At the commit: the notifications are stored now. Never negative: another host's clock.
    now = datetime.now(UTC)
    for at in created_at:
        NOTIFICATION_LATENCY.observe(max(0.0, (now - at).total_seconds()))


def _order_created_at(event: PaymentEvent) -> datetime | None:
    """When the order was created, from the header billing puts on the result of a CREATED event;
    None for a refund's result, or a message from a producer that sets no such header."""
    record = consumed_record(event)
    for name, value in (record.headers if record is not None else None) or ():
        if name == ORDER_CREATED_AT_HEADER:
            if value is None:  # Kafka allows a header without a value
                return None
            try:
                parsed = datetime.fromisoformat(value.decode())
            except (UnicodeDecodeError, ValueError):
                return None  # travels beside the event, unchecked: never fails the event
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return None


async def park_notification(conn: AsyncConnection, event: PaymentEvent, reason: str) -> bool:
    """The consumer's `park`, for a payment event whose notification could not be stored on its
    own (text the database cannot hold, say): kept with its error and the event as it came, for an
    operator; False when it was parked before. There is no other channel to tell the user by;
    the order's own status still shows the outcome."""
    parked = await conn.scalar(
        pg_insert(parked_events)
        .values(
            event_id=event.event_id,
            account_id=event.account_id,
            order_number=event.order_number,
            value=event.to_json().decode(),
            error=reason,
        )
        .on_conflict_do_nothing()
        .returning(parked_events.c.event_id)
    )
    return parked is not None


async def list_notifications(
    conn: AsyncConnection,
    account_id: UUID,
    caller: Caller = Caller.OPEN,
    *,
    limit: int = DEFAULT_LIMIT,
    after: int | None = None,
) -> Page[Notification]:
    """The account's notifications after position `after`, oldest first, on (account_id, seq);
    only those `caller` may see: another's are absent, as for an unknown account (issue 9)."""
    visible = [] if caller.sees_everything else [notifications.c.owner_sub == caller.subject]
    query = select(
        notifications.c.seq,
        notifications.c.id,
        notifications.c.account_id,
        notifications.c.order_number,
        notifications.c.notification_type,
        notifications.c.title,
        notifications.c.body,
        notifications.c.created_at,
    ).where(notifications.c.account_id == account_id, *visible)
    if after is not None:
        query = query.where(notifications.c.seq > after)
    rows = await conn.execute(query.order_by(notifications.c.seq).limit(limit + 1))
    return Page.of([(seq, Notification(*rest)) for seq, *rest in rows], limit)
