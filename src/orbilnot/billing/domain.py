"""Billing's rules, with no database, web or Kafka in sight.

The inbox row of an order event moves RECEIVED → PAYMENT_CONFIRMED | PAYMENT_DENIED | REFUNDED
(the processor decides) → EXECUTED (the relay published the result).
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
    EXECUTED = "EXECUTED"

    @property
    def result_event(self) -> PaymentEventType | None:
        """The payment event a processed row owes `payment.event`, if any."""
        return _RESULT_EVENTS.get(self)


_RESULT_EVENTS = {
    OrderEventStatus.PAYMENT_CONFIRMED: PaymentEventType.PAYMENT_CONFIRMED,
    OrderEventStatus.PAYMENT_DENIED: PaymentEventType.PAYMENT_DENIED,
    OrderEventStatus.REFUNDED: PaymentEventType.REFUNDED,
}
AWAITING_PUBLICATION = tuple(_RESULT_EVENTS)


class InsufficientFunds(Conflict):
    pass


class BalanceLimitExceeded(Conflict):
    pass


def deposit(balance: Decimal, amount: Decimal) -> Decimal:
    new_balance = balance + amount
    if new_balance > MAX_MONEY:
        raise BalanceLimitExceeded(f"balance would exceed the maximum of {MAX_MONEY}")
    return new_balance


def withdraw(balance: Decimal, amount: Decimal) -> Decimal:
    if amount > balance:
        raise InsufficientFunds(f"cannot withdraw {amount}: the balance is {balance}")
    return balance - amount


@dataclass(frozen=True, slots=True)
class Decision:
    """What processing one order event does: the row's new status, the ledger entry to write
    (kind and signed amount; None when the balance does not change) and the result's text."""

    status: OrderEventStatus
    ledger_kind: LedgerKind | None = None
    balance_change: Decimal = Decimal(0)
    description: str | None = None


def decide(
    event_type: OrderEventType,
    *,
    account_id: UUID,
    amount: Decimal,
    balance: Decimal | None,
    already_paid: bool,
    already_refunded: bool,
) -> Decision:
    """Decide an order event against the account's current state.

    `balance` is None when the account does not exist. `already_paid`/`already_refunded` say
    whether the ledger holds this order's payment/refund: each happens at most once per order,
    however often its event arrives.
    """
    if event_type is OrderEventType.CREATED:
        if already_paid:
            return Decision(OrderEventStatus.PAYMENT_CONFIRMED, description="Payment already made")
        if balance is None:
            return Decision(OrderEventStatus.PAYMENT_DENIED, description=account_not_found(account_id))
        if amount > balance:
            return Decision(OrderEventStatus.PAYMENT_DENIED, description=NOT_ENOUGH_BALANCE)
        return Decision(OrderEventStatus.PAYMENT_CONFIRMED, LedgerKind.PAYMENT, -amount, "Payment confirmed")

    # CANCELLED: give back a payment that was made, once.
    if already_refunded:
        return Decision(OrderEventStatus.REFUNDED, description="Refund already made")
    if not already_paid or balance is None:
        # Nothing was charged for this order, so there is nothing to give back. The order service
        # only asks for refunds of confirmed orders, so this means a bug elsewhere: say so, but
        # still answer, so the order does not wait for ever.
        return Decision(OrderEventStatus.REFUNDED, description="Nothing was charged; nothing refunded")
    # No limit check: giving back what was taken is always allowed (the column has room for it).
    return Decision(OrderEventStatus.REFUNDED, LedgerKind.REFUND, amount, "Refunded")


def may_order_on(account_owner: str | None, placed_by: str | None, placed_by_admin: bool) -> bool:
    """Whether an order placed by `placed_by` may be charged to an account owned by `account_owner`
    (issue 9). An admin may order on any account. None on both sides: account and order were made
    with authentication off. An order that may not is denied exactly as for a missing account."""
    return placed_by_admin or account_owner == placed_by
