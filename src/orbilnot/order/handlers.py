"""Order's use cases. Each takes a connection inside a transaction that its caller owns (a route's
`engine.begin()`, the consumer's batch, the relay's step), or one in autocommit mode for a use case
that is a single statement (`place_order`), and returns plain values."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hashlib
import logging
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from prometheus_client import Counter
from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    Table,
    Text,
    Uuid,
    any_,
    bindparam,
    delete,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orbilnot.model import OrderEvent, OrderEventType, PaymentEvent, order_number_of, parse_order_number
from orbilnot.order import domain
from orbilnot.order.domain import OrderStatus, Withdrawal
from orbilnot.order.tables import orders, outbox, processed_events
from orbilnot.shared.auth import Caller
from orbilnot.shared.db import (
    DirectStatement,
    after_commit,
    is_connection_problem,
    is_transient,
    savepoint,
    sqlstate_of,
)
from orbilnot.shared.errors import Conflict, NotFound
from orbilnot.shared.outbox import outbox_row, record
from orbilnot.shared.pagination import DEFAULT_LIMIT, Page, account_list_key, account_list_turn

log = logging.getLogger(__name__)

TRANSITIONS = Counter(
    "orbilnot_order_transitions_total",
    "Orders that changed status, counted once their transaction committed",
    ["from_status", "to_status"],
)

ORDERS_LIST = "order_service.orders"
"""The name under which writers of one account's orders take turns (`account_list_turn`)."""


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
    db: AsyncEngine | AsyncConnection,
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

    The order and its event are written by one statement, atomic on its own: given the engine
    (the route), it runs in autocommit mode on a pooled connection of its own, by asyncpg
    directly (`DirectStatement`), together with the orders placed at the same moment
    (`_Placements`); given a connection, alone, in the caller's transaction.
    """
    order_id = uuid.uuid4()
    event_id = uuid.uuid4()
    # The caller is part of the request: another subject's key never returns this order's id.
    fingerprint = _fingerprint(account_id, amount, caller) if idempotency_key else None
    order_number = order_number_of(account_id, order_id)
    order = {
        "id": order_id,
        "account_id": account_id,
        "order_number": order_number,
        "amount": amount,
        "status": OrderStatus.NEW.value,
        "created_event_id": event_id,
        "idempotency_key": idempotency_key,
        "request_fingerprint": fingerprint,
        "owner_sub": caller.subject,
        "placed_by_admin": caller.is_admin,
    }
    created = _event_row(
        topic, event_id, OrderEventType.CREATED, account_id, order_number, amount,
        placed_by=caller.subject, placed_by_admin=caller.is_admin,
    )  # fmt: skip
    params: dict[str, Any] = {"turn": account_list_key(ORDERS_LIST, account_id)}
    params.update({f"order_{name}": value for name, value in order.items()})
    params.update({f"event_{name}": value for name, value in created.items()})
    if isinstance(db, AsyncConnection):
        inserted = await _PLACE_ORDER.scalar(db, params) is not None
    else:
        inserted = await _placements(db).place(params)
    if inserted:
        return order_id
    # The key was used: its order is committed (the insert waited for it, or it came earlier).
    first_order = select(orders.c.id, orders.c.request_fingerprint).where(
        orders.c.account_id == account_id, orders.c.idempotency_key == idempotency_key
    )
    if isinstance(db, AsyncConnection):
        first = (await db.execute(first_order)).one()
    else:
        async with db.connect() as conn:
            first = (await conn.execute(first_order)).one()
    if first.request_fingerprint != fingerprint:
        raise Conflict("this Idempotency-Key was used with a different request")
    return UUID(str(first.id))


_ORDER_COLUMNS = [
    "id", "account_id", "order_number", "amount", "status", "created_event_id",
    "idempotency_key", "request_fingerprint", "owner_sub", "placed_by_admin",
]  # fmt: skip
_EVENT_COLUMNS = list(outbox_row(uuid.UUID(int=0), "", "", b""))  # whatever an outbox row holds


def _place_order_statement() -> Select[tuple[UUID]]:
    """ONE statement, atomic on its own, so the route runs it without BEGIN and COMMIT (one round
    trip, where a transaction of lock, order and event took five; and the account's turn is held
    only while PostgreSQL runs it, never across round trips):

    1. take the account's turn (a MATERIALIZED CTE, read first: the order draws its `seq` after);
    2. insert the order, or nothing if the account already used the idempotency key;
    3. only if the order was inserted, its CREATED event into the outbox.

    Built once with named parameters (`turn`, `order_<column>`, `event_<column>`): building it per
    request cost a fifth of the order service's CPU.
    """

    def parameters(table: Table, prefix: str, names: list[str]) -> list[ColumnElement[Any]]:
        return [bindparam(f"{prefix}_{name}", type_=table.c[name].type) for name in names]

    order_columns, event_columns = _ORDER_COLUMNS, _EVENT_COLUMNS
    turn = select(account_list_turn(bindparam("turn", type_=Text))).cte("account_turn").prefix_with("MATERIALIZED")
    placed = (
        pg_insert(orders)
        .from_select(order_columns, select(*parameters(orders, "order", order_columns)).select_from(turn))
        .on_conflict_do_nothing(
            index_elements=[orders.c.account_id, orders.c.idempotency_key],
            index_where=orders.c.idempotency_key.is_not(None),
        )
        .returning(orders.c.id)
        .cte("placed")
    )
    event = insert(outbox).from_select(
        event_columns, select(*parameters(outbox, "event", event_columns)).select_from(placed)
    )
    return select(placed.c.id).add_cte(event.cte("created_event"))


_PLACE_ORDER = DirectStatement(_place_order_statement())


def _place_orders_statement() -> Select[tuple[UUID]]:
    """`_place_order_statement` for several orders at once (`_Placements`), the orders of any
    accounts, each parameter an array with one element per order (`shared/unnest.py`'s reasoning):

    1. take the turns of all their accounts, in the order of the sorted keys (`turns`), so two
       such statements that share accounts never deadlock;
    2. insert the orders in the order given (so one account's draw their `seq` in that order),
       skipping those whose account already used the idempotency key;
    3. insert the CREATED events of the orders inserted, in the same order.

    Answers the ids of the orders inserted.
    """
    keys = func.unnest(bindparam("turns", type_=ARRAY(Text))).table_valued("key").render_derived()
    turns = (
        select(func.count(account_list_turn(keys.c.key)).label("taken"))
        .select_from(keys)
        .cte("account_turns")
        .prefix_with("MATERIALIZED")
    )
    names = [f"order_{name}" for name in _ORDER_COLUMNS] + [f"event_{name}" for name in _EVENT_COLUMNS]
    types = [orders.c[name].type for name in _ORDER_COLUMNS] + [outbox.c[name].type for name in _EVENT_COLUMNS]
    batch = (
        func.unnest(*(bindparam(name, type_=ARRAY(type_)) for name, type_ in zip(names, types, strict=True)))
        .table_valued(*names, with_ordinality="ordinality")
        .render_derived()
    )
    placed = (
        pg_insert(orders)
        .from_select(
            _ORDER_COLUMNS,
            select(*(batch.c[f"order_{name}"] for name in _ORDER_COLUMNS))
            .select_from(batch.join(turns, true()))
            .order_by(batch.c.ordinality),
        )
        .on_conflict_do_nothing(
            index_elements=[orders.c.account_id, orders.c.idempotency_key],
            index_where=orders.c.idempotency_key.is_not(None),
        )
        .returning(orders.c.id)
        .cte("placed")
    )
    events = insert(outbox).from_select(
        _EVENT_COLUMNS,
        select(*(batch.c[f"event_{name}"] for name in _EVENT_COLUMNS))
        .select_from(batch.join(placed, placed.c.id == batch.c.order_id))
        .order_by(batch.c.ordinality),
    )
    return select(placed.c.id).add_cte(events.cte("created_events"))


_PLACE_ORDERS = DirectStatement(_place_orders_statement())
_BATCH_PARAMETERS = [f"order_{name}" for name in _ORDER_COLUMNS] + [f"event_{name}" for name in _EVENT_COLUMNS]


class _Placements:
    """Group commit of the orders placed at the same moment in this process.

    Every order placed while the event loop runs one round of ready work waits for the next
    round, where they are placed together by ONE statement (`_PLACE_ORDERS`): one round trip,
    one commit, one write and one read on the socket for all of them, where each order took
    its own (the socket writes to PostgreSQL were a quarter of the order service's CPU). An
    order placed alone runs `_PLACE_ORDER` as before. A group holds at most `MAX_GROUP` orders:
    each account's turn is an advisory lock, and PostgreSQL keeps those in a table of fixed
    size shared by every session of the cluster.

    Each order's outcome is its own. When PostgreSQL refuses the group's statement (it answered
    with an error, so nothing of it committed), every order of it is placed again alone, so an
    order that fails on its own answers with its own error, as without grouping. When the answer
    never came (the connection broke, a timeout), the group may have committed as a whole: what
    committed is read back and answered, and if nothing did, each order gets the error, as a
    single order whose answer was lost does; none is placed twice. The idempotency key holds
    within a group too (the statement's ON CONFLICT skips a second row with the same account and
    key), and so does each account's turn: taken for all the group's accounts, in sorted order,
    before any order draws its number, held until the group commits.

    A group's statement runs in a context of its own (no request's trace or request id: it is
    all of theirs), an order placed alone, or again alone, in its request's.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._waiting: list[_Placement] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def place(self, params: dict[str, Any]) -> bool:
        """Place the order of `params` (`_PLACE_ORDER`'s); False if its idempotency key was used."""
        loop = asyncio.get_running_loop()
        placed: asyncio.Future[bool] = loop.create_future()
        if not self._waiting or len(self._waiting) >= MAX_GROUP:
            # A new group, flushed by its own task, first run in the loop's next round: the orders
            # placed in this round join it meanwhile, and a caller cancelled while waiting never
            # cancels the others'.
            self._waiting = []
            task = loop.create_task(self._flush(self._waiting))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        self._waiting.append(_Placement(params, placed, contextvars.copy_context()))
        return await placed

    async def _flush(self, group: list[_Placement]) -> None:
        if self._waiting is group:
            self._waiting = []  # closed: later orders form the next group
        try:
            if len(group) == 1:
                await self._alone(group[0])
                return
            try:
                inserted = await asyncio.create_task(self._place_group(group), context=contextvars.Context())
            except Exception as error:
                await self._after_failed_group(group, error)
                return
            for one in group:
                if not one.placed.done():
                    one.placed.set_result(one.params["order_id"] in inserted)
        finally:
            for one in group:
                if not one.placed.done():  # the flush itself was cancelled (shutdown): so are they
                    one.placed.cancel()

    async def _place_group(self, group: list[_Placement]) -> set[UUID]:
        turns = sorted({one.params["turn"] for one in group})
        arrays: dict[str, Any] = {name: [one.params[name] for one in group] for name in _BATCH_PARAMETERS}
        return set(await _PLACE_ORDERS.column(self._engine, {"turns": turns, **arrays}))

    async def _after_failed_group(self, group: list[_Placement], error: Exception) -> None:
        refused_by_the_database = sqlstate_of(error) is not None and not is_connection_problem(error)
        if refused_by_the_database:
            log.debug("a group of %d orders failed; placing each alone", len(group), exc_info=True)
            alone = [asyncio.create_task(self._alone(one), context=one.context) for one in group]
            await asyncio.gather(*alone)
            return
        log.warning("a group of %d orders got no answer (%r); reading back what committed", len(group), error)
        try:
            committed = await asyncio.create_task(self._committed(group), context=contextvars.Context())
        except Exception:
            committed = set()
        if committed:  # the group committed as a whole: its answers are what it would have said
            for one in group:
                if not one.placed.done():
                    one.placed.set_result(one.params["order_id"] in committed)
            return
        for one in group:
            if not one.placed.done():
                one.placed.set_exception(error)

    async def _committed(self, group: list[_Placement]) -> set[UUID]:
        async with self._engine.connect() as conn:
            found = await conn.scalars(_ORDERS_PRESENT, {"ids": [one.params["order_id"] for one in group]})
            return set(found)

    async def _alone(self, one: _Placement) -> None:
        try:
            inserted = await _PLACE_ORDER.scalar(self._engine, one.params) is not None
        except Exception as error:
            if not one.placed.done():
                one.placed.set_exception(error)
        else:
            if not one.placed.done():
                one.placed.set_result(inserted)


MAX_GROUP = 256
"""The most orders one group statement places (and so account turns it holds at once)."""


@dataclass(frozen=True, slots=True)
class _Placement:
    params: dict[str, Any]
    placed: asyncio.Future[bool]
    context: contextvars.Context  # its request's: trace, request id


_ORDERS_PRESENT = select(orders.c.id).where(orders.c.id == any_(bindparam("ids", type_=ARRAY(Uuid))))


_PLACEMENTS: weakref.WeakKeyDictionary[AsyncEngine, _Placements] = weakref.WeakKeyDictionary()


def _placements(engine: AsyncEngine) -> _Placements:
    placements = _PLACEMENTS.get(engine)
    if placements is None:
        placements = _PLACEMENTS[engine] = _Placements(engine)
    return placements


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
    event = _event_row(
        topic, event_id, OrderEventType.CREATED, account_id, order_number, amount,
        placed_by=row.owner_sub, placed_by_admin=row.placed_by_admin,
    )  # fmt: skip
    await record(conn, outbox, [event])
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
    event = _event_row(
        topic, uuid.uuid4(), OrderEventType.CANCELLED, account_id, order_number, row.amount,
        placed_by=row.owner_sub, placed_by_admin=row.placed_by_admin,
    )  # fmt: skip
    await record(conn, outbox, [event])
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


def _event_row(
    topic: str,
    event_id: UUID,
    event_type: OrderEventType,
    account_id: UUID,
    order_number: str,
    amount: Decimal,
    *,
    placed_by: str | None,
    placed_by_admin: bool,
) -> dict[str, Any]:
    """The outbox row of an order event (shared/outbox.py)."""
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
    return outbox_row(event_id, topic, str(account_id), event.to_json())


def _fingerprint(account_id: UUID, amount: Decimal, caller: Caller) -> str:
    request = f"{account_id}|{amount:.2f}"
    if caller.subject is not None:  # with auth off the fingerprint stays what it always was
        request += f"|{caller.subject}"
    return hashlib.sha256(request.encode()).hexdigest()


# -- Kafka -------------------------------------------------------------------------------------


async def apply_payment_results(conn: AsyncConnection, events: Sequence[PaymentEvent]) -> None:
    """seed: PaymentEventListener. Each payment event moves its order once; a redelivery is
    dropped by the inbox's primary key, a result that does not fit the order's status is a
    logged no-op. (The consumer has already refused an event whose order number names another
    account than its `accountId`.)

    A batch in three statements: the events into the inbox, the orders of the new ones locked,
    the orders' new statuses. Several events of one order apply one after the other, in order."""
    first_time = set(await conn.scalars(_RECORD_IN_INBOX, {"event_ids": [event.event_id for event in events]}))
    fresh: list[PaymentEvent] = []
    for event in events:
        if event.event_id in first_time:
            first_time.discard(event.event_id)  # a copy later in the same batch is a redelivery
            fresh.append(event)
    if not fresh:
        return
    numbers = sorted({event.order_number for event in fresh})
    locked = (await conn.execute(_LOCK_ORDERS, {"numbers": numbers})).all()
    ids = {row.order_number: row.id for row in locked}
    found = {row.order_number: (OrderStatus(row.status), row.owner_sub) for row in locked}
    moved: set[str] = set()
    transitions: collections.Counter[tuple[OrderStatus, OrderStatus]] = collections.Counter()
    for event in fresh:
        if event.order_number not in found:
            log.warning("payment event %s for unknown order %s ignored", event.event_id, event.order_number)
            continue
        current, owner = found[event.order_number]
        new_status = domain.payment_result(current, event.payment_event_type)
        if new_status is None:
            log.info(
                "payment event %s (%s) does not apply to order %s in status %s; ignored",
                event.event_id, event.payment_event_type, event.order_number, current,
            )  # fmt: skip
            continue
        # Billing, which knows the accounts, says whose the order is now (issue 9): the account
        # owner's when it was allowed (an admin's order on bob's account becomes bob's).
        found[event.order_number] = (new_status, event.owner_sub if event.owner_sub is not None else owner)
        moved.add(event.order_number)
        transitions[current, new_status] += 1
    if not moved:
        return
    changed = sorted(moved)
    await conn.execute(
        _MOVE_ORDERS,
        {
            "ids": [ids[number] for number in changed],
            "statuses": [found[number][0].value for number in changed],
            "owners": [found[number][1] for number in changed],
        },
    )
    for (before, after), count in transitions.items():
        _count_transition(conn, before, after, count)


# The three statements of `apply_payment_results`, built once (as `_PLACE_ORDER`), each taking a
# whole batch as arrays (`shared/unnest.py`'s reasoning: one statement text, whatever the batch size).
_event_ids = func.unnest(bindparam("event_ids", type_=ARRAY(Uuid))).table_valued("event_id").render_derived()
_RECORD_IN_INBOX = (
    pg_insert(processed_events)
    .from_select(["event_id"], select(_event_ids.c.event_id))
    .on_conflict_do_nothing()
    .returning(processed_events.c.event_id)
)
# Locked in id order, so that two batches that meet on some orders never deadlock.
_LOCK_ORDERS = (
    select(orders.c.id, orders.c.order_number, orders.c.status, orders.c.owner_sub)
    .where(orders.c.order_number == any_(bindparam("numbers", type_=ARRAY(Text))))
    .order_by(orders.c.id)
    .with_for_update()
)
_changes = (
    func.unnest(
        bindparam("ids", type_=ARRAY(Uuid)),
        bindparam("statuses", type_=ARRAY(Text)),
        bindparam("owners", type_=ARRAY(Text)),
    )
    .table_valued("id", "status", "owner_sub")
    .render_derived()
)
_MOVE_ORDERS = (
    update(orders)
    .where(orders.c.id == _changes.c.id)
    .values(status=_changes.c.status, owner_sub=_changes.c.owner_sub, updated_at=func.now())
)


async def park_payment_result(conn: AsyncConnection, event: PaymentEvent, reason: str) -> bool:
    """The consumer's `park`, for a payment event that `apply_payment_results` failed on, on its own
    (a constraint, a bug): its inbox row says PARKED, with the error, so a redelivery is dropped
    like any processed event. False when it was already in the inbox.

    Billing's decision stands (the money moved or not, and the notification service told the user
    so), so the order is then given the status (and owner) that decision names, that alone in a savepoint of
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
                # Whose it is now, as in `apply_payment_results` (issue 9): billing's word.
                owner = {} if event.owner_sub is None else {"owner_sub": event.owner_sub}
                await conn.execute(
                    update(orders)
                    .where(orders.c.id == row.id)
                    .values(status=new_status.value, updated_at=func.now(), **owner)
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
    sent = await conn.execute(_MARK_SENT, {"event_ids": [row.event_id for row in claimed]})
    _count_transition(conn, OrderStatus.NEW, OrderStatus.SENT, sent.rowcount)


# Built once, like the statements above.
_MARK_SENT = (
    update(orders)
    .where(
        orders.c.created_event_id == any_(bindparam("event_ids", type_=ARRAY(Uuid))),
        orders.c.status == OrderStatus.NEW.value,
    )
    .values(status=OrderStatus.SENT.value, updated_at=func.now())
)
