"""SPEC §1 through the gateway, the original Postman collection with newman, and `orbilnot demo`."""

from __future__ import annotations

import subprocess
import sys

import httpx

from support import eventually_sync, run_postman_collection


def notifications(http: httpx.Client, account: str) -> list[dict[str, str]]:
    response = http.get(f"/notifications/{account}")
    assert response.status_code == 200
    return list(response.json())


def test_the_acceptance_scenario(http: httpx.Client) -> None:
    account = http.post("/account/", json={"actionType": "CREATE_NEW", "amount": 0}).json()
    deposit = http.put("/account/", json={"accountId": account, "amount": 1000, "actionType": "DEPOSIT_MONEY"})
    assert deposit.status_code == 200 and deposit.json() == {"id": account, "balance": 1000}

    paid = http.post("/orders/", json={"accountId": account, "amount": 500})
    assert paid.status_code == 200 and isinstance(paid.json(), str)
    first = eventually_sync(lambda: notifications(http, account), lambda n: len(n) == 1, what="first notification")
    assert first[0]["title"] == f"Order {account}:{paid.json()} confirmed"
    assert http.get(f"/account/{account}").json()["balance"] == 500

    denied = http.post("/order", json={"accountId": account, "amount": 900})  # the /order alias
    assert denied.status_code == 200
    both = eventually_sync(lambda: notifications(http, account), lambda n: len(n) == 2, what="second notification")
    assert both[1]["title"] == f"Order {account}:{denied.json()} denied"
    assert both[1]["body"] == "Not enough balance for commiting payment for order"
    assert http.get(f"/account/{account}").json()["balance"] == 500

    # The order and notification services consume the payment result each on their own: the
    # notification may be committed before the order's new status, so wait for that too.
    orders = eventually_sync(
        lambda: http.get(f"/orders/{account}").json(),
        lambda found: all(o["status"] in ("CONFIRMED", "CANCELLED") for o in found),
        what="both orders decided",
    )
    assert [(o["id"], o["status"]) for o in orders] == [(paid.json(), "CONFIRMED"), (denied.json(), "CANCELLED")]
    ledger = http.get(f"/account/{account}/transactions").json()
    assert [entry["kind"] for entry in ledger] == ["OPENING", "DEPOSIT", "PAYMENT"]
    assert sum(entry["amount"] for entry in ledger) == 500


def test_an_order_of_an_unknown_account_is_denied_naming_it(http: httpx.Client) -> None:
    stranger = "00000000-0000-4000-8000-000000000001"
    order = http.post("/orders", json={"accountId": stranger, "amount": 1}).json()
    found = eventually_sync(
        lambda: [n for n in notifications(http, stranger) if order in n["orderNumber"]], bool, what="denial"
    )
    assert found[0]["body"] == f"Account {stranger} not found"


def test_the_original_postman_collection_passes_unchanged(stack) -> None:  # type: ignore[no-untyped-def]
    result = run_postman_collection(stack.gateway)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "AssertionError" not in result.stdout


def test_orbilnot_demo_prints_all_eight_steps(stack) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "orbilnot.cli", "demo", "--gateway", stack.gateway],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(".")[0] for line in result.stdout.splitlines() if line.startswith("✔")] == [
        f"✔ {n}" for n in range(1, 9)
    ]
