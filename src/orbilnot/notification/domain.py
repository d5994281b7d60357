"""What a notification says about a payment event (SPEC §3), with nothing else in sight."""

from __future__ import annotations

from dataclasses import dataclass

from orbilnot.model import NOT_ENOUGH_BALANCE, PaymentEvent, PaymentEventType
from orbilnot.shared.money import money_to_json


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str


def render(event: PaymentEvent) -> Message:
    number = event.order_number
    amount = money_to_json(event.amount)
    if event.payment_event_type is PaymentEventType.PAYMENT_CONFIRMED:
        return Message(f"Order {number} confirmed", f"Payment of {amount} for order {number} confirmed")
    if event.payment_event_type is PaymentEventType.REFUNDED:
        return Message(f"Order {number} refunded", f"{amount} returned to account {event.account_id}")
    # Denied: billing's description says why (no money, no such account, a refund refused, an
    # event it could not process) and is shown as it is; only a denial without one gets the
    # original's fixed text.
    body = event.description if event.description else NOT_ENOUGH_BALANCE
    return Message(f"Order {number} denied", body)
