"""Notification's use cases."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from prometheus_client import Histogram
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from orbilnot.model import PaymentEvent
from orbilnot.notification.domain import render
from orbilnot.notification.tables import notifications, parked_events
from orbilnot.shared.auth import Caller
from orbilnot.shared.consumer import consumed_record
from orbilnot.shared.db import after_commit
from orbilnot.shared.observability import FLOW_LATENCY_BUCKETS, ORDER_CREATED_AT_HEADER
from orbilnot.shared.pagination import DEFAULT_LIMIT, Page, lock_account_list

NOTIFICATIONS_LIST = "notification_service.notifications"

NOTIFICATION_LATENCY = Histogram(
    "orbilnot_notification_latency_seconds",
    "Order created (its CREATED event's occurredAt, in a header of the payment result) → its "
    "notification stored; observed once the notification is committed",
    buckets=FLOW_LATENCY_BUCKETS,
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


async def store_notification(conn: AsyncConnection, event: PaymentEvent) -> None:
    """seed: PaymentEventListener. Insert first; the unique constraints drop a duplicate."""
    message = render(event)
    # Its place in the account's list. A consumer batch holds these locks until it commits; the
    # events of one account share a partition, so two batches meet on an account only while a
    # rebalance hands a partition over, and then the loser of a deadlock is retried event by event.
    await lock_account_list(conn, NOTIFICATIONS_LIST, event.account_id)
    stored = await conn.scalar(
        pg_insert(notifications)
        .values(
            id=uuid.uuid4(),
            event_id=event.event_id,
            account_id=event.account_id,
            owner_sub=event.owner_sub,
            order_number=event.order_number,
            notification_type=event.payment_event_type.value,
            title=message.title,
            body=message.body,
        )
        .on_conflict_do_nothing()
        .returning(notifications.c.id)
    )
    created_at = _order_created_at()
    # `stored` is None for a duplicate: observed when it was stored the first time.
    if stored is not None and created_at is not None:
        after_commit(conn, lambda: _observe_since(created_at))


def _observe_since(created_at: datetime) -> None:
    # At the commit: the notification is stored now. Never negative: another host's clock.
    NOTIFICATION_LATENCY.observe(max(0.0, (datetime.now(UTC) - created_at).total_seconds()))


def _order_created_at() -> datetime | None:
    """When the order was created, from the header billing puts on the result of a CREATED event;
    None for a refund's result, or a message from a producer that sets no such header."""
    record = consumed_record.get()
    for name, value in (record.headers if record is not None else None) or ():
        if name == ORDER_CREATED_AT_HEADER:
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
