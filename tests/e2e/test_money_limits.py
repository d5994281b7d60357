"""Issue 7 through the public API, as a hostile user would try it: no sequence of valid calls can
make a refund overflow and stall billing for everyone; what cannot be deposited answers 409."""

from __future__ import annotations

from decimal import Decimal

import httpx
from test_orders import funded_account, settled

from support import eventually_sync

# A JSON number (SPEC §3 refuses money as a string); its repr is exactly these digits.
MAX = 999999999999.99
assert repr(MAX) == "999999999999.99"


def test_refunds_past_the_maximum_balance_cannot_stall_anyone(http: httpx.Client) -> None:
    hostile = funded_account(http, 0)
    assert (
        http.put("/account", json={"accountId": hostile, "amount": MAX, "actionType": "DEPOSIT_MONEY"}).status_code
        == 200
    )
    innocent = funded_account(http, 100)

    # Pay ten orders of the maximum, depositing the maximum again after each.
    orders = []
    for _ in range(10):
        order = http.post("/orders", json={"accountId": hostile, "amount": MAX}).json()
        orders.append(settled(http, hostile, order))
        deposit = http.put("/account", json={"accountId": hostile, "amount": MAX, "actionType": "DEPOSIT_MONEY"})
        # The money paid may still come back: a deposit that would leave no room for it is refused.
        assert deposit.status_code in (200, 409), deposit.text
    paid = [o for o in orders if o["status"] == "CONFIRMED"]

    for order in paid:  # withdraw them: each refund must fit
        withdrawn = http.request("DELETE", "/orders", json={"accountId": hostile, "orderNumber": order["orderNumber"]})
        assert withdrawn.status_code == 200, withdrawn.text

    # Billing is not stalled: another account's order is decided within seconds ...
    innocent_order = http.post("/orders", json={"accountId": innocent, "amount": 30}).json()
    assert settled(http, innocent, innocent_order)["status"] == "CONFIRMED"
    # ... and so are the refunds, in full.
    for order in paid:
        eventually_sync(
            lambda order=order: http.get(f"/orders/{hostile}/{order['id']}").json()["status"],
            lambda status: status == "REFUNDED",
            what="refund",
        )
    balance = Decimal(str(http.get(f"/account/{hostile}").json()["balance"]))
    ledger = http.get(f"/account/{hostile}/transactions").json()
    assert balance == sum(Decimal(str(e["amount"])) for e in ledger) <= Decimal(repr(MAX))
    assert len(paid) == 1, "after the first, the balance covers no further order of the maximum"


def test_a_deposit_past_the_maximum_answers_409(http: httpx.Client) -> None:
    account = funded_account(http, 0)
    assert (
        http.put("/account", json={"accountId": account, "amount": MAX, "actionType": "DEPOSIT_MONEY"}).status_code
        == 200
    )
    over = http.put("/account", json={"accountId": account, "amount": 1, "actionType": "DEPOSIT_MONEY"})
    assert over.status_code == 409 and "maximum" in over.json()["detail"]
    assert Decimal(str(http.get(f"/account/{account}").json()["balance"])) == Decimal(repr(MAX))
