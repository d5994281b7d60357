"""The notification texts of SPEC §3, word for word."""

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from orbilnot.model import NOT_ENOUGH_BALANCE, PaymentEvent, PaymentEventType
from orbilnot.notification.domain import render

ACCOUNT = uuid.uuid4()
NUMBER = f"{ACCOUNT}:{uuid.uuid4()}"


def event(kind: PaymentEventType, amount: str = "500", description: str | None = None) -> PaymentEvent:
    return PaymentEvent(
        event_id=uuid.uuid4(),
        payment_event_type=kind,
        account_id=ACCOUNT,
        order_number=NUMBER,
        amount=Decimal(amount),
        description=description,
        occurred_at=datetime.now(UTC),
    )


def test_confirmed() -> None:
    message = render(event(PaymentEventType.PAYMENT_CONFIRMED, "12.50"))
    assert message.title == f"Order {NUMBER} confirmed"
    assert message.body == f"Payment of 12.5 for order {NUMBER} confirmed"


def test_denied_for_lack_of_money_keeps_the_original_text() -> None:
    message = render(event(PaymentEventType.PAYMENT_DENIED, description=NOT_ENOUGH_BALANCE))
    assert message.title == f"Order {NUMBER} denied"
    assert message.body == "Not enough balance for commiting payment for order"


def test_denied_for_an_unknown_account_names_it() -> None:
    message = render(event(PaymentEventType.PAYMENT_DENIED, description=f"Account {ACCOUNT} not found"))
    assert message.body == f"Account {ACCOUNT} not found"


def test_refunded() -> None:
    message = render(event(PaymentEventType.REFUNDED, "500"))
    assert message.title == f"Order {NUMBER} refunded"
    assert message.body == f"500 returned to account {ACCOUNT}"


def test_the_order_created_at_header_never_fails_the_event_even_without_a_value() -> None:
    """Beside the event, unchecked: a header Kafka carries with a null value is no time, not an error."""
    from aiokafka.structs import ConsumerRecord

    from orbilnot.notification.handlers import _order_created_at
    from orbilnot.shared import consumer
    from orbilnot.shared.observability import ORDER_CREATED_AT_HEADER

    def created_at(value: bytes | None) -> datetime | None:
        payment = event(PaymentEventType.PAYMENT_CONFIRMED)
        headers = [(ORDER_CREATED_AT_HEADER, value)]
        record = ConsumerRecord("payment.event", 0, 1, 0, 0, b"k", b"{}", None, 1, 2, headers)
        token = consumer._consumed_records.set({id(payment): record})
        try:
            return _order_created_at(payment)
        finally:
            consumer._consumed_records.reset(token)

    assert created_at(b"2026-01-02T03:04:05+00:00") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert created_at(b"not a time") is None
    assert created_at(None) is None
