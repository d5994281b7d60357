"""Billing's use cases. Each takes a connection inside a transaction that its caller owns (a
route's `engine.begin()`, the consumer's batch, the processor's step) and returns plain values."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from prometheus_client import Counter, Histogram
from sqlalchemy import Row, Text, and_, any_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orbilnot.billing import domain
from orbilnot.billing.domain import AccountAction, LedgerKind, OrderEventStatus
from orbilnot.billing.tables import accounts, ledger, order_events, outbox
from orbilnot.model import OrderEvent, OrderEventType, PaymentEvent
from orbilnot.shared import tracing
from orbilnot.shared.auth import Caller
from orbilnot.shared.consumer import PARKED, consumed_trace_context
from orbilnot.shared.db import after_commit, is_transient
from orbilnot.shared.errors import NotFound
from orbilnot.shared.observability import FLOW_LATENCY_BUCKETS, ORDER_CREATED_AT_HEADER
from orbilnot.shared.outbox import outbox_row, record
from orbilnot.shared.pagination import DEFAULT_LIMIT, Page
from orbilnot.shared.retry import FailureTracker, in_transaction
from orbilnot.shared.unnest import arrays, insert_columns, unnest_columns

log = logging.getLogger(__name__)

# Counted once the processor's transaction commits (`shared.db.after_commit`): a batch rolled
# back and decided again is counted once, by the attempt that stuck.
DECISION_LATENCY = Histogram(
    "orbilnot_decision_latency_seconds",
    "Order created → payment decided: the CREATED event's occurredAt to its result's",
    ["outcome"],
    buckets=FLOW_LATENCY_BUCKETS,
)
REFUNDS = Counter("orbilnot_refunds_total", "Refunds written to the ledger")
REFUNDED_AMOUNT = Counter("orbilnot_refunded_amount_total", "Money given back by refunds, as the ledger wrote it")
# Created up front: every outcome has a series from the start, and no lookup per decision.
_DECISIONS_BY_STATUS = {
    OrderEventStatus.PAYMENT_CONFIRMED: DECISION_LATENCY.labels("confirmed"),
    OrderEventStatus.PAYMENT_DENIED: DECISION_LATENCY.labels("denied"),
    OrderEventStatus.PARKED: DECISION_LATENCY.labels("parked"),
}


# Statements of every batch, built once (`= ANY($1)`: one text whatever the batch's size; an
# `IN ($1, …, $n)` is a statement of its own, prepared again, for every size).
_LOCK_ACCOUNTS = (
    select(accounts.c.id, accounts.c.balance, accounts.c.refundable, accounts.c.owner_sub)
    .where(accounts.c.id == any_(bindparam("ids", type_=ARRAY(accounts.c.id.type))))
    .order_by(accounts.c.id)
    .with_for_update()
)
_KNOWN_EVENTS = select(order_events.c.event_id).where(
    order_events.c.event_id == any_(bindparam("ids", type_=ARRAY(order_events.c.event_id.type)))
)
_DECIDED_COLUMNS = (
    "event_id",
    "event_type",
    "account_id",
    "order_number",
    "amount",
    "occurred_at",
    "placed_by",
    "placed_by_admin",
    "trace_context",
    "status",
    "description",
    "result_event_id",
)
_STORE_DECIDED = (
    insert_columns(order_events, _DECIDED_COLUMNS, processed_at=func.now())
    .on_conflict_do_nothing(index_elements=[order_events.c.event_id])
    .returning(order_events.c.event_id)
)
# The fallback path's (`receive_order_events`, then the processor's code): stored RECEIVED, then decided.
_RECEIVED_COLUMNS = tuple(name for name in _DECIDED_COLUMNS if name not in ("description", "result_event_id"))
_STORE_RECEIVED = insert_columns(order_events, _RECEIVED_COLUMNS).on_conflict_do_nothing(
    index_elements=[order_events.c.event_id]
)
_OUTCOME_COLUMNS = ("event_id", "status", "description", "result_event_id")
_outcomes = unnest_columns(order_events, _OUTCOME_COLUMNS)
_SET_DECIDED = (
    update(order_events)
    .where(order_events.c.event_id == _outcomes.c.event_id)
    .values(
        status=_outcomes.c.status,
        description=_outcomes.c.description,
        result_event_id=_outcomes.c.result_event_id,
        processed_at=func.now(),
    )
)
_LEDGER_COLUMNS = ("account_id", "kind", "amount", "balance_after", "order_number")
_WRITE_LEDGER = insert_columns(ledger, _LEDGER_COLUMNS)
_balance_changes = unnest_columns(accounts, ("id", "balance", "refundable"))
_CHANGE_BALANCES = (
    update(accounts)
    .where(accounts.c.id == _balance_changes.c.id)
    .values(balance=_balance_changes.c.balance, refundable=_balance_changes.c.refundable, updated_at=func.now())
)


@dataclass(frozen=True, slots=True)
class Account:
    id: UUID
    balance: Decimal


@dataclass(frozen=True, slots=True)
class Decided:
    """What deciding one order event did, for the metrics (counted once it is committed)."""

    event_type: OrderEventType
    status: OrderEventStatus
    waited_s: float  # the event's occurredAt → its result's
    refunded: Decimal = Decimal(0)  # what the ledger's REFUND entry gave back


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    kind: str
    amount: Decimal
    balance_after: Decimal
    order_number: str | None
    created_at: datetime


# -- accounts (HTTP) ---------------------------------------------------------------------------


async def open_account(conn: AsyncConnection, opening_balance: Decimal, caller: Caller = Caller.OPEN) -> UUID:
    account_id = uuid.uuid4()
    balance = domain.deposit(Decimal(0), opening_balance)
    await conn.execute(insert(accounts).values(id=account_id, balance=balance, owner_sub=caller.subject))
    await _write_ledger(conn, [_entry(account_id, LedgerKind.OPENING, balance, balance, None)])
    return account_id


async def change_balance(
    conn: AsyncConnection, account_id: UUID, action: AccountAction, amount: Decimal, caller: Caller = Caller.OPEN
) -> Account:
    """Deposit or withdraw. The row lock serialises concurrent changes: none is lost."""
    row = (
        await conn.execute(
            select(accounts.c.balance, accounts.c.refundable, accounts.c.owner_sub)
            .where(accounts.c.id == account_id)
            .with_for_update()
        )
    ).first()
    if row is None or not caller.may_touch(row.owner_sub):
        raise NotFound(f"account {account_id} not found")
    balance: Decimal = row.balance
    if action is AccountAction.DEPOSIT_MONEY:
        new_balance, kind = domain.deposit(balance, amount, row.refundable), LedgerKind.DEPOSIT
    else:
        new_balance, kind = domain.withdraw(balance, amount), LedgerKind.WITHDRAWAL
    await conn.execute(
        update(accounts).where(accounts.c.id == account_id).values(balance=new_balance, updated_at=func.now())
    )
    await _write_ledger(conn, [_entry(account_id, kind, new_balance - balance, new_balance, None)])
    return Account(account_id, new_balance)


async def get_account(conn: AsyncConnection, account_id: UUID, caller: Caller = Caller.OPEN) -> Account:
    """The account, if `caller` may see it; another's account is "not found", like a missing one."""
    row = (
        await conn.execute(select(accounts.c.balance, accounts.c.owner_sub).where(accounts.c.id == account_id))
    ).first()
    if row is None or not caller.may_touch(row.owner_sub):
        raise NotFound(f"account {account_id} not found")
    return Account(account_id, row.balance)


async def list_ledger(
    conn: AsyncConnection,
    account_id: UUID,
    caller: Caller = Caller.OPEN,
    *,
    limit: int = DEFAULT_LIMIT,
    after: int | None = None,
) -> Page[LedgerEntry]:
    """The account's ledger after entry `after`, oldest first, on the (account_id, id) index.

    Entries are written only under the account's row lock (or with the account itself), so their
    ids follow commit order within the account and keyset pages skip nothing."""
    await get_account(conn, account_id, caller)
    query = select(
        ledger.c.id, ledger.c.kind, ledger.c.amount, ledger.c.balance_after, ledger.c.order_number, ledger.c.created_at
    ).where(ledger.c.account_id == account_id)
    if after is not None:
        query = query.where(ledger.c.id > after)
    rows = await conn.execute(query.order_by(ledger.c.id).limit(limit + 1))
    return Page.of([(entry_id, LedgerEntry(*rest)) for entry_id, *rest in rows], limit)


# -- order events (Kafka) ----------------------------------------------------------------------


async def receive_order_events(conn: AsyncConnection, events: Sequence[OrderEvent]) -> None:
    """Store order events in the inbox as RECEIVED, each once: a redelivery hits the primary key.
    One statement for the batch; the rows are numbered (`seq`, the processor's order) in order."""
    rows = [
        {
            "event_id": event.event_id,
            "event_type": event.event_type.value,
            "account_id": event.account_id,
            "order_number": event.order_number,
            "amount": event.amount,
            "occurred_at": event.occurred_at,
            "placed_by": event.placed_by,
            "placed_by_admin": event.placed_by_admin,
            "status": OrderEventStatus.RECEIVED.value,
            # With tracing on, the context of this message's consume span, so the decision,
            # made later by the processor, continues the order's trace.
            "trace_context": consumed_trace_context(event),
        }
        for event in events
    ]
    await conn.execute(_STORE_RECEIVED, arrays(rows, _RECEIVED_COLUMNS))


@dataclass(frozen=True, slots=True)
class _Consumed:
    """An order event as the consumer hands it over, with what `_decide` reads of an inbox row."""

    event_id: UUID
    event_type: str
    account_id: UUID
    order_number: str
    amount: Decimal
    occurred_at: datetime
    placed_by: str | None
    placed_by_admin: bool
    trace_context: dict[str, str] | None


async def receive_and_decide_order_events(conn: AsyncConnection, events: Sequence[OrderEvent], *, topic: str) -> None:
    """The consumer's handler: decide the batch and store it in the inbox already decided, with
    its results, in the consumer's transaction.

    The same decision as the processor's, without its round trip: no RECEIVED row written and
    then updated (a second version of every row), no claim, no second transaction. A copy of an
    event already in the inbox is left out (looked up once the accounts are locked), and the
    inbox's primary key still has the last word: when it drops a row anyway (a copy stored
    meanwhile by a transaction that did not lock the same account), or deciding fails for any
    reason that is not transient, the savepoint is rolled back and the batch goes the long way,
    `receive_order_events` then `process_received_events`, which decides one by one and parks
    what fails on its own."""
    unique: dict[UUID, _Consumed] = {}
    for event in events:
        unique.setdefault(
            event.event_id,
            _Consumed(
                event.event_id,
                event.event_type.value,
                event.account_id,
                event.order_number,
                event.amount,
                event.occurred_at,
                event.placed_by,
                event.placed_by_admin,
                consumed_trace_context(event),
            ),
        )
    try:
        async with conn.begin_nested():
            decided = await _decide(conn, list(unique.values()), topic, stored=False)
        _count_once_committed(conn, decided)
        return
    except Exception as error:
        if is_transient(error):
            raise
        log.warning("deciding a batch of %d order events as it came failed (%r); the long way", len(events), error)
    # The accounts first, as the fast path takes them, and outside any savepoint so that they stay
    # held: inserting the inbox rows before them lets another replica's fast path on a copy of an
    # event (after a rebalance) hold an account and wait for our row while we wait for its account.
    await conn.execute(_LOCK_ACCOUNTS, {"ids": sorted({event.account_id for event in events})})
    await receive_order_events(conn, events)
    while await process_received_events(conn, len(unique), topic=topic) == len(unique):
        pass


class _InboxDroppedARow(Exception):
    """The inbox refused a decided row (its event was stored meanwhile): decide the long way."""


async def park_order_event(conn: AsyncConnection, event: OrderEvent, reason: str, *, topic: str) -> bool:
    """The consumer's `park`, for an order event that could not even be stored as RECEIVED, on its
    own: it is stored PARKED instead, with the error, and answered at once as the processor answers
    a row it parks (PAYMENT_DENIED, nothing moved), so its order still ends and the user is told.
    False when the event was in the inbox already."""
    result_id = uuid.uuid4()
    parked = await conn.scalar(
        pg_insert(order_events)
        .values(
            event_id=event.event_id,
            event_type=event.event_type.value,
            account_id=event.account_id,
            order_number=event.order_number,
            amount=event.amount,
            occurred_at=event.occurred_at,
            placed_by=event.placed_by,
            placed_by_admin=event.placed_by_admin,
            status=OrderEventStatus.PARKED.value,
            description=reason,
            result_event_id=result_id,
            processed_at=func.now(),
        )
        .on_conflict_do_nothing(index_elements=[order_events.c.event_id])
        .returning(order_events.c.event_id)
    )
    if parked is None:
        return False
    description = domain.parked_description(event.event_type)
    parked_at = datetime.now(UTC)
    answer = _result(
        topic, event, result_id, OrderEventStatus.PARKED, event.amount, description, event.placed_by, parked_at
    )
    await record(conn, outbox, [answer])
    # Inside the consumer's `savepoint()`, which drops this if it rolls back.
    _count_once_committed(
        conn, [Decided(event.event_type, OrderEventStatus.PARKED, _seconds_between(event.occurred_at, parked_at))]
    )
    return True


async def process_received_events(conn: AsyncConnection, limit: int, *, topic: str) -> int:
    """Decide up to `limit` RECEIVED events: debit, deny or refund. Returns how many.

    Rows are claimed with SKIP LOCKED, so replicas share the work; the accounts they touch are
    then locked in id order, so two processors never deadlock on each other. What each decision
    changes (balance, ledger, the row's status, its result in the outbox) commits together.

    The batch is decided in one savepoint (a few statements for all of it). When that fails for
    a reason that is not transient, the rows are decided again one by one, each in a savepoint of
    its own, and one that still fails is PARKED with its error and answered PAYMENT_DENIED: one
    bad event never holds back the others. Transient errors (the database away, a serialization
    failure, a deadlock) propagate: the caller runs the whole transaction again.
    """
    claimed = (
        await conn.execute(
            select(order_events)
            .where(order_events.c.status == OrderEventStatus.RECEIVED.value)
            .order_by(order_events.c.seq)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not claimed:
        return 0
    try:
        async with conn.begin_nested():
            decided = await _decide(conn, claimed, topic)
        _count_once_committed(conn, decided)
    except Exception as batch_error:
        if is_transient(batch_error):
            raise
        if len(claimed) == 1:
            await _park(conn, claimed[0], batch_error, topic)
            return 1
        log.warning("a batch of %d order events failed (%r); deciding them one by one", len(claimed), batch_error)
        # Rolling back the savepoint let go of the accounts' locks: take them all again, in id
        # order and outside the items' savepoints, so that processors never deadlock.
        await conn.execute(
            select(accounts.c.id)
            .where(accounts.c.id.in_(sorted({row.account_id for row in claimed})))
            .order_by(accounts.c.id)
            .with_for_update()
        )
        for row in claimed:
            try:
                async with conn.begin_nested():
                    decided = await _decide(conn, [row], topic)
                _count_once_committed(conn, decided)
            except Exception as error:
                if is_transient(error):
                    raise
                await _park(conn, row, error, topic)
    return len(claimed)


async def process_batch(engine: AsyncEngine, limit: int, *, topic: str, tracker: FailureTracker | None = None) -> int:
    """The processor's step: one batch in one transaction, run again after a transient error."""
    return await in_transaction(
        engine,
        lambda conn: process_received_events(conn, limit, topic=topic),
        what="billing processor",
        tracker=tracker,
    )


def _count_once_committed(conn: AsyncConnection, decided: list[Decided]) -> None:
    """Observe what a released savepoint decided, after the transaction commits. (Registered
    only once the savepoint is released: one rolled back must count nothing.)"""

    def count() -> None:
        for one in decided:
            if one.event_type is OrderEventType.CREATED:
                _DECISIONS_BY_STATUS[one.status].observe(one.waited_s)
            if one.refunded:
                REFUNDS.inc()
                REFUNDED_AMOUNT.inc(float(one.refunded))

    after_commit(conn, count)


async def _decide(
    conn: AsyncConnection, rows: Sequence[Row[Any] | _Consumed], topic: str, *, stored: bool = True
) -> list[Decided]:
    """Decide `rows` (their accounts locked here): ledger, balances, statuses and results.

    `stored`: the rows are RECEIVED rows of the inbox, updated to their outcome; else events
    just consumed, left out if the inbox has them already and inserted with their outcome."""
    decided_at = datetime.now(UTC)  # the results' occurredAt
    balances: dict[UUID, Decimal] = {}
    refundables: dict[UUID, Decimal] = {}
    owners: dict[UUID, str | None] = {}
    for account_id, balance, refundable, owner in await conn.execute(
        _LOCK_ACCOUNTS, {"ids": sorted({row.account_id for row in rows})}
    ):
        balances[account_id], refundables[account_id], owners[account_id] = balance, refundable, owner
    if not stored:
        # Asked with the accounts locked: another consumer deciding the same event (a partition
        # handed over mid-batch) has committed it by now, or waits behind us.
        known = set(await conn.scalars(_KNOWN_EVENTS, {"ids": [row.event_id for row in rows]}))
        rows = [row for row in rows if row.event_id not in known]
        if not rows:
            return []
    # What the ledger says was paid (and refunded) for these orders: the only amounts we trust.
    # Asked kind by kind, so that each half is a scan of its partial unique index; with
    # `kind IN (PAYMENT, REFUND)` neither index applies and every batch read the whole ledger
    # (2.5 ms a batch in `make bench`, and growing with the ledger).
    numbers = bindparam("numbers", sorted({row.order_number for row in rows}), type_=ARRAY(Text))
    paid: dict[str, Decimal] = {}
    refunded: set[str] = set()
    for order_number, kind, amount in await conn.execute(
        select(ledger.c.order_number, ledger.c.kind, ledger.c.amount).where(
            or_(
                and_(ledger.c.kind == LedgerKind.PAYMENT.value, ledger.c.order_number == any_(numbers)),
                and_(ledger.c.kind == LedgerKind.REFUND.value, ledger.c.order_number == any_(numbers)),
            )
        )
    ):
        if kind == LedgerKind.PAYMENT.value:
            paid[order_number] = -amount
        else:
            refunded.add(order_number)

    entries: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    decided: list[Decided] = []
    for row in rows:
        # With tracing on, the decision continues the trace its order event came in, and the
        # payment result recorded under it carries that on (shared/tracing.py).
        with tracing.span("billing decide", parent=row.trace_context, order_number=row.order_number):
            event_type = OrderEventType(row.event_type)
            exists = row.account_id in balances
            # An order on an account its placer may not use is decided as if the account did not
            # exist (issue 9). A refund needs no such check: it gives back only what the ledger
            # charged this order, to the account it was charged to.
            allowed = exists and (
                event_type is OrderEventType.CANCELLED
                or domain.may_order_on(owners[row.account_id], row.placed_by, row.placed_by_admin)
            )
            decision = domain.decide(
                event_type,
                account_id=row.account_id,
                amount=row.amount,
                balance=balances[row.account_id] if allowed else None,
                paid=paid.get(row.order_number),
                already_refunded=row.order_number in refunded,
            )
            given_back = decision.balance_change if decision.ledger_kind is LedgerKind.REFUND else Decimal(0)
            decided.append(
                Decided(event_type, decision.status, _seconds_between(row.occurred_at, decided_at), given_back)
            )
            if decision.ledger_kind is not None:
                balances[row.account_id] += decision.balance_change
                refundables[row.account_id] -= decision.balance_change
                if decision.ledger_kind is LedgerKind.PAYMENT:
                    paid[row.order_number] = -decision.balance_change
                else:
                    refunded.add(row.order_number)
                entries.append(
                    _entry(
                        row.account_id,
                        decision.ledger_kind,
                        decision.balance_change,
                        balances[row.account_id],
                        row.order_number,
                    )
                )
            result_id = uuid.uuid4()
            results.append(
                {
                    "event_id": row.event_id,
                    "status": decision.status.value,
                    "description": decision.description,
                    "result_event_id": result_id,
                }
            )
            # The outcome is the account owner's to see, or, if refused, only its placer's.
            owner_sub = owners[row.account_id] if allowed else row.placed_by
            status, amount, description = decision.status, decision.amount, decision.description
            events.append(_result(topic, row, result_id, status, amount, description, owner_sub, decided_at))

    if entries:
        await _write_ledger(conn, entries)
        changed = sorted({entry["account_id"] for entry in entries})
        await conn.execute(
            _CHANGE_BALANCES,
            {
                "rows_id": changed,
                "rows_balance": [balances[account_id] for account_id in changed],
                "rows_refundable": [refundables[account_id] for account_id in changed],
            },
        )
    if stored:
        await _set_decided(conn, results)
    else:
        await _store_decided(conn, rows, results)
    await record(conn, outbox, events)
    return decided


async def _park(conn: AsyncConnection, row: Row[Any], error: BaseException, topic: str) -> None:
    """Set one event aside with its error, and answer its order: PAYMENT_DENIED, nothing moved."""
    reason = f"{type(error).__name__}: {error}"[:2000]
    log.error("order event %s (%s, order %s) parked: %s", row.event_id, row.event_type, row.order_number, reason)
    # Counted once committed, as the consumers count theirs: a batch run again parks it again.
    after_commit(conn, PARKED.labels("billing").inc)
    result_id = uuid.uuid4()
    await _set_decided(
        conn,
        [
            {
                "event_id": row.event_id,
                "status": OrderEventStatus.PARKED.value,
                "description": reason,
                "result_event_id": result_id,
            }
        ],
    )
    event_type = OrderEventType(row.event_type)
    description = domain.parked_description(event_type)
    # Whose the outcome is was not decided (the failure may be the account's): only the placer's.
    parked_at = datetime.now(UTC)
    with tracing.span("billing park", parent=row.trace_context, order_number=row.order_number):
        await record(
            conn,
            outbox,
            [
                _result(
                    topic, row, result_id, OrderEventStatus.PARKED, row.amount, description, row.placed_by, parked_at
                )
            ],
        )
    # At the transaction's own level (no savepoint of ours is open here).
    _count_once_committed(
        conn, [Decided(event_type, OrderEventStatus.PARKED, _seconds_between(row.occurred_at, parked_at))]
    )


async def _store_decided(
    conn: AsyncConnection, rows: Sequence[Row[Any] | _Consumed], results: list[dict[str, Any]]
) -> None:
    """Insert consumed events into the inbox with their outcome, numbered (`seq`) in order."""
    stored = [
        {
            "event_id": row.event_id,
            "event_type": row.event_type,
            "account_id": row.account_id,
            "order_number": row.order_number,
            "amount": row.amount,
            "occurred_at": row.occurred_at,
            "placed_by": row.placed_by,
            "placed_by_admin": row.placed_by_admin,
            "trace_context": row.trace_context,
            **result,
        }
        for row, result in zip(rows, results, strict=True)
    ]
    inserted = await conn.scalars(_STORE_DECIDED, arrays(stored, _DECIDED_COLUMNS))
    if len(inserted.all()) != len(stored):
        raise _InboxDroppedARow


async def _set_decided(conn: AsyncConnection, results: list[dict[str, Any]]) -> None:
    await conn.execute(_SET_DECIDED, arrays(results, _OUTCOME_COLUMNS))


def _result(
    topic: str,
    row: Row[Any] | OrderEvent | _Consumed,
    result_id: UUID,
    status: OrderEventStatus,
    amount: Decimal,
    description: str | None,
    owner_sub: str | None,
    decided_at: datetime,
) -> dict[str, Any]:
    result = status.result_event
    assert result is not None, status  # only decided rows answer
    event = PaymentEvent(
        event_id=result_id,
        payment_event_type=result,
        account_id=row.account_id,
        order_number=row.order_number,
        amount=amount,
        description=description,
        occurred_at=decided_at,
        owner_sub=owner_sub,
    )
    # When the order was created travels beside the event, not in it (SPEC §4 fixes its fields):
    # the notification service measures order created → notification stored from it.
    created = row.event_type == OrderEventType.CREATED
    headers = {ORDER_CREATED_AT_HEADER: row.occurred_at.isoformat()} if created else None
    return outbox_row(result_id, topic, str(row.account_id), event.to_json(), headers)


# -- helpers -----------------------------------------------------------------------------------


def _seconds_between(start: datetime, end: datetime) -> float:
    # Never negative: the order's clock (another host) may run a little ahead of ours.
    return max(0.0, (end - start).total_seconds())


def _entry(
    account_id: UUID, kind: LedgerKind, amount: Decimal, balance_after: Decimal, order_number: str | None
) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "kind": kind.value,
        "amount": amount,
        "balance_after": balance_after,
        "order_number": order_number,
    }


async def _write_ledger(conn: AsyncConnection, entries: list[dict[str, Any]]) -> None:
    # In one statement, in order: entries of one account get ids in the order their balances follow.
    await conn.execute(_WRITE_LEDGER, arrays(entries, _LEDGER_COLUMNS))
