"""Order's use cases. Each takes a connection inside a transaction that its caller owns (a route's
`engine.begin()`, the consumer's batch, the relay's step) and returns plain values."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from prometheus_client import Counter
from sqlalchemy import ColumnElement, Row, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from orbilnot.model import OrderEvent, OrderEventType, PaymentEvent, order_number_of, parse_order_number
from orbilnot.order import domain
from orbilnot.order.domain import OrderStatus, Withdrawal
from orbilnot.order.tables import orders, outbox, processed_events
from orbilnot.shared.auth import Caller
from orbilnot.shared.db import after_commit, is_transient, savepoint
from orbilnot.shared.errors import Conflict, NotFound
from orbilnot.shared.outbox import outbox_row, record
from orbilnot.shared.pagination import DEFAULT_LIMIT, Page, lock_account_list

log = logging.getLogger(__name__)

TRANSITIONS = Counter(
    "orbilnot_order_transitions_total",
    "Orders that changed status, counted once their transaction committed",
    ["from_status", "to_status"],
)

ORDERS_LIST = "order_service.orders"
"""The name under which writers of one account's orders take turns (`lock_account_list`)."""


def _count_transition(conn: AsyncConnection, before: OrderStatus, after: OrderStatus, orders_moved: int = 1) -> None:
    """Count `orders_moved` orders going `before` → `after` once the transaction commits (never for
    one rolled back, so a retried batch counts its orders once; `shared.db.after_commit`)."""
    if orders_moved:
        child = TRANSITIONS.labels(before.value, after.value)
        after_commit(conn, lambda: child.inc(orders_moved))


@dataclass(frozen=True, slots=True)
class Order:
    id: UUID
    order_number: str
    account_id: UUID
    amount: Decimal
    status: OrderStatus
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Row[Any]) -> Order:
        return cls(
            row.id, row.order_number, row.account_id, row.amount, OrderStatus(row.status),
            row.created_at, row.updated_at,
        )  # fmt: skip


# -- HTTP --------------------------------------------------------------------------------------


async def place_order(
    conn: AsyncConnection,
    account_id: UUID,
    amount: Decimal,
    idempotency_key: str | None = None,
    caller: Caller = Caller.OPEN,
    *,
    topic: str,
) -> UUID:
    """Commit a NEW order and, in its outbox, the CREATED event it owes `topic`.

    With an idempotency key, a repeat of the same request from the same account returns the
    first order's id; the unique index on (account, key) settles a race between two identical
    requests. Keys of different accounts never meet.

    Whether `caller` may order on the account is not known here (billing owns accounts): the
    order carries its placer to billing, which denies it as for a missing account if not.
    """
    order_id = uuid.uuid4()
    event_id = uuid.uuid4()
    # The caller is part of the request: another subject's key never returns this order's id.
    fingerprint = _fingerprint(account_id, amount, caller) if idempotency_key else None
    order_number = order_number_of(account_id, order_id)
    await lock_account_list(conn, ORDERS_LIST, account_id)  # its place in the account's list
    inserted = await conn.scalar(
        pg_insert(orders)
        .values(
            id=order_id,
            account_id=account_id,
            order_number=order_number,
            amount=amount,
            status=OrderStatus.NEW.value,
            created_event_id=event_id,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            owner_sub=caller.subject,
            placed_by_admin=caller.is_admin,
        )
        .on_conflict_do_nothing(
            index_elements=[orders.c.account_id, orders.c.idempotency_key],
            index_where=orders.c.idempotency_key.is_not(None),
        )
        .returning(orders.c.id)
    )
    if inserted is not None:
        await _record(
            conn, topic, event_id, OrderEventType.CREATED, account_id, order_number, amount,
            placed_by=caller.subject, placed_by_admin=caller.is_admin,
        )  # fmt: skip
        return order_id
    first = (
        await conn.execute(
            select(orders.c.id, orders.c.request_fingerprint).where(
                orders.c.account_id == account_id, orders.c.idempotency_key == idempotency_key
            )
        )
    ).one()
    if first.request_fingerprint != fingerprint:
        raise Conflict("this Idempotency-Key was used with a different request")
    return UUID(str(first.id))


def _visible_to(caller: Caller) -> list[ColumnElement[bool]]:
    """The orders `caller` may see: all for an admin (or with auth off), else the caller's own.
    Another's orders are simply absent, so a list looks like that of an unknown account."""
    return [] if caller.sees_everything else [orders.c.owner_sub == caller.subject]


async def list_orders(
    conn: AsyncConnection,
    account_id: UUID,
    caller: Caller = Caller.OPEN,
    *,
    limit: int = DEFAULT_LIMIT,
    after: int | None = None,
) -> Page[Order]:
    """The account's orders after position `after`, oldest first, on the (account_id, seq) index."""
    query = select(orders).where(orders.c.account_id == account_id, *_visible_to(caller))
    if after is not None:
        query = query.where(orders.c.seq > after)
    rows = await conn.execute(query.order_by(orders.c.seq).limit(limit + 1))
    return Page.of([(row.seq, Order.of(row)) for row in rows], limit)


async def get_order(conn: AsyncConnection, account_id: UUID, order_id: UUID, caller: Caller = Caller.OPEN) -> Order:
    row = (
        await conn.execute(
            select(orders).where(orders.c.id == order_id, orders.c.account_id == account_id, *_visible_to(caller))
        )
    ).first()
    if row is None:
        raise NotFound(f"order {order_id} of account {account_id} not found")
    return Order.of(row)


async def amend_order(
    conn: AsyncConnection,
    account_id: UUID,
    order_number: str,
    amount: Decimal,
    caller: Caller = Caller.OPEN,
    *,
    topic: str,
) -> Order:
    """PUT: change the amount of an order whose CREATED was never sent. Its unsent event is
    replaced by one with the new amount (events are immutable snapshots, never edited)."""
    row = await _lock_order(conn, account_id, order_number, caller)
    domain.ensure_amendable(OrderStatus(row.status))
    event_id = uuid.uuid4()
    await conn.execute(delete(outbox).where(outbox.c.event_id == row.created_event_id))
    changed = (
        await conn.execute(
            update(orders)
            .where(orders.c.id == row.id)
            .values(amount=amount, created_event_id=event_id, updated_at=func.now())
            .returning(*orders.c)
        )
    ).one()
    await _record(
        conn, topic, event_id, OrderEventType.CREATED, account_id, order_number, amount,
        placed_by=row.owner_sub, placed_by_admin=row.placed_by_admin,
    )  # fmt: skip
    return Order.of(changed)


async def withdraw_order(
    conn: AsyncConnection, account_id: UUID, order_number: str, caller: Caller = Caller.OPEN, *, topic: str
) -> Order | None:
    """DELETE: remove an order surely never charged (None), or start its refund, at most once."""
    row = await _lock_order(conn, account_id, order_number, caller)
    action = domain.withdrawal(OrderStatus(row.status))
    if action is Withdrawal.REMOVE:
        if row.status == OrderStatus.NEW:
            # Its CREATED was never attempted (the outbox row is locked, so no relay holds it):
            # it goes with the order, and billing never hears of either.
            await conn.execute(delete(outbox).where(outbox.c.event_id == row.created_event_id))
        await conn.execute(delete(orders).where(orders.c.id == row.id))
        return None
    if action is Withdrawal.NOTHING:
        return Order.of(row)
    refunding = (
        await conn.execute(
            update(orders)
            .where(orders.c.id == row.id)
            .values(status=OrderStatus.REFUND_PENDING.value, updated_at=func.now())
            .returning(*orders.c)
        )
    ).one()
    await _record(
        conn, topic, uuid.uuid4(), OrderEventType.CANCELLED, account_id, order_number, row.amount,
        placed_by=row.owner_sub, placed_by_admin=row.placed_by_admin,
    )  # fmt: skip
    _count_transition(conn, OrderStatus(row.status), OrderStatus.REFUND_PENDING)
    return Order.of(refunding)


async def _lock_order(conn: AsyncConnection, account_id: UUID, order_number: str, caller: Caller) -> Row[Any]:
    """Lock the order row, and first the outbox row of its CREATED event while that is unsent.

    The relay locks outbox rows and then, in the same transaction, moves their orders NEW → SENT;
    taking the two locks in the same order here means we never deadlock with it, and if a relay
    is claiming this order's event right now we wait for its commit: what we then read says
    whether the event may be out (SENT) or surely is not (NEW). An order `caller` may not see
    is "not found", like a missing one.
    """
    try:
        owner, _ = parse_order_number(order_number)
    except ValueError:
        raise NotFound(f"order {order_number} not found") from None
    if owner != account_id:
        raise NotFound(f"order {order_number} of account {account_id} not found")
    where = (orders.c.order_number == order_number, orders.c.account_id == account_id, *_visible_to(caller))
    for _ in range(5):
        event_id = await conn.scalar(
            select(orders.c.created_event_id).where(*where, orders.c.status == OrderStatus.NEW)
        )
        if event_id is None:  # not NEW (it never becomes NEW again), or no such order
            row = (await conn.execute(select(orders).where(*where).with_for_update())).first()
            if row is None:
                raise NotFound(f"order {order_number} of account {account_id} not found")
            return row
        # A savepoint, so that if a concurrent PUT replaced the event meanwhile we can let go of
        # both locks (rolling back to it releases them) and take them again in the right order.
        savepoint = await conn.begin_nested()
        await conn.execute(select(outbox.c.id).where(outbox.c.event_id == event_id).with_for_update())
        row = (await conn.execute(select(orders).where(*where).with_for_update())).first()
        if row is None or row.status != OrderStatus.NEW or row.created_event_id == event_id:
            await savepoint.commit()
            if row is None:
                raise NotFound(f"order {order_number} of account {account_id} not found")
            return row
        await savepoint.rollback()
    raise Conflict("the order is being changed by another request; try again")


async def _record(
    conn: AsyncConnection,
    topic: str,
    event_id: UUID,
    event_type: OrderEventType,
    account_id: UUID,
    order_number: str,
    amount: Decimal,
    *,
    placed_by: str | None,
    placed_by_admin: bool,
) -> None:
    event = OrderEvent(
        event_id=event_id,
        event_type=event_type,
        account_id=account_id,
        order_number=order_number,
        amount=amount,
        occurred_at=datetime.now(UTC),
        placed_by=placed_by,
        placed_by_admin=placed_by_admin,
    )
    await record(conn, outbox, [outbox_row(event_id, topic, str(account_id), event.to_json())])


def _fingerprint(account_id: UUID, amount: Decimal, caller: Caller) -> str:
    request = f"{account_id}|{amount:.2f}"
    if caller.subject is not None:  # with auth off the fingerprint stays what it always was
        request += f"|{caller.subject}"
    return hashlib.sha256(request.encode()).hexdigest()


# -- Kafka -------------------------------------------------------------------------------------


async def apply_payment_result(conn: AsyncConnection, event: PaymentEvent) -> None:
    """seed: PaymentEventListener. Each payment event moves its order once; a redelivery is
    dropped by the inbox's primary key, a result that does not fit the order's status is a
    logged no-op. (The consumer has already refused an event whose order number names another
    account than its `accountId`.)"""
    first_time = await conn.scalar(
        pg_insert(processed_events)
        .values(event_id=event.event_id)
        .on_conflict_do_nothing()
        .returning(processed_events.c.event_id)
    )
    if first_time is None:
        return
    row = (
        await conn.execute(
            select(orders.c.id, orders.c.status, orders.c.owner_sub)
            .where(orders.c.order_number == event.order_number)
            .with_for_update()
        )
    ).first()
    if row is None:
        log.warning("payment event %s for unknown order %s ignored", event.event_id, event.order_number)
        return
    current = OrderStatus(row.status)
    new_status = domain.payment_result(current, event.payment_event_type)
    if new_status is None:
        log.info(
            "payment event %s (%s) does not apply to order %s in status %s; ignored",
            event.event_id, event.payment_event_type, event.order_number, current,
        )  # fmt: skip
        return
    # Billing, which knows the accounts, says whose the order is now (issue 9): the account
    # owner's when it was allowed (an admin's order on bob's account becomes bob's).
    owner = event.owner_sub if event.owner_sub is not None else row.owner_sub
    await conn.execute(
        update(orders)
        .where(orders.c.id == row.id)
        .values(status=new_status.value, owner_sub=owner, updated_at=func.now())
    )
    _count_transition(conn, current, new_status)


async def park_payment_result(conn: AsyncConnection, event: PaymentEvent, reason: str) -> bool:
    """The consumer's `park`, for a payment event that `apply_payment_result` failed on, on its own
    (a constraint, a bug): its inbox row says PARKED, with the error, so a redelivery is dropped
    like any processed event. False when it was already in the inbox.

    Billing's decision stands (the money moved or not, and the notification service told the user
    so), so the order is then given the status that decision names, that alone in a savepoint of
    its own: what failed may have been the rest of the work. If even that fails (the order itself
    refuses any change), the order keeps its status, and the parked row and the log say why."""
    first_time = await conn.scalar(
        pg_insert(processed_events)
        .values(event_id=event.event_id, status="PARKED", error=reason)
        .on_conflict_do_nothing()
        .returning(processed_events.c.event_id)
    )
    if first_time is None:
        return False
    try:
        async with savepoint(conn):
            row = (
                await conn.execute(
                    select(orders.c.id, orders.c.status)
                    .where(orders.c.order_number == event.order_number)
                    .with_for_update()
                )
            ).first()
            current = None if row is None else OrderStatus(row.status)
            new_status = None if current is None else domain.payment_result(current, event.payment_event_type)
            if row is not None and current is not None and new_status is not None:
                await conn.execute(
                    update(orders).where(orders.c.id == row.id).values(status=new_status.value, updated_at=func.now())
                )
                _count_transition(conn, current, new_status)
    except Exception as error:
        if is_transient(error):
            raise
        log.error("order %s keeps its status: its parked result %s could not be applied (%r)",
                  event.order_number, event.event_id, error)  # fmt: skip
    return True


async def mark_attempted(conn: AsyncConnection, claimed: Sequence[Row[Any]]) -> None:
    """The relay's `on_attempt`: in the transaction that records its attempt, before it sends,
    the orders whose CREATED it claimed move NEW → SENT (they may be charged from now on)."""
    sent = await conn.execute(
        update(orders)
        .where(orders.c.created_event_id.in_([row.event_id for row in claimed]), orders.c.status == OrderStatus.NEW)
        .values(status=OrderStatus.SENT.value, updated_at=func.now())
    )
    _count_transition(conn, OrderStatus.NEW, OrderStatus.SENT, sent.rowcount)
