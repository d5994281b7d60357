"""Order extensions through the gateway: refunds on DELETE (once), Idempotency-Key, one-order GET."""

from __future__ import annotations

import uuid

import httpx

from support import eventually_sync


def funded_account(http: httpx.Client, amount: int = 1000) -> str:
    account = http.post("/account", json={"actionType": "CREATE_NEW", "amount": amount})
    assert account.status_code == 200
    return str(account.json())


def settled(http: httpx.Client, account: str, order: str) -> dict[str, object]:
    return eventually_sync(
        lambda: http.get(f"/orders/{account}/{order}").json(),
        lambda o: o.get("status") in ("CONFIRMED", "CANCELLED", "REFUNDED"),
        what=f"order {order} settled",
    )


def test_deleting_a_confirmed_order_refunds_it_once(http: httpx.Client) -> None:
    account = funded_account(http)
    order = http.post("/orders", json={"accountId": account, "amount": 300}).json()
    number = settled(http, account, order)["orderNumber"]
    assert http.get(f"/account/{account}").json()["balance"] == 700

    first = http.request("DELETE", "/orders/", json={"accountId": account, "orderNumber": number})
    assert first.status_code == 200 and first.json()["status"] in ("REFUND_PENDING", "REFUNDED")
    eventually_sync(
        lambda: http.get(f"/orders/{account}/{order}").json()["status"], lambda s: s == "REFUNDED", what="refund"
    )
    again = http.request("DELETE", "/orders", json={"accountId": account, "orderNumber": number})
    assert again.status_code == 200 and again.json()["status"] == "REFUNDED"

    notes = eventually_sync(
        lambda: http.get(f"/notifications/{account}").json(), lambda n: len(n) >= 2, what="refund notification"
    )
    assert [n["notificationType"] for n in notes] == ["PAYMENT_CONFIRMED", "REFUNDED"]
    assert notes[1]["title"] == f"Order {number} refunded"
    assert notes[1]["body"] == f"300 returned to account {account}"
    ledger = http.get(f"/account/{account}/transactions").json()
    assert [e["kind"] for e in ledger] == ["OPENING", "PAYMENT", "REFUND"]
    assert http.get(f"/account/{account}").json()["balance"] == 1000


def test_deleting_a_denied_order_removes_it(http: httpx.Client) -> None:
    account = funded_account(http, 0)
    order = http.post("/orders", json={"accountId": account, "amount": 5}).json()
    number = settled(http, account, order)["orderNumber"]
    gone = http.request("DELETE", "/orders", json={"accountId": account, "orderNumber": number})
    assert gone.status_code == 204
    assert http.get(f"/orders/{account}/{order}").status_code == 404
    assert http.request("DELETE", "/orders", json={"accountId": account, "orderNumber": number}).status_code == 404


def test_a_confirmed_order_cannot_be_amended(http: httpx.Client) -> None:
    account = funded_account(http)
    order = http.post("/orders", json={"accountId": account, "amount": 10}).json()
    number = settled(http, account, order)["orderNumber"]
    response = http.put("/orders", json={"accountId": account, "orderNumber": number, "amount": 20})
    assert response.status_code == 409
    assert http.get(f"/orders/{account}/{order}").json()["amount"] == 10


def test_idempotency_key_returns_the_same_order_and_creates_nothing(http: httpx.Client) -> None:
    account = funded_account(http)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = http.post("/orders", json={"accountId": account, "amount": 100}, headers=key)
    second = http.post("/orders", json={"accountId": account, "amount": 100}, headers=key)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    other = http.post("/orders", json={"accountId": account, "amount": 101}, headers=key)
    assert other.status_code == 409
    settled(http, account, first.json())
    assert len(http.get(f"/orders/{account}").json()) == 1
    assert http.get(f"/account/{account}").json()["balance"] == 900


def test_one_order_and_empty_lists(http: httpx.Client) -> None:
    nobody = str(uuid.uuid4())
    assert http.get(f"/orders/{nobody}").json() == []
    assert http.get(f"/notifications/{nobody}").json() == []
    assert http.get(f"/orders/{nobody}/{uuid.uuid4()}").status_code == 404
    assert http.get(f"/account/{nobody}").status_code == 404


def test_metrics_label_requests_by_route(http: httpx.Client, stack) -> None:  # type: ignore[no-untyped-def]
    account = funded_account(http)
    http.post("/orders", json={"accountId": account, "amount": 1})
    order_metrics = httpx.get(f"{stack.urls['order']}/metrics").text
    gateway_metrics = httpx.get(f"{stack.gateway}/metrics").text
    assert 'method="POST",route="place_order",status="200"' in order_metrics
    assert 'method="POST",route="/orders",status="200"' in gateway_metrics
