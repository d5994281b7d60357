"""Billing's rules, with no database, web or Kafka in sight.

The inbox row of an order event moves RECEIVED → PAYMENT_CONFIRMED | PAYMENT_DENIED | REFUNDED
(the processor decides), or RECEIVED → PARKED when deciding it failed for a reason of its own.
Each of these answers the order with one payment event. Billing trusts its own ledger, never the
event: a refund gives back what the ledger's PAYMENT for that order took.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from orbilnot.model import NOT_ENOUGH_BALANCE, OrderEventType, PaymentEventType
from orbilnot.shared.errors import Conflict
from orbilnot.shared.money import MAX_MONEY


def account_not_found(account_id: UUID) -> str:
    return f"Account {account_id} not found"


class AccountAction(StrEnum):
    CREATE_NEW = "CREATE_NEW"
    DEPOSIT_MONEY = "DEPOSIT_MONEY"
    WITHDRAW_MONEY = "WITHDRAW_MONEY"


class LedgerKind(StrEnum):
    OPENING = "OPENING"
    DEPOSIT = "DEPOSIT"
    WITHDRAWAL = "WITHDRAWAL"
    PAYMENT = "PAYMENT"
    REFUND = "REFUND"


class OrderEventStatus(StrEnum):
    RECEIVED = "RECEIVED"
    PAYMENT_CONFIRMED = "PAYMENT_CONFIRMED"
    PAYMENT_DENIED = "PAYMENT_DENIED"
    REFUNDED = "REFUNDED"
    PARKED = "PARKED"

    @property
    def result_event(self) -> PaymentEventType | None:
        """The payment event a decided row answers with; None while it is RECEIVED."""
        return _RESULT_EVENTS.get(self)


_RESULT_EVENTS = {
    OrderEventStatus.PAYMENT_CONFIRMED: PaymentEventType.PAYMENT_CONFIRMED,
    OrderEventStatus.PAYMENT_DENIED: PaymentEventType.PAYMENT_DENIED,
    OrderEventStatus.REFUNDED: PaymentEventType.REFUNDED,
    # Set aside: the order still gets a final answer, and nothing changed hands.
    OrderEventStatus.PARKED: PaymentEventType.PAYMENT_DENIED,
}

NOTHING_CHARGED = "Nothing was charged for this order; nothing refunded"


def parked_description(event_type: OrderEventType) -> str:
    """What the user is told about an event set aside (the error itself stays in billing)."""
    if event_type is OrderEventType.CREATED:
        return "The payment could not be processed; nothing was charged"
    return "The refund could not be processed; nothing was refunded"


class InsufficientFunds(Conflict):
    pass


class BalanceLimitExceeded(Conflict):
    pass


def deposit(balance: Decimal, amount: Decimal, refundable: Decimal = Decimal(0)) -> Decimal:
    """A deposit must leave room for every refund the account may still get (`refundable`):
    balance + refundable never passes MAX_MONEY, so giving back what was paid always fits."""
    new_balance = balance + amount
    if new_balance + refundable > MAX_MONEY:
        held = f" (with {refundable} of payments that may still be refunded)" if refundable else ""
        raise BalanceLimitExceeded(f"the balance would exceed the maximum of {MAX_MONEY}{held}")
    return new_balance


def withdraw(balance: Decimal, amount: Decimal) -> Decimal:
    if amount > balance:
        raise InsufficientFunds(f"cannot withdraw {amount}: the balance is {balance}")
    return balance - amount


@dataclass(frozen=True, slots=True)
class Decision:
    """What processing one order event does: the row's new status, the ledger entry to write
    (kind and signed amount; None when the balance does not change), and the result event's
    amount and text."""

    status: OrderEventStatus
    amount: Decimal
    ledger_kind: LedgerKind | None = None
    balance_change: Decimal = Decimal(0)
    description: str | None = None


def decide(
    event_type: OrderEventType,
    *,
    account_id: UUID,
    amount: Decimal,
    balance: Decimal | None,
    paid: Decimal | None,
    already_refunded: bool,
) -> Decision:
    """Decide an order event against the account's current state and its ledger.

    `balance` is None when the account does not exist. `paid` is what the ledger's PAYMENT for
    this order took (None: never charged); `already_refunded` whether its REFUND exists. Each
    happens at most once per order, however often its event arrives, and a refund gives back
    exactly `paid`, whatever amount the event claims.
    """
    if event_type is OrderEventType.CREATED:
        if paid is not None:
            return Decision(OrderEventStatus.PAYMENT_CONFIRMED, paid, description="Payment already made")
        if balance is None:
            return Decision(OrderEventStatus.PAYMENT_DENIED, amount, description=account_not_found(account_id))
        if amount > balance:
            return Decision(OrderEventStatus.PAYMENT_DENIED, amount, description=NOT_ENOUGH_BALANCE)
        return Decision(OrderEventStatus.PAYMENT_CONFIRMED, amount, LedgerKind.PAYMENT, -amount, "Payment confirmed")

    # CANCELLED: give back the payment that was made, once.
    if paid is None:
        # Nothing was charged for this order (the order service asks only for refunds of paid
        # orders, so the event is forged or a bug): refuse, so nothing is minted.
        return Decision(OrderEventStatus.PAYMENT_DENIED, amount, description=NOTHING_CHARGED)
    if already_refunded:
        return Decision(OrderEventStatus.REFUNDED, paid, description="Refund already made")
    return Decision(OrderEventStatus.REFUNDED, paid, LedgerKind.REFUND, paid, "Refunded")


def may_order_on(account_owner: str | None, placed_by: str | None, placed_by_admin: bool) -> bool:
    """Whether an order placed by `placed_by` may be charged to an account owned by `account_owner`
    (issue 9). An admin may order on any account. None on both sides: account and order were made
    with authentication off. An order that may not is denied exactly as for a missing account."""
    return placed_by_admin or account_owner == placed_by
