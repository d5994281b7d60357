"""An order's life, with no database, web or Kafka in sight.

    NEW ──(relay attempts CREATED)──▶ SENT ──(PAYMENT_CONFIRMED)──▶ CONFIRMED
                                          └─(PAYMENT_DENIED)────▶ CANCELLED
    CONFIRMED ──(DELETE)──▶ REFUND_PENDING ──(REFUNDED)──▶ REFUNDED
                                           └─(PAYMENT_DENIED: refund refused)──▶ CONFIRMED

`NEW` means one thing: the order's CREATED event was never handed to Kafka. The relay records
its attempt (and moves the order to SENT) in a transaction it commits *before* sending, so an
order that may have been charged is never NEW: it cannot be amended, and DELETE goes through the
saga (409 while the payment is decided, then a refund) instead of removing it.
"""

from __future__ import annotations

from enum import Enum, StrEnum

from orbilnot.model import PaymentEventType
from orbilnot.shared.errors import Conflict


class OrderStatus(StrEnum):
    NEW = "NEW"
    SENT = "SENT"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    REFUND_PENDING = "REFUND_PENDING"
    REFUNDED = "REFUNDED"


def payment_result(status: OrderStatus, result: PaymentEventType) -> OrderStatus | None:
    """The status a payment result moves the order to, or None when it does not apply.

    Billing's ledger is the truth about money, so its word settles the order: a refund it made is
    recorded even if this order never asked for it (a CANCELLED forged on the topic still only
    returns what was paid, and the order must then say REFUNDED, not CONFIRMED); a refund it
    refused (nothing was charged, or the event could not be processed) leaves the order CONFIRMED,
    which the user is told and may withdraw again. A result for a NEW order cannot be genuine (its
    CREATED was never sent) and is ignored.
    """
    if status is OrderStatus.SENT:
        if result is PaymentEventType.PAYMENT_CONFIRMED:
            return OrderStatus.CONFIRMED
        if result is PaymentEventType.PAYMENT_DENIED:
            return OrderStatus.CANCELLED
    if status in (OrderStatus.REFUND_PENDING, OrderStatus.CONFIRMED) and result is PaymentEventType.REFUNDED:
        return OrderStatus.REFUNDED
    if status is OrderStatus.REFUND_PENDING and result is PaymentEventType.PAYMENT_DENIED:
        return OrderStatus.CONFIRMED
    return None


def ensure_amendable(status: OrderStatus) -> None:
    if status is not OrderStatus.NEW:
        raise Conflict(f"order is {status}; only a NEW order (its event never sent) can be changed")


class Withdrawal(Enum):
    """What DELETE does to an order."""

    REMOVE = "remove"  # surely never charged: the row goes (with its unsent event, if any)
    REFUND = "refund"  # charged: ask billing for the money back (CANCELLED event)
    NOTHING = "nothing"  # a refund is already under way or done: repeating changes nothing


def withdrawal(status: OrderStatus) -> Withdrawal:
    if status in (OrderStatus.NEW, OrderStatus.CANCELLED):
        return Withdrawal.REMOVE
    if status is OrderStatus.CONFIRMED:
        return Withdrawal.REFUND
    if status in (OrderStatus.REFUND_PENDING, OrderStatus.REFUNDED):
        return Withdrawal.NOTHING
    raise Conflict(f"order is {status}: its payment is in progress; try again when it is decided")
