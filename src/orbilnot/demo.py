"""`orbilnot demo`: the acceptance scenario of SPEC §1 against a running gateway, step by step."""

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


def run_demo(gateway: str) -> int:
    gateway = gateway.rstrip("/")
    step = 0

    def say(text: str) -> None:
        nonlocal step
        step += 1
        print(f"✔ {step}. {text}", flush=True)

    try:
        with httpx.Client(base_url=gateway, timeout=10.0) as http:
            account = _ok(http.post("/account/", json={"actionType": "CREATE_NEW", "amount": 0}))
            say(f"Create a user: account {account}")

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
    except (DemoFailed, httpx.HTTPError) as error:
        print(f"✘ {step + 1}. failed: {error}", flush=True)
        return 1
    print("all 8 steps succeeded")
    return 0
