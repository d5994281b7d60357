"""Order extensions through the gateway: refunds on DELETE (once), Idempotency-Key, one-order GET."""

from __future__ import annotations

import uuid

import httpx
import pytest

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


@pytest.mark.parametrize("key", ["", "x" * 201, "caf\xe9", "tab\there"])
def test_an_unusable_idempotency_key_is_422_and_creates_nothing(http: httpx.Client, key: str) -> None:
    """An empty key used to be stored like any other, so every later empty key, from any account,
    got that first order's id back and created nothing (issue 8)."""
    account = funded_account(http)
    response = http.post(
        "/orders", json={"accountId": account, "amount": 1}, headers={"Idempotency-Key": key.encode("latin-1")}
    )
    assert response.status_code == 422, response.text
    assert http.get(f"/orders/{account}").json() == []


def test_idempotency_keys_belong_to_one_account(http: httpx.Client) -> None:
    """The same key from two accounts makes two orders; neither account can occupy the other's key."""
    key = {"Idempotency-Key": f"shared-{uuid.uuid4().hex}"}
    first_account, second_account = funded_account(http), funded_account(http)
    first = http.post("/orders", json={"accountId": first_account, "amount": 100}, headers=key)
    second = http.post("/orders", json={"accountId": second_account, "amount": 100}, headers=key)
    assert first.status_code == second.status_code == 200, second.text
    assert first.json() != second.json()
    other_amount = http.post("/orders", json={"accountId": second_account, "amount": 7}, headers=key)
    assert other_amount.status_code == 409
    assert [o["id"] for o in http.get(f"/orders/{first_account}").json()] == [first.json()]
    assert [o["id"] for o in http.get(f"/orders/{second_account}").json()] == [second.json()]


def test_the_longest_printable_key_is_accepted(http: httpx.Client) -> None:
    account = funded_account(http)
    key = {"Idempotency-Key": "".join(chr(c) for c in range(0x21, 0x7F)) + "k" * 106}
    first = http.post("/orders", json={"accountId": account, "amount": 1}, headers=key)
    again = http.post("/orders", json={"accountId": account, "amount": 1}, headers=key)
    assert first.status_code == again.status_code == 200, first.text
    assert first.json() == again.json()
