"""The business metrics (README, "Metrics"), read from each process's own `/metrics` after
orders went through the whole stack: what moved must have moved by exactly that much.

A stack of the module's own (fresh counters, no other test's orders in flight), plus a second
gateway with a bucket of one token, to be refused by."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from orbilnot.infra import free_ports
from orbilnot.up import gateway_env
from support import Scrape, Stack, eventually_sync, running_stack, scrape

SERVICES = ("billing", "order", "notification", "gateway")


@pytest.fixture(scope="module")
def stack(infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    with running_stack(infra, tmp_path_factory.mktemp("metrics-stack-logs"), "metrics", TOPIC_PARTITIONS="2") as stack:
        limits = {"GATEWAY_RATE_LIMIT_PER_S": "0.01", "GATEWAY_RATE_LIMIT_BURST": "1"}
        stack.start("limited", "gateway", free_ports(1)[0], gateway_env(limits, stack.urls))
        yield stack


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway, timeout=10) as client:
        yield client


def scrapes(stack: Stack) -> dict[str, Scrape]:
    return {name: scrape(stack.urls[name]) for name in SERVICES}


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def open_account(http: httpx.Client, balance: int) -> str:
    account: str = http.post("/account", json={"actionType": "CREATE_NEW", "amount": 0}).json()
    deposit = http.put("/account", json={"accountId": account, "amount": balance, "actionType": "DEPOSIT_MONEY"})
    assert deposit.status_code == 200
    return account


def statuses(http: httpx.Client, account: str) -> list[str]:
    return [order["status"] for order in http.get(f"/orders/{account}").json()]


def test_an_order_confirmed_one_denied_and_a_refund_move_the_flow_metrics(stack: Stack, http: httpx.Client) -> None:
    before = scrapes(stack)
    account = open_account(http, 100)
    paid = http.post("/orders", json={"accountId": account, "amount": 60}).json()
    http.post("/orders", json={"accountId": account, "amount": 90})  # more than the 40 left: denied
    eventually_sync(lambda: statuses(http, account), lambda s: s == ["CONFIRMED", "CANCELLED"], what="decisions")
    withdrawn = http.request("DELETE", "/orders", json={"accountId": account, "orderNumber": f"{account}:{paid}"})
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "REFUND_PENDING"
    eventually_sync(lambda: statuses(http, account), lambda s: s == ["REFUNDED", "CANCELLED"], what="refund")
    notified = eventually_sync(
        lambda: http.get(f"/notifications/{account}").json(), lambda n: len(n) == 3, what="three notifications"
    )
    assert [n["notificationType"] for n in notified] == ["PAYMENT_CONFIRMED", "PAYMENT_DENIED", "REFUNDED"]

    transitions = {
        ("NEW", "SENT"): 2,
        ("SENT", "CONFIRMED"): 1,
        ("SENT", "CANCELLED"): 1,
        ("CONFIRMED", "REFUND_PENDING"): 1,
        ("REFUND_PENDING", "REFUNDED"): 1,
    }

    # Counted right after each commit, which a reader of the API may see a moment earlier: poll.
    def flow_moved(after: dict[str, Scrape]) -> bool:
        order = [
            moved(before["order"], after["order"], "orbilnot_order_transitions_total", from_status=a, to_status=b)
            for a, b in transitions
        ]
        return (
            order == list(transitions.values())
            and moved(before["notification"], after["notification"], "orbilnot_notification_latency_seconds_count") == 2
            and moved(before["billing"], after["billing"], "orbilnot_refunds_total") == 1
        )

    after = eventually_sync(lambda: scrapes(stack), flow_moved, what="flow metrics")
    billing, order, notification = after["billing"], after["order"], after["notification"]
    # Only these moved: nothing counted twice, no other transition.
    assert sum(order.series("orbilnot_order_transitions_total").values()) - sum(
        before["order"].series("orbilnot_order_transitions_total").values()
    ) == sum(transitions.values())

    decision = "orbilnot_decision_latency_seconds"
    for outcome in ("confirmed", "denied"):
        assert moved(before["billing"], billing, f"{decision}_count", outcome=outcome) == 1
        # The whole saga took well under a minute; the observation is in the `le="60"` bucket.
        assert moved(before["billing"], billing, f"{decision}_bucket", outcome=outcome, le="60.0") == 1
    assert moved(before["billing"], billing, f"{decision}_count", outcome="parked") == 0
    assert 0 < moved(before["billing"], billing, f"{decision}_sum", outcome="confirmed") < 60
    # The refund gave back what the ledger charged.
    assert moved(before["billing"], billing, "orbilnot_refunded_amount_total") == 60
    # Notification latency: order created → stored, for the two decisions (the refund's result
    # carries no creation time).
    assert 0 < moved(before["notification"], notification, "orbilnot_notification_latency_seconds_sum") < 60


def test_consumer_lag_is_reported_per_assigned_partition_and_drains_to_zero(stack: Stack, http: httpx.Client) -> None:
    account = open_account(http, 10)
    http.post("/orders", json={"accountId": account, "amount": 1})
    eventually_sync(lambda: statuses(http, account), lambda s: s == ["CONFIRMED"], what="the order decided")

    def lags() -> dict[str, dict[frozenset[tuple[str, str]], float]]:
        return {name: scrape(stack.urls[name]).series("orbilnot_consumer_lag") for name in ("billing", "order")}

    found = eventually_sync(
        lags, lambda found: all(found.values()) and not any(any(s.values()) for s in found.values()), what="no lag"
    )
    for service, series in found.items():
        labels = [dict(s) for s in series]
        assert {label["group"] for label in labels} == {f"orbilnot-{service}"}
        # TOPIC_PARTITIONS=2 and one replica: both partitions of its topic are this consumer's.
        assert sorted(label["partition"] for label in labels) == ["0", "1"]


def test_refusals_are_counted_by_reason_where_they_happen(stack: Stack, http: httpx.Client) -> None:
    before = scrapes(stack)
    before_limited = scrape(stack.urls["limited"])
    account = open_account(http, 10)

    invalid = http.post("/orders", json={"accountId": account, "amount": -5})
    assert invalid.status_code == 422
    key = {"Idempotency-Key": "metrics-test"}
    assert http.post("/orders", json={"accountId": account, "amount": 1}, headers=key).status_code == 200
    assert http.post("/orders", json={"accountId": account, "amount": 2}, headers=key).status_code == 409

    with httpx.Client(base_url=stack.urls["limited"], timeout=10) as limited:
        answers = [limited.get(f"/account/{account}").status_code for _ in range(3)]
    assert 429 in answers  # a bucket of one token, refilled once in 100 s
    # Refused by the gateway's HTTP protocol itself, before any application code saw it.
    crowded = {f"x-header-{i}": "x" for i in range(120)}
    assert http.get(f"/account/{account}", headers=crowded).status_code == 431

    after = scrapes(stack)
    after_limited = scrape(stack.urls["limited"])
    rejected = "orbilnot_rejected_requests_total"
    assert moved(before["order"], after["order"], rejected, service="order", reason="invalid") == 1
    assert moved(before["order"], after["order"], rejected, service="order", reason="conflict") == 1
    # The gateway passed those answers on: they are the order service's refusals, not its own.
    assert moved(before["gateway"], after["gateway"], rejected, service="gateway", reason="invalid") == 0
    assert moved(before["gateway"], after["gateway"], rejected, service="gateway", reason="conflict") == 0
    assert moved(before["gateway"], after["gateway"], rejected, service="gateway", reason="too_large") == 1
    assert moved(before_limited, after_limited, rejected, service="gateway", reason="rate_limited") == answers.count(
        429
    )
    assert moved(before_limited, after_limited, "orbilnot_gateway_rate_limited_total") == answers.count(429)


def test_readiness_is_a_gauge_per_process(stack: Stack) -> None:
    for name, service in (("billing", "billing"), ("order", "order"), ("notification", "notification")):
        httpx.get(f"{stack.urls[name]}/health/ready", timeout=5)
        assert scrape(stack.urls[name]).value("orbilnot_ready", service=service) == 1
    httpx.get(f"{stack.gateway}/health/ready", timeout=5)
    assert scrape(stack.gateway).value("orbilnot_ready", service="gateway") == 1
