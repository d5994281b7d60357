"""Integration events shared by every service (the seed's `model` module)."""

from orbilnot.model.events import (
    NOT_ENOUGH_BALANCE,
    OrderEvent,
    OrderEventType,
    PaymentEvent,
    PaymentEventType,
    order_number_of,
    parse_order_number,
)

__all__ = [
    "NOT_ENOUGH_BALANCE",
    "OrderEvent",
    "OrderEventType",
    "PaymentEvent",
    "PaymentEventType",
    "order_number_of",
    "parse_order_number",
]
