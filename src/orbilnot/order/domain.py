"""An order's life, with no database, web or Kafka in sight.

    NEW ──(CREATED published)──▶ SENT ──(PAYMENT_CONFIRMED)──▶ CONFIRMED
                                      └─(PAYMENT_DENIED)────▶ CANCELLED
    CONFIRMED ──(DELETE)──▶ REFUND_PENDING ──(REFUNDED)──▶ REFUNDED

An order that owes `order.event` a message carries it as a pending event (type and id, fixed
when the transition happens); the relay publishes it and calls `published`.
"""

from __future__ import annotations

from enum import Enum, StrEnum

from orbilnot.model import OrderEventType, PaymentEventType
from orbilnot.shared.errors import Conflict


class OrderStatus(StrEnum):
    NEW = "NEW"
    SENT = "SENT"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    REFUND_PENDING = "REFUND_PENDING"
    REFUNDED = "REFUNDED"


FINAL_STATUSES = frozenset({OrderStatus.CONFIRMED, OrderStatus.CANCELLED, OrderStatus.REFUNDED})


def published(status: OrderStatus, event: OrderEventType) -> OrderStatus:
    """The broker acknowledged the order's pending event."""
    if status is OrderStatus.NEW and event is OrderEventType.CREATED:
        return OrderStatus.SENT
    return status


def payment_result(status: OrderStatus, result: PaymentEventType) -> OrderStatus | None:
    """The status a payment result moves the order to, or None when it does not apply.

    A result for a NEW order is accepted like one for a SENT order: the relay published CREATED
    but had not yet recorded the broker's ack (or crashed before it could). The result proves the
    event went out, and refusing it would leave the order waiting for an answer already given.
    """
    if status in (OrderStatus.NEW, OrderStatus.SENT):
        if result is PaymentEventType.PAYMENT_CONFIRMED:
            return OrderStatus.CONFIRMED
        if result is PaymentEventType.PAYMENT_DENIED:
            return OrderStatus.CANCELLED
    if status is OrderStatus.REFUND_PENDING and result is PaymentEventType.REFUNDED:
        return OrderStatus.REFUNDED
    return None


def ensure_amendable(status: OrderStatus) -> None:
    if status is not OrderStatus.NEW:
        raise Conflict(f"order is {status}; only a NEW order can be changed")


class Withdrawal(Enum):
    """What DELETE does to an order."""

    REMOVE = "remove"  # never charged: the row goes
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
