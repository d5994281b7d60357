"""`orbilnot demo`: the acceptance scenario of SPEC §1 against a running gateway, step by step.

With `--auth` (issue 9) it signs in to the local Keycloak, runs the scenario as alice, then shows
that bob cannot see alice's account, its orders or its notifications."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

DEADLINE_S = 15.0


class DemoFailed(Exception):
    pass


def _poll(read: Callable[[], Any], done: Callable[[Any], bool], what: str) -> Any:
    """Asynchronous results are polled for, with a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"{what}: still {value!r} after {DEADLINE_S:.0f}s")
        time.sleep(0.05)


def _ok(response: httpx.Response) -> Any:
    if response.status_code != 200:
        raise DemoFailed(
            f"{response.request.method} {response.request.url.path} → {response.status_code} {response.text}"
        )
    return response.json()


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _local_tokens() -> tuple[str, str]:
    """alice's and bob's access tokens from the local Keycloak of `orbilnot infra up --auth`."""
    from orbilnot.infra.local import LocalInfra

    keycloak = LocalInfra().keycloak
    if not keycloak.is_running():
        raise DemoFailed("the local Keycloak is not running: start with orbilnot up --auth")
    return keycloak.password_token("alice"), keycloak.password_token("bob")


def run_demo(gateway: str, *, auth: bool = False) -> int:
    gateway = gateway.rstrip("/")
    step = 0
    steps = 8

    def say(text: str) -> None:
        nonlocal step
        step += 1
        print(f"✔ {step}. {text}", flush=True)

    try:
        alice_token, bob_token = _local_tokens() if auth else (None, None)
        if auth:
            print("signed in to the local Keycloak as alice (and bob, for the last steps)", flush=True)
        with httpx.Client(base_url=gateway, timeout=10.0, headers=_bearer(alice_token)) as http:
            account = _ok(http.post("/account/", json={"actionType": "CREATE_NEW", "amount": 0}))
            say(f"Create a user{' as alice' if auth else ''}: account {account}")

            balance = _ok(
                http.put("/account/", json={"accountId": account, "amount": 1000, "actionType": "DEPOSIT_MONEY"})
            )["balance"]
            say(f"Deposit 1000: balance {balance}")

            def notifications() -> list[dict[str, Any]]:
                return list(_ok(http.get(f"/notifications/{account}")))

            def place_and_settle(amount: int, expected: str, what: str) -> tuple[str, Any]:
                """Place an order; wait until it is decided; check its status and the balance."""
                order = _ok(http.post("/order/", json={"accountId": account, "amount": amount}))
                say(f"Place an order of {amount}{what}: order {order}")
                status = _poll(
                    lambda: _ok(http.get(f"/orders/{account}/{order}"))["status"],
                    lambda s: s in ("CONFIRMED", "CANCELLED"),
                    "order status",
                )
                balance = _ok(http.get(f"/account/{account}"))["balance"]
                if (status, balance) != (expected, 500):
                    raise DemoFailed(f"expected {expected} and balance 500, got {status} and {balance}")
                return status, balance

            started = time.perf_counter()
            status, balance = place_and_settle(500, "CONFIRMED", "")
            say(f"Balance reduced by the order's amount: {balance} (order {status})")
            notes = _poll(notifications, lambda n: len(n) >= 1, "notifications")
            elapsed_ms = (time.perf_counter() - started) * 1000
            say(f"Notification: {notes[0]['title']!r} (order → notification ≤ {elapsed_ms:.0f} ms)")

            status, balance = place_and_settle(900, "CANCELLED", " the account cannot pay for")
            say(f"Balance unchanged: {balance} (order {status})")
            notes = _poll(notifications, lambda n: len(n) >= 2, "notifications")
            say(f"Notification: {notes[1]['title']!r}: {notes[1]['body']!r}")
        if bob_token is not None:
            steps += _bob_cannot_see(gateway, bob_token, account, say)
    except (DemoFailed, httpx.HTTPError) as error:
        print(f"✘ {step + 1}. failed: {error}", flush=True)
        return 1
    print(f"all {steps} steps succeeded")
    return 0


def _bob_cannot_see(gateway: str, bob_token: str, account: str, say: Callable[[str], None]) -> int:
    """bob gets what an account that does not exist gets: 404, and empty lists. Returns the steps."""
    with httpx.Client(base_url=gateway, timeout=10.0, headers=_bearer(bob_token)) as bob:
        seen = bob.get(f"/account/{account}")
        if seen.status_code != 404:
            raise DemoFailed(f"bob reading alice's account got {seen.status_code}, expected 404")
        say(f"bob asks for alice's account: {seen.status_code} {seen.json()['detail']!r}")
        orders, notes = _ok(bob.get(f"/orders/{account}")), _ok(bob.get(f"/notifications/{account}"))
        if orders or notes:
            raise DemoFailed(f"bob sees alice's orders {orders!r} or notifications {notes!r}")
        say("bob lists alice's orders and notifications: [] and [], as for an account that does not exist")
        deposit = bob.put("/account/", json={"accountId": account, "amount": 1, "actionType": "DEPOSIT_MONEY"})
        if deposit.status_code != 404:
            raise DemoFailed(f"bob depositing on alice's account got {deposit.status_code}, expected 404")
        say(f"bob tries to deposit on it: {deposit.status_code}")
    return 3
