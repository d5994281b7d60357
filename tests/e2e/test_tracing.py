"""Tracing (issue 11, items 1 and 6): with `OTEL_EXPORTER_OTLP_ENDPOINT` set, one order makes one
trace across all four processes, from the gateway's request to the notification, through both
outboxes and both topics; an OTLP/HTTP receiver inside the test gets what the exporters send."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.otlp import OtlpReceiver, ReceivedSpan, ancestors, order_trace
from support import Stack, eventually_sync, running_stack

SERVICES = ("billing", "order", "notification")


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced_stack(infra, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    with running_stack(
        infra,
        tmp_path_factory.mktemp("traced-stack-logs"),
        "trace",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",  # ms: export soon after a span ends, not every 5 s
        LOG_FORMAT="json",
    ) as stack:
        yield stack


def test_one_order_is_one_trace_from_the_gateway_to_the_notification(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    order_topic, payment_topic = traced_stack.env["ORDER_EVENT_TOPIC"], traced_stack.env["PAYMENT_EVENT_TOPIC"]
    with httpx.Client(base_url=traced_stack.gateway, timeout=10) as http:
        account = http.post("/account/", json={"actionType": "CREATE_NEW", "amount": 0}).json()
        http.put("/account/", json={"accountId": account, "amount": 100, "actionType": "DEPOSIT_MONEY"})
        order = http.post("/orders/", json={"accountId": account, "amount": 10}).json()
        eventually_sync(
            lambda: http.get(f"/orders/{account}/{order}").json()["status"],
            lambda status: status == "CONFIRMED",
            what="the order confirmed",
        )
        eventually_sync(lambda: http.get(f"/notifications/{account}").json(), bool, what="the notification")

    def named(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan | None:
        return next((s for s in spans if s.service == f"orbilnot-{service}" and s.name == name), None)

    wanted = [
        ("order", f"publish {order_topic}"),
        ("billing", f"process {order_topic}"),
        ("billing", "billing decide"),
        ("billing", f"publish {payment_topic}"),
        ("order", f"process {payment_topic}"),
        ("notification", f"process {payment_topic}"),
    ]

    # The exporters send in batches, each process on its own: wait until every part has come in.
    def complete(spans: list[ReceivedSpan]) -> bool:
        return all(named(spans, service, name) for service, name in wanted)

    try:
        trace = eventually_sync(lambda: order_trace(receiver.spans), complete, timeout_s=60, what="the trace")
    except AssertionError as error:
        spans = receiver.spans
        by_id = {s.span_id: s for s in spans}
        received = sorted({(s.service, s.name, s.parent_id is None) for s in spans})
        parents = [
            (s.name, s.kind, s.trace_id, s.parent_id, getattr(by_id.get(s.parent_id or ""), "name", "not received"))
            for s in spans
            if s.service == "orbilnot-gateway" and s.name.startswith("POST")
        ]
        raise AssertionError(
            f"{error}\nreceived (service, span, is root): {received}\n"
            f"the gateway's POSTs (name, kind, trace, parent id, parent's name): {parents}"
        ) from None

    def the(service: str, name: str) -> ReceivedSpan:
        found = named(trace, service, name)
        assert found is not None, (service, name, [(s.service, s.name) for s in trace])
        return found

    root = trace[0]
    assert (root.service, root.kind, root.parent_id) == ("orbilnot-gateway", "server", None)
    assert [s for s in trace if s.parent_id is None] == [root], "one root: the gateway's request"
    assert all(root in ancestors(s, trace) for s in trace if s is not root), "every span descends from it"
    assert {s.service for s in trace} == {f"orbilnot-{s}" for s in ("gateway", *SERVICES)}

    # gateway → (httpx client span) → the order service's request
    order_request = next(s for s in trace if s.service == "orbilnot-order" and s.kind == "server")
    assert any(s.service == "orbilnot-gateway" and s.kind == "client" for s in ancestors(order_request, trace))
    # the relay's publish, later and in another task, continues the order request's trace
    publish_order = the("order", f"publish {order_topic}")
    assert publish_order.kind == "producer"
    assert order_request in ancestors(publish_order, trace)
    # billing's consume is the publish's child; its decision, made later by the processor from
    # the inbox row, continues it, and the payment result is published under the decision
    billing_consume = the("billing", f"process {order_topic}")
    assert (billing_consume.kind, billing_consume.parent_id) == ("consumer", publish_order.span_id)
    decide = the("billing", "billing decide")
    assert decide.parent_id == billing_consume.span_id
    publish_payment = the("billing", f"publish {payment_topic}")
    assert publish_payment.parent_id == decide.span_id
    # order and notification both consume the result
    for service in ("order", "notification"):
        consume = the(service, f"process {payment_topic}")
        assert (consume.kind, consume.parent_id) == ("consumer", publish_payment.span_id)
    # SQL statements are spans too, inside the request or message they belong to
    assert any(s.kind == "client" and billing_consume in ancestors(s, trace) for s in trace)
