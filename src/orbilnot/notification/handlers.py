"""Notification's use cases."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from orbilnot.model import PaymentEvent
from orbilnot.notification.domain import render
from orbilnot.notification.tables import notifications
from orbilnot.shared.auth import Caller
from orbilnot.shared.pagination import DEFAULT_LIMIT, Page, lock_account_list

NOTIFICATIONS_LIST = "notification_service.notifications"


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
    await conn.execute(
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
    )


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
