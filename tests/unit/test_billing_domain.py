"""Billing's decisions: pay, deny (with the original's texts), refund once, never negative."""

import uuid
from decimal import Decimal

import pytest

from orbilnot.billing.domain import (
    BalanceLimitExceeded,
    InsufficientFunds,
    LedgerKind,
    OrderEventStatus,
    decide,
    deposit,
    may_order_on,
    withdraw,
)
from orbilnot.model import NOT_ENOUGH_BALANCE, OrderEventType, PaymentEventType
from orbilnot.shared.money import MAX_MONEY

ACCOUNT = uuid.uuid4()
D = Decimal


def created(amount: str, balance: str | None, *, paid: str | None = None):  # type: ignore[no-untyped-def]
    return decide(
        OrderEventType.CREATED,
        account_id=ACCOUNT,
        amount=D(amount),
        balance=None if balance is None else D(balance),
        paid=None if paid is None else D(paid),
        already_refunded=False,
    )


def cancelled(amount: str, balance: str | None, *, paid: str | None, refunded: bool):  # type: ignore[no-untyped-def]
    return decide(
        OrderEventType.CANCELLED,
        account_id=ACCOUNT,
        amount=D(amount),
        balance=None if balance is None else D(balance),
        paid=None if paid is None else D(paid),
        already_refunded=refunded,
    )


def test_a_covered_order_is_paid() -> None:
    decision = created("500", "1000")
    assert decision.status is OrderEventStatus.PAYMENT_CONFIRMED
    assert (decision.ledger_kind, decision.balance_change) == (LedgerKind.PAYMENT, D("-500"))


def test_an_order_for_exactly_the_balance_is_paid() -> None:
    assert created("12.34", "12.34").balance_change == D("-12.34")


def test_an_order_over_the_balance_is_denied_with_the_original_text() -> None:
    decision = created("900", "500")
    assert decision.status is OrderEventStatus.PAYMENT_DENIED
    assert decision.ledger_kind is None
    assert decision.description == NOT_ENOUGH_BALANCE == "Not enough balance for commiting payment for order"


def test_an_order_of_an_unknown_account_is_denied_naming_it() -> None:
    decision = created("1", None)
    assert decision.status is OrderEventStatus.PAYMENT_DENIED
    assert decision.description == f"Account {ACCOUNT} not found"


def test_an_order_already_paid_is_confirmed_without_charging_again() -> None:
    decision = created("500", "1000", paid="500")
    assert decision.status is OrderEventStatus.PAYMENT_CONFIRMED
    assert decision.ledger_kind is None and decision.balance_change == 0


def test_a_cancelled_paid_order_is_refunded_once() -> None:
    first = cancelled("500", "0", paid="500", refunded=False)
    assert (first.status, first.ledger_kind, first.balance_change, first.amount) == (
        OrderEventStatus.REFUNDED,
        LedgerKind.REFUND,
        D("500"),
        D("500"),
    )
    again = cancelled("500", "500", paid="500", refunded=True)
    assert again.status is OrderEventStatus.REFUNDED and again.ledger_kind is None


def test_a_refund_gives_back_what_the_ledger_says_was_paid_whatever_the_event_claims() -> None:
    decision = cancelled("100000", "0", paid="1", refunded=False)
    assert (decision.balance_change, decision.amount) == (D("1"), D("1"))


def test_a_cancelled_order_never_charged_refunds_nothing() -> None:
    decision = cancelled("500", "0", paid=None, refunded=False)
    assert decision.status is OrderEventStatus.PAYMENT_DENIED and decision.ledger_kind is None


def test_statuses_owe_the_right_payment_event() -> None:
    assert OrderEventStatus.PAYMENT_CONFIRMED.result_event is PaymentEventType.PAYMENT_CONFIRMED
    assert OrderEventStatus.PAYMENT_DENIED.result_event is PaymentEventType.PAYMENT_DENIED
    assert OrderEventStatus.REFUNDED.result_event is PaymentEventType.REFUNDED
    assert OrderEventStatus.PARKED.result_event is PaymentEventType.PAYMENT_DENIED
    assert OrderEventStatus.RECEIVED.result_event is None


def test_withdrawing_more_than_the_balance_is_refused() -> None:
    assert withdraw(D("10"), D("10")) == 0
    with pytest.raises(InsufficientFunds):
        withdraw(D("10"), D("10.01"))


def test_a_deposit_cannot_push_the_balance_past_the_maximum() -> None:
    assert deposit(D("0"), MAX_MONEY) == MAX_MONEY
    with pytest.raises(BalanceLimitExceeded):
        deposit(MAX_MONEY, D("0.01"))


def test_a_deposit_leaves_room_for_every_refund_still_possible() -> None:
    assert deposit(D("0"), MAX_MONEY - 5, refundable=D("5")) == MAX_MONEY - 5
    with pytest.raises(BalanceLimitExceeded):
        deposit(D("0"), MAX_MONEY - 4, refundable=D("5"))


@pytest.mark.parametrize(
    ("account_owner", "placed_by", "admin", "allowed"),
    [
        ("alice", "alice", False, True),
        ("alice", "bob", False, False),
        ("alice", "admin", True, True),
        (None, None, False, True),  # both made with authentication off
        (None, "alice", False, False),  # an account from before auth is no one's but an admin's
        ("alice", None, False, False),  # an order placed with auth off cannot spend alice's money
    ],
)
def test_who_may_order_on_an_account(
    account_owner: str | None, placed_by: str | None, admin: bool, allowed: bool
) -> None:
    assert may_order_on(account_owner, placed_by, admin) is allowed
