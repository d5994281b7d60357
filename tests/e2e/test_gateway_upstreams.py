"""The gateway with an upstream that is down: a quick 502/503 JSON answer, never a hang; and with
one dead replica among live ones, requests still succeed."""

from __future__ import annotations

import time

import httpx

from orbilnot.infra import free_ports


def test_an_upstream_that_is_down_gives_a_json_5xx_quickly(stack) -> None:  # type: ignore[no-untyped-def]
    dead_port, gateway_port = free_ports(2)
    dead = f"http://127.0.0.1:{dead_port}"
    stack.start(
        "gateway-dead-billing",
        "gateway",
        gateway_port,
        {
            "BILLING_URL": dead,
            "ORDER_URL": f"{stack.urls['order']},{dead}",
            "NOTIFICATION_URL": stack.urls["notification"],
        },
    )
    gateway = stack.urls["gateway-dead-billing"]
    started = time.monotonic()
    response = httpx.get(f"{gateway}/account/00000000-0000-4000-8000-000000000000", timeout=10)
    assert time.monotonic() - started < 5
    assert response.status_code in (502, 503)
    assert "detail" in response.json()
    # The order upstream lists a live and a dead replica: every request still gets through.
    for _ in range(6):
        assert httpx.get(f"{gateway}/orders/00000000-0000-4000-8000-000000000000", timeout=10).status_code == 200
