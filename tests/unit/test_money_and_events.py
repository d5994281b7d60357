"""Money parsing and its JSON form; the events' wire format (SPEC §3, §4)."""

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import TypeAdapter, ValidationError

from orbilnot.model import (
    OrderEvent,
    OrderEventType,
    PaymentEvent,
    PaymentEventType,
    order_number_of,
    parse_order_number,
)
from orbilnot.shared.money import Money, NonNegativeMoney, PositiveMoney, money_to_json

positive = TypeAdapter(PositiveMoney)
non_negative = TypeAdapter(NonNegativeMoney)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("500", "500"), ("12.5", "12.5"), ("0.01", "0.01"), ("12.50", "12.5"), ("999999999999.99", "999999999999.99")],
)
def test_valid_amounts_parse_exactly(raw: str, expected: str) -> None:
    assert positive.validate_json(raw) == Decimal(expected)
    assert positive.validate_python(json.loads(raw)) == Decimal(expected)


@pytest.mark.parametrize(
    "raw", ["0", "-1", "1.005", "NaN", "Infinity", "1e400", "1000000000000", "true", '"abc"', "null"]
)
def test_invalid_positive_amounts_are_rejected(raw: str) -> None:
    with pytest.raises(ValidationError):
        positive.validate_python(json.loads(raw))


def test_zero_is_a_valid_opening_balance_but_not_a_negative_one() -> None:
    assert non_negative.validate_python(0) == 0
    with pytest.raises(ValidationError):
        non_negative.validate_python(-0.01)


@pytest.mark.parametrize(
    ("value", "text"),
    [("500", "500"), ("500.00", "500"), ("12.50", "12.5"), ("0.07", "0.07"), ("999999999999.99", "999999999999.99")],
)
def test_money_is_a_json_number_with_the_exact_value(value: str, text: str) -> None:
    assert json.dumps(money_to_json(Decimal(value))) == text
    assert TypeAdapter(Money).dump_json(Decimal(value)).decode() == text


def test_order_event_round_trips_with_camel_case_fields() -> None:
    account, order = uuid.uuid4(), uuid.uuid4()
    event = OrderEvent(
        event_id=uuid.uuid4(),
        event_type=OrderEventType.CREATED,
        account_id=account,
        order_number=order_number_of(account, order),
        amount=Decimal("12.5"),
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    wire = json.loads(event.to_json())
    assert set(wire) == {"eventId", "eventType", "accountId", "orderNumber", "amount", "occurredAt"}
    assert wire["amount"] == 12.5 and wire["eventType"] == "CREATED"
    assert OrderEvent.model_validate_json(event.to_json()) == event


def test_payment_event_reads_the_documented_shape() -> None:
    account, order = uuid.uuid4(), uuid.uuid4()
    raw = {
        "eventId": str(uuid.uuid4()),
        "paymentEventType": "PAYMENT_DENIED",
        "accountId": str(account),
        "orderNumber": f"{account}:{order}",
        "amount": 900,
        "description": "Not enough balance for commiting payment for order",
        "occurredAt": "2026-01-01T00:00:00Z",
    }
    event = PaymentEvent.model_validate_json(json.dumps(raw))
    assert event.amount == 900 and event.account_id == account
    assert json.loads(event.to_json())["paymentEventType"] == "PAYMENT_DENIED"


@pytest.mark.parametrize(
    "change",
    [
        {"paymentEventType": "PAYMENT_MAYBE"},
        {"amount": "lots"},
        {"amount": -1},
        {"orderNumber": "not-an-order"},
        {"occurredAt": "2026-01-01T00:00:00"},  # no time zone
        {"eventId": None},
    ],
)
def test_invalid_payment_events_are_rejected(change: dict[str, object]) -> None:
    account = uuid.uuid4()
    raw = {
        "eventId": str(uuid.uuid4()),
        "paymentEventType": "PAYMENT_CONFIRMED",
        "accountId": str(account),
        "orderNumber": f"{account}:{uuid.uuid4()}",
        "amount": 1,
        "occurredAt": "2026-01-01T00:00:00Z",
        **change,
    }
    with pytest.raises(ValidationError):
        PaymentEvent.model_validate_json(json.dumps(raw))


def test_order_numbers_parse_back_to_their_ids() -> None:
    account, order = uuid.uuid4(), uuid.uuid4()
    assert parse_order_number(order_number_of(account, order)) == (account, order)
    with pytest.raises(ValueError):
        parse_order_number("nope")


@pytest.mark.parametrize("model", [OrderEvent, PaymentEvent])
def test_an_event_whose_order_number_names_another_account_is_invalid(model: type[OrderEvent | PaymentEvent]) -> None:
    account, someone_else = uuid.uuid4(), uuid.uuid4()
    raw = {
        "eventId": str(uuid.uuid4()),
        "eventType": "CREATED",
        "paymentEventType": "PAYMENT_CONFIRMED",
        "accountId": str(account),
        "orderNumber": f"{someone_else}:{uuid.uuid4()}",
        "amount": 1,
        "occurredAt": "2026-01-01T00:00:00Z",
    }
    with pytest.raises(ValidationError, match="another account"):
        model.model_validate_json(json.dumps(raw))


def test_ownership_extension_fields_travel_only_when_set() -> None:
    """Issue 9: `placedBy`/`placedByAdmin` and `ownerSub` are optional extensions; unset (auth
    off) the events are exactly SPEC §4's, and a reader that knows nothing of them ignores them."""
    account, order = uuid.uuid4(), uuid.uuid4()
    common = {
        "event_id": uuid.uuid4(),
        "account_id": account,
        "order_number": order_number_of(account, order),
        "amount": Decimal(5),
        "occurred_at": datetime(2026, 1, 2, tzinfo=UTC),
    }
    placed = OrderEvent(event_type=OrderEventType.CREATED, placed_by="alice-id", placed_by_admin=True, **common)
    wire = json.loads(placed.to_json())
    assert (wire["placedBy"], wire["placedByAdmin"]) == ("alice-id", True)
    assert OrderEvent.model_validate_json(placed.to_json()) == placed
    assert "placedByAdmin" not in json.loads(placed.model_copy(update={"placed_by_admin": False}).to_json())

    decided = PaymentEvent(payment_event_type=PaymentEventType.PAYMENT_CONFIRMED, owner_sub="alice-id", **common)
    assert json.loads(decided.to_json())["ownerSub"] == "alice-id"
    assert "ownerSub" not in json.loads(decided.model_copy(update={"owner_sub": None}).to_json())
    with pytest.raises(ValidationError):
        PaymentEvent.model_validate({**json.loads(decided.to_json()), "ownerSub": "x" * 256})
