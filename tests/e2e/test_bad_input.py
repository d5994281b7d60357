"""Bad input through the gateway: a clear 4xx, JSON `{"detail": ...}`, and nothing changed."""

from __future__ import annotations

import uuid

import httpx
import pytest

from support import eventually_sync


@pytest.fixture
def account(http: httpx.Client) -> str:
    return str(http.post("/account", json={"actionType": "CREATE_NEW", "amount": 100}).json())


def assert_rejected(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "detail" in response.json()


BAD_AMOUNTS = [0, -1, 1.005, "NaN", 1e15, "ten", None, True]


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_bad_amounts_are_422_and_change_nothing(http: httpx.Client, account: str, amount: object) -> None:
    for body in (
        {"accountId": account, "amount": amount, "actionType": "DEPOSIT_MONEY"},
        {"accountId": account, "amount": amount, "actionType": "WITHDRAW_MONEY"},
    ):
        assert_rejected(http.put("/account", json=body), 422)
    assert_rejected(http.post("/orders", json={"accountId": account, "amount": amount}), 422)
    assert http.get(f"/account/{account}").json()["balance"] == 100
    assert http.get(f"/orders/{account}").json() == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/account", {"actionType": "DEPOSIT_MONEY", "amount": 1}),
        ("POST", "/account", {"actionType": "CREATE_NEW", "amount": -5}),
        ("PUT", "/account", {"accountId": "not-a-uuid", "amount": 1, "actionType": "DEPOSIT_MONEY"}),
        ("PUT", "/account", {"amount": 1, "actionType": "DEPOSIT_MONEY"}),
        ("PUT", "/account", {"accountId": str(uuid.uuid4()), "amount": 1, "actionType": "STEAL_MONEY"}),
        ("POST", "/orders", {"accountId": "12345", "amount": 1}),
        ("POST", "/orders", {"amount": 1}),
        ("PUT", "/orders", {"accountId": str(uuid.uuid4()), "amount": 1}),
        ("DELETE", "/orders", {"accountId": str(uuid.uuid4())}),
    ],
)
def test_invalid_bodies_are_422(http: httpx.Client, method: str, path: str, body: dict[str, object]) -> None:
    assert_rejected(http.request(method, path, json=body), 422)


@pytest.mark.parametrize("path", ["/account/nope", "/orders/nope", "/notifications/nope", "/orders/nope/nope"])
def test_non_uuid_ids_in_paths_are_422(http: httpx.Client, path: str) -> None:
    assert_rejected(http.get(path), 422)


@pytest.mark.parametrize("raw", [b"{", b"[]", b"null", b'{"actionType": "CREATE_NEW", "amount": NaN}'])
def test_malformed_json_is_422(http: httpx.Client, raw: bytes) -> None:
    assert_rejected(http.post("/account", content=raw, headers={"content-type": "application/json"}), 422)


def test_a_body_without_content_type_is_read_as_json(http: httpx.Client) -> None:
    response = http.post("/account", content=b'{"actionType": "CREATE_NEW", "amount": 7}')
    assert response.status_code == 200
    assert http.get(f"/account/{response.json()}").json()["balance"] == 7


def test_unknown_accounts_and_orders_are_404(http: httpx.Client, account: str) -> None:
    stranger = str(uuid.uuid4())
    assert_rejected(http.put("/account", json={"accountId": stranger, "amount": 1, "actionType": "DEPOSIT_MONEY"}), 404)
    assert_rejected(http.get(f"/account/{stranger}/transactions"), 404)
    number = f"{account}:{uuid.uuid4()}"
    assert_rejected(http.put("/orders", json={"accountId": account, "orderNumber": number, "amount": 1}), 404)
    assert_rejected(http.request("DELETE", "/orders", json={"accountId": account, "orderNumber": "junk"}), 404)


def test_overdrawing_is_409_and_changes_nothing(http: httpx.Client, account: str) -> None:
    assert_rejected(
        http.put("/account", json={"accountId": account, "amount": 100.01, "actionType": "WITHDRAW_MONEY"}), 409
    )
    assert http.get(f"/account/{account}").json()["balance"] == 100
    assert [e["kind"] for e in http.get(f"/account/{account}/transactions").json()] == ["OPENING"]


def test_someone_elses_order_cannot_be_touched(http: httpx.Client, account: str) -> None:
    order = http.post("/orders", json={"accountId": account, "amount": 1}).json()
    eventually_sync(
        lambda: http.get(f"/orders/{account}/{order}").json()["status"], lambda s: s == "CONFIRMED", what="paid"
    )
    intruder = str(uuid.uuid4())
    number = f"{account}:{order}"
    assert_rejected(http.request("DELETE", "/orders", json={"accountId": intruder, "orderNumber": number}), 404)
    assert http.get(f"/orders/{account}/{order}").json()["status"] == "CONFIRMED"


def test_trailing_slashes_are_served_without_redirects(http: httpx.Client, account: str) -> None:
    for path in (f"/account/{account}", f"/account/{account}/"):
        response = http.get(path)
        assert response.status_code == 200 and response.json()["balance"] == 100
    assert http.get("/account/docs").status_code == 200
    assert http.get("/orders/openapi.json").json()["info"]["title"] == "orbilnot order"


def test_unknown_paths_are_404_json(http: httpx.Client) -> None:
    assert_rejected(http.get("/nothing/here"), 404)
