"""Every order status against every input: the transitions of SPEC §3/§5 and nothing else."""

import pytest

from orbilnot.model import PaymentEventType
from orbilnot.order.domain import (
    OrderStatus,
    Withdrawal,
    ensure_amendable,
    payment_result,
    withdrawal,
)
from orbilnot.shared.errors import Conflict

S = OrderStatus
P = PaymentEventType

EXPECTED_PAYMENT_RESULTS = {
    (S.SENT, P.PAYMENT_CONFIRMED): S.CONFIRMED,
    (S.SENT, P.PAYMENT_DENIED): S.CANCELLED,
    (S.REFUND_PENDING, P.REFUNDED): S.REFUNDED,
    # Billing's ledger settles it: a refund it made (even one the order never asked for) ...
    (S.CONFIRMED, P.REFUNDED): S.REFUNDED,
    # ... and a refund it refused, which leaves the order charged.
    (S.REFUND_PENDING, P.PAYMENT_DENIED): S.CONFIRMED,
    # A NEW order's CREATED was never sent, so no result for it can be genuine: none applies.
}


@pytest.mark.parametrize("status", list(S))
@pytest.mark.parametrize("result", list(P))
def test_payment_result_moves_only_the_listed_transitions(status: S, result: P) -> None:
    assert payment_result(status, result) == EXPECTED_PAYMENT_RESULTS.get((status, result))


def test_a_repeated_result_is_a_no_op_once_the_order_moved_on() -> None:
    first = payment_result(S.SENT, P.PAYMENT_CONFIRMED)
    assert first is S.CONFIRMED
    assert payment_result(first, P.PAYMENT_CONFIRMED) is None


@pytest.mark.parametrize("status", list(S))
def test_only_a_new_order_can_be_amended(status: S) -> None:
    if status is S.NEW:
        ensure_amendable(status)
    else:
        with pytest.raises(Conflict):
            ensure_amendable(status)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (S.NEW, Withdrawal.REMOVE),
        (S.CANCELLED, Withdrawal.REMOVE),
        (S.CONFIRMED, Withdrawal.REFUND),
        (S.REFUND_PENDING, Withdrawal.NOTHING),
        (S.REFUNDED, Withdrawal.NOTHING),
    ],
)
def test_withdrawal_removes_uncharged_refunds_charged_and_never_twice(status: S, expected: Withdrawal) -> None:
    assert withdrawal(status) is expected


def test_an_order_whose_payment_is_in_progress_cannot_be_withdrawn() -> None:
    with pytest.raises(Conflict):
        withdrawal(S.SENT)


def test_every_status_is_covered_by_withdrawal() -> None:
    for status in S:
        try:
            withdrawal(status)
        except Conflict:
            assert status is S.SENT
