"""Bad input through the gateway: a clear 4xx, JSON `{"detail": ...}`, and nothing changed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

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


# Money is a JSON number (SPEC §3): a string is refused even when Python's Decimal would read it.
BAD_AMOUNTS = [0, -1, 1.005, "NaN", 1e15, "ten", None, True, "100", "  5  ", "5_0", "12.5"]


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


@pytest.mark.parametrize("amount", ["100", "  5  ", "5_0"])
def test_money_as_a_string_opens_no_account(http: httpx.Client, amount: str) -> None:
    assert_rejected(http.post("/account", json={"actionType": "CREATE_NEW", "amount": amount}), 422)


# Bodies no JSON parser should choke on: invalid UTF-8 inside a string, and nesting deep enough to
# exhaust a recursive parser. Each is a 422 with a JSON detail, directly from a service as well as
# through the gateway, and never a 5xx or a traceback.
HOSTILE_BODIES = [
    b'{"actionType": "CREATE_NEW\xff", "amount": 1}',
    b'{"actionType": "CREATE_NEW", "amount": 1, "note": "\xc3\x28"}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"actionType": "CREATE_NEW", "amount": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
]


@pytest.mark.parametrize("raw", HOSTILE_BODIES, ids=["utf8-in-enum", "utf8-in-extra", "arrays", "in-amount", "objects"])
def test_invalid_utf8_and_absurd_nesting_are_422_without_a_traceback(
    http: httpx.Client,
    stack,
    raw: bytes,  # type: ignore[no-untyped-def]
) -> None:
    for base in (stack.gateway, stack.urls["billing"], stack.urls["order"]):
        path = "/orders" if base == stack.urls["order"] else "/account"
        response = httpx.post(f"{base}{path}", content=raw, headers={"content-type": "application/json"}, timeout=10)
        assert_rejected(response, 422)
        assert "Traceback" not in response.text and 'File "' not in response.text
    assert http.get("/health/live").status_code == 200


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


# --- more of the same, by hand (issue 4, scenario 7) -------------------------------------------


def _state(http: httpx.Client, account: str) -> tuple[object, ...]:
    """Everything a bad request could have changed for `account`."""
    return (
        http.get(f"/account/{account}").json(),
        http.get(f"/account/{account}/transactions").json(),
        http.get(f"/orders/{account}").json(),
        http.get(f"/notifications/{account}").json(),
    )


# Raw JSON, so that what no JSON encoder writes (NaN, Infinity, 1e999) goes on the wire as is.
RAW_BAD_AMOUNTS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "1e300",
    "-0.01",
    "0.001",
    "12.345",
    "1000000000000",  # one more than the largest NUMERIC(14,2)
    "999999999999.999",
    '"12,50"',
    "[]",
    "{}",
]


@pytest.mark.parametrize("amount", RAW_BAD_AMOUNTS)
def test_bad_raw_amounts_everywhere_are_422_and_change_nothing(http: httpx.Client, account: str, amount: str) -> None:
    order = http.post("/orders", json={"accountId": account, "amount": 1}).json()
    number = f"{account}:{order}"
    # Once the order is paid and notified, nothing is under way for this account any more. (The
    # notification may come before the order service records CONFIRMED: wait for both.)
    eventually_sync(lambda: len(http.get(f"/notifications/{account}").json()), lambda n: n == 1, what="notified")
    eventually_sync(
        lambda: http.get(f"/orders/{account}/{order}").json()["status"], lambda s: s == "CONFIRMED", what="paid"
    )
    before = _state(http, account)
    bodies = [
        ("POST", "/account", f'{{"actionType": "CREATE_NEW", "amount": {amount}}}'),
        ("PUT", "/account", f'{{"accountId": "{account}", "amount": {amount}, "actionType": "DEPOSIT_MONEY"}}'),
        ("PUT", "/account", f'{{"accountId": "{account}", "amount": {amount}, "actionType": "WITHDRAW_MONEY"}}'),
        ("POST", "/orders", f'{{"accountId": "{account}", "amount": {amount}}}'),
        ("PUT", "/orders", f'{{"accountId": "{account}", "orderNumber": "{number}", "amount": {amount}}}'),
    ]
    for method, path, body in bodies:
        response = http.request(method, path, content=body, headers={"content-type": "application/json"})
        assert_rejected(response, 422)
    assert _state(http, account) == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        # wrong enum values
        ("POST", "/account", {"actionType": "create_new", "amount": 1}),
        ("POST", "/account", {"actionType": "WITHDRAW_MONEY", "amount": 1}),
        ("POST", "/account", {"actionType": 1, "amount": 1}),
        ("PUT", "/account", {"accountId": "{account}", "amount": 1, "actionType": "CREATE_NEW"}),
        ("PUT", "/account", {"accountId": "{account}", "amount": 1, "actionType": "deposit_money"}),
        ("PUT", "/account", {"accountId": "{account}", "amount": 1, "actionType": None}),
        # missing fields
        ("POST", "/account", {}),
        ("POST", "/account", {"amount": 1}),
        ("PUT", "/account", {"accountId": "{account}", "actionType": "DEPOSIT_MONEY"}),
        ("PUT", "/account", {"accountId": "{account}", "amount": 1}),
        ("POST", "/orders", {"accountId": "{account}"}),
        ("POST", "/orders", {}),
        ("PUT", "/orders", {"accountId": "{account}", "orderNumber": "{account}:{account}"}),
        ("PUT", "/orders", {"orderNumber": "{account}:{account}", "amount": 1}),
        ("DELETE", "/orders", {"orderNumber": "{account}:{account}"}),
        ("DELETE", "/orders", {}),
        # wrong types and non-UUID ids in bodies
        ("PUT", "/account", {"accountId": 12345, "amount": 1, "actionType": "DEPOSIT_MONEY"}),
        ("PUT", "/account", {"accountId": ["{account}"], "amount": 1, "actionType": "DEPOSIT_MONEY"}),
        ("POST", "/orders", {"accountId": "{account}x", "amount": 1}),
        ("PUT", "/orders", {"accountId": "{account}", "orderNumber": 7, "amount": 1}),
        ("PUT", "/orders", {"accountId": "{account}", "orderNumber": "x" * 101, "amount": 1}),
        ("DELETE", "/orders", {"accountId": "{account}", "orderNumber": None}),
    ],
)
def test_wrong_enums_types_and_missing_fields_are_422_and_change_nothing(
    http: httpx.Client, account: str, method: str, path: str, body: dict[str, object]
) -> None:
    before = _state(http, account)
    filled = json.loads(json.dumps(body).replace("{account}", account))
    assert_rejected(http.request(method, path, json=filled), 422)
    assert _state(http, account) == before


@pytest.mark.parametrize(
    "raw",
    [b"{", b"", b"[]", b"null", b'"text"', b"{'single': 'quotes'}", b'{"accountId": }', b"\xff\xfe", b"{}{}"],
)
@pytest.mark.parametrize(
    ("method", "path"), [("PUT", "/account"), ("POST", "/orders"), ("PUT", "/orders"), ("DELETE", "/orders")]
)
def test_malformed_json_on_every_body_is_422(http: httpx.Client, method: str, path: str, raw: bytes) -> None:
    assert_rejected(http.request(method, path, content=raw, headers={"content-type": "application/json"}), 422)


def test_deposits_beyond_the_largest_balance_are_409_and_change_nothing(http: httpx.Client) -> None:
    rich = http.post("/account", json={"actionType": "CREATE_NEW", "amount": 999999999999.99}).json()
    before = _state(http, rich)
    assert before[0]["balance"] == 999999999999.99
    deposit = {"accountId": rich, "amount": 0.01, "actionType": "DEPOSIT_MONEY"}
    assert_rejected(http.put("/account", json=deposit), 409)
    assert _state(http, rich) == before


def test_a_full_account_keeps_room_for_its_refunds(http: httpx.Client) -> None:
    """A refund is never refused (it gives back what was taken), so a deposit must leave room for
    it: once an order is paid from a full account, depositing the paid amount again is refused
    (409), and the refund takes the balance back to exactly the maximum, shown by every endpoint."""
    account = str(http.post("/account", json={"actionType": "CREATE_NEW", "amount": 999999999999.99}).json())
    order = http.post("/orders", json={"accountId": account, "amount": 10}).json()
    eventually_sync(
        lambda: http.get(f"/orders/{account}/{order}").json()["status"], lambda s: s == "CONFIRMED", what="paid"
    )
    deposit = {"accountId": account, "amount": 10, "actionType": "DEPOSIT_MONEY"}
    assert_rejected(http.put("/account", json=deposit), 409)
    refund = http.request("DELETE", "/orders", json={"accountId": account, "orderNumber": f"{account}:{order}"})
    assert refund.status_code == 200, refund.text
    eventually_sync(
        lambda: http.get(f"/orders/{account}/{order}").json()["status"], lambda s: s == "REFUNDED", what="refunded"
    )
    response = http.get(f"/account/{account}")
    assert response.status_code == 200, response.text
    assert response.json()["balance"] == 999999999999.99
    ledger = http.get(f"/account/{account}/transactions")
    assert ledger.status_code == 200, ledger.text
    assert ledger.json()[-1]["balanceAfter"] == 999999999999.99
    # Still no deposit on top of it, and withdrawing works.
    assert_rejected(http.put("/account", json={**deposit, "amount": 1}), 409)
    withdraw = {"accountId": account, "amount": 10, "actionType": "WITHDRAW_MONEY"}
    assert http.put("/account", json=withdraw).json()["balance"] == 999999999989.99


def test_bodies_over_the_gateway_limit_are_413_and_change_nothing(http: httpx.Client, account: str) -> None:
    limit = 1024 * 1024  # GATEWAY_MAX_BODY_BYTES' default; the e2e gateway leaves it alone
    before = _state(http, account)

    def body(size: int) -> bytes:
        head = f'{{"accountId": "{account}", "amount": 1, "actionType": "DEPOSIT_MONEY", "pad": "'.encode()
        return head + b"x" * (size - len(head) - 2) + b'"}'

    # Declared too large (Content-Length): refused before a byte is read.
    assert_rejected(http.put("/account", content=body(limit + 1), headers={"content-type": "application/json"}), 413)

    # Chunked, no length declared: refused once the limit is passed.
    def chunks() -> Iterator[bytes]:
        data = body(limit + 1)
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    assert_rejected(http.put("/account", content=chunks(), headers={"content-type": "application/json"}), 413)
    assert _state(http, account) == before
    # At the limit exactly, the request goes through.
    at_limit = http.put("/account", content=body(limit), headers={"content-type": "application/json"})
    assert at_limit.status_code == 200, at_limit.text
    assert at_limit.json()["balance"] == before[0]["balance"] + 1
