"""Billing's use cases. Each takes a connection inside a transaction that its caller owns (a
route's `engine.begin()`, the consumer's batch, the processor's step) and returns plain values."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from orbilnot.billing import domain
from orbilnot.billing.domain import AccountAction, LedgerKind, OrderEventStatus
from orbilnot.billing.tables import accounts, ledger, order_events
from orbilnot.model import OrderEvent, OrderEventType, PaymentEvent
from orbilnot.shared.auth import Caller
from orbilnot.shared.errors import NotFound
from orbilnot.shared.pagination import DEFAULT_LIMIT, Page
from orbilnot.shared.relay import OutgoingMessage


@dataclass(frozen=True, slots=True)
class Account:
    id: UUID
    balance: Decimal


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
            select(accounts.c.balance, accounts.c.owner_sub).where(accounts.c.id == account_id).with_for_update()
        )
    ).first()
    if row is None or not caller.may_touch(row.owner_sub):
        raise NotFound(f"account {account_id} not found")
    balance: Decimal = row.balance
    if action is AccountAction.DEPOSIT_MONEY:
        new_balance, kind = domain.deposit(balance, amount), LedgerKind.DEPOSIT
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


async def receive_order_event(conn: AsyncConnection, event: OrderEvent) -> None:
    """Store an order event in the inbox as RECEIVED, once: a redelivery hits the primary key."""
    await conn.execute(
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
            status=OrderEventStatus.RECEIVED.value,
        )
        .on_conflict_do_nothing(index_elements=[order_events.c.event_id])
    )


async def process_received_events(conn: AsyncConnection, limit: int) -> int:
    """Decide up to `limit` RECEIVED events: debit, deny or refund. Returns how many.

    Rows are claimed with SKIP LOCKED, so replicas share the work; the accounts they touch are
    then locked in id order, so two processors never deadlock on each other. What each decision
    changes (balance, ledger, the row's status and result event id) commits together.
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

    account_ids = sorted({row.account_id for row in claimed})
    balances: dict[UUID, Decimal] = {}
    owners: dict[UUID, str | None] = {}
    for account_id, balance, owner in await conn.execute(
        select(accounts.c.id, accounts.c.balance, accounts.c.owner_sub)
        .where(accounts.c.id.in_(account_ids))
        .order_by(accounts.c.id)
        .with_for_update()
    ):
        balances[account_id], owners[account_id] = balance, owner
    done: set[tuple[str, str]] = {
        (order_number, kind)
        for order_number, kind in await conn.execute(
            select(ledger.c.order_number, ledger.c.kind).where(
                ledger.c.order_number.in_({row.order_number for row in claimed}),
                ledger.c.kind.in_([LedgerKind.PAYMENT.value, LedgerKind.REFUND.value]),
            )
        )
    }

    entries: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for row in claimed:
        event_type = OrderEventType(row.event_type)
        exists = row.account_id in balances
        # An order on an account its placer may not use is decided as if the account did not
        # exist (issue 9). A refund needs no such check: it gives back what this ledger charged.
        allowed = exists and (
            event_type is OrderEventType.CANCELLED
            or domain.may_order_on(owners[row.account_id], row.placed_by, row.placed_by_admin)
        )
        decision = domain.decide(
            event_type,
            account_id=row.account_id,
            amount=row.amount,
            balance=balances[row.account_id] if allowed else None,
            already_paid=(row.order_number, LedgerKind.PAYMENT.value) in done,
            already_refunded=(row.order_number, LedgerKind.REFUND.value) in done,
        )
        if decision.ledger_kind is not None:
            balances[row.account_id] += decision.balance_change
            done.add((row.order_number, decision.ledger_kind.value))
            entries.append(
                _entry(
                    row.account_id,
                    decision.ledger_kind,
                    decision.balance_change,
                    balances[row.account_id],
                    row.order_number,
                )
            )
        results.append(
            {
                "b_event_id": row.event_id,
                "b_status": decision.status.value,
                "b_description": decision.description,
                "b_result_event_id": uuid.uuid4(),
                # The outcome is the account owner's to see, or, if refused, only its placer's.
                "b_result_owner_sub": owners[row.account_id] if allowed else row.placed_by,
            }
        )

    if entries:
        await _write_ledger(conn, entries)
        changed = {entry["account_id"] for entry in entries}
        await conn.execute(
            update(accounts)
            .where(accounts.c.id == bindparam("b_id"))
            .values(balance=bindparam("b_balance"), updated_at=func.now()),
            [{"b_id": account_id, "b_balance": balances[account_id]} for account_id in changed],
        )
    await conn.execute(
        update(order_events)
        .where(order_events.c.event_id == bindparam("b_event_id"))
        .values(
            status=bindparam("b_status"),
            description=bindparam("b_description"),
            result_event_id=bindparam("b_result_event_id"),
            result_owner_sub=bindparam("b_result_owner_sub"),
            processed_at=func.now(),
        ),
        results,
    )
    return len(claimed)


class PaymentResultsSource:
    """The relay's view of billing: processed inbox rows owe `payment.event` their result."""

    name = "billing.payment-results"

    def __init__(self, topic: str) -> None:
        self.topic = topic

    async def claim(self, conn: AsyncConnection, limit: int) -> Sequence[Row[Any]]:
        return (
            await conn.execute(
                select(order_events)
                .where(order_events.c.status.in_([s.value for s in domain.AWAITING_PUBLICATION]))
                .order_by(order_events.c.seq)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()

    def message(self, row: Row[Any]) -> OutgoingMessage:
        result = OrderEventStatus(row.status).result_event
        assert result is not None, row.status  # claim() selects only rows that owe a result
        event = PaymentEvent(
            event_id=row.result_event_id,
            payment_event_type=result,
            account_id=row.account_id,
            order_number=row.order_number,
            amount=row.amount,
            description=row.description,
            occurred_at=row.processed_at,
            owner_sub=row.result_owner_sub,
        )
        return OutgoingMessage(self.topic, key=str(row.account_id).encode(), value=event.to_json())

    async def mark_published(self, conn: AsyncConnection, rows: Sequence[Row[Any]]) -> None:
        await conn.execute(
            update(order_events)
            .where(order_events.c.event_id.in_([row.event_id for row in rows]))
            .values(status=OrderEventStatus.EXECUTED.value, executed_at=func.now())
        )


# -- helpers -----------------------------------------------------------------------------------


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
    await conn.execute(insert(ledger), entries)
