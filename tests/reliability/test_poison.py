"""Scenario 6: poison messages on both topics, fed to the running services.

Not JSON, not UTF-8, JSON of the wrong shape, wrong types, missing fields, unknown enum values,
bad amounts, a message of almost the broker's 1 MB limit, a tombstone: each lands in
`<topic>.dlt` once per consumer group that rejected it, with the reason in an `error` header. An
event that passes validation but that the database refuses is no bad input but a failure of its
own: it is parked (counted in `orbilnot_parked_events_total`), not dead-lettered. The consumers
keep going and the next good order completes.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import httpx
from kafka_tools import (
    GROUPS_OF_ORDER_TOPIC,
    GROUPS_OF_PAYMENT_TOPIC,
    publish,
    read_all,
    wait_consumed,
    wait_groups_stable,
)
from prometheus_client.parser import text_string_to_metric_families
from replicated import ReplicatedStack

from support import eventually

NEAR_1MB = 1_000_000  # the broker takes 1 MiB per message: stay just under it, headers included


def _order_event(**fields: Any) -> dict[str, Any]:
    account = str(uuid.uuid4())
    event = {
        "eventId": str(uuid.uuid4()),
        "eventType": "CREATED",
        "accountId": account,
        "orderNumber": f"{account}:{uuid.uuid4()}",
        "amount": 10,
        "occurredAt": "2026-01-01T00:00:00Z",
    }
    event.update(fields)
    return event


def _payment_event(**fields: Any) -> dict[str, Any]:
    account = str(uuid.uuid4())
    event = {
        "eventId": str(uuid.uuid4()),
        "paymentEventType": "PAYMENT_CONFIRMED",
        "accountId": account,
        "orderNumber": f"{account}:{uuid.uuid4()}",
        "amount": 10,
        "description": "Payment confirmed",
        "occurredAt": "2026-01-01T00:00:00Z",
    }
    event.update(fields)
    return event


def _without(event: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in names}


def _huge(event: dict[str, Any], field: str) -> bytes:
    """`event` with `field` padded so that the whole message is just under 1 MB."""
    body = json.dumps({**event, field: ""}).encode()
    return json.dumps({**event, field: "x" * (NEAR_1MB - len(body))}).encode()


def _common_poison() -> list[bytes | None]:
    return [
        b"this is not json {",
        b"\xff\xfe\x00\x01 not even utf-8",
        b"",
        b"[]",
        b"42",
        b'"a string"',
        b"null",
        None,  # a tombstone
    ]


def order_poison() -> list[bytes | None]:
    dumps = [
        _order_event(eventType="EXPLODED"),
        _order_event(eventType="created"),
        _without(_order_event(), "eventId"),
        _without(_order_event(), "amount", "accountId"),
        {"eventId": str(uuid.uuid4())},
        _order_event(eventId=123, accountId=True, orderNumber=5, amount="lots", occurredAt="yesterday"),
        _order_event(eventId="not-a-uuid"),
        _order_event(orderNumber="no-colon-here"),
        _order_event(amount=0),
        _order_event(amount=-5),
        _order_event(amount=1.005),
        _order_event(amount=1e20),
        _order_event(amount=[1]),
        _order_event(occurredAt="2026-01-01T00:00:00"),  # no time zone
        _order_event(orderNumber=f"{uuid.uuid4()}:{uuid.uuid4()}"),  # another account's order
    ]
    raw = [json.dumps(d).encode() for d in dumps]
    raw.append(json.dumps(_order_event()).replace('"amount": 10', '"amount": NaN').encode())
    raw.append(_huge(_order_event(), "orderNumber"))
    return _common_poison() + raw


def payment_poison() -> list[bytes | None]:
    dumps = [
        _payment_event(paymentEventType="PAYMENT_EXPLODED"),
        _without(_payment_event(), "paymentEventType"),
        _without(_payment_event(), "orderNumber", "eventId"),
        _payment_event(eventId=[], accountId=1, amount={"value": 10}, description=5),
        _payment_event(amount=0),
        _payment_event(amount=-1),
        _payment_event(amount=0.001),
        _payment_event(orderNumber="x:y"),
        _payment_event(description="d" * 1001),
        _payment_event(occurredAt="not a time"),
        _payment_event(orderNumber=f"{uuid.uuid4()}:{uuid.uuid4()}"),  # another account's order
    ]
    raw = [json.dumps(d).encode() for d in dumps]
    raw.append(_huge(_payment_event(), "description"))
    return _common_poison() + raw


def _headers(record: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers}


async def test_poison_messages_are_dead_lettered_and_consumers_go_on(replicated_stack: ReplicatedStack) -> None:
    env = replicated_stack.env
    kafka = env["KAFKA_BOOTSTRAP_SERVERS"]
    order_topic, payment_topic = env["ORDER_EVENT_TOPIC"], env["PAYMENT_EVENT_TOPIC"]
    # Published only once both replicas are in their groups: a rebalance in the middle would
    # (rightly) dead-letter a message again, and the counts below could not be exact.
    await wait_groups_stable(
        kafka, {order_topic: GROUPS_OF_ORDER_TOPIC, payment_topic: GROUPS_OF_PAYMENT_TOPIC}, members=2
    )

    # Valid for the payment consumers, but the notification's body cannot hold a NUL character:
    # the database refuses it, on its own, so the notification group parks it (and no one
    # dead-letters it).
    refused_by_database = json.dumps(_payment_event(paymentEventType="PAYMENT_DENIED", description="a\u0000b"))
    key = str(uuid.uuid4()).encode()  # one key: all on one partition, the good order's own below
    order_placed = await publish(kafka, order_topic, [(key, m) for m in order_poison()])
    payment_placed = await publish(kafka, payment_topic, [(key, m) for m in payment_poison()])
    nul_placed = await publish(kafka, payment_topic, [(key, refused_by_database.encode())])

    async with httpx.AsyncClient(base_url=replicated_stack.gateway, timeout=15) as http:
        # The consumers go on: a good order placed afterwards completes, notification included.
        account = (await http.post("/account", json={"actionType": "CREATE_NEW", "amount": 100})).json()
        order = (await http.post("/orders", json={"accountId": account, "amount": 30})).json()
        await eventually(
            lambda: http.get(f"/orders/{account}/{order}"),
            lambda r: r.json()["status"] == "CONFIRMED",
            timeout_s=60,
            what="the good order confirmed",
        )
        notes = await eventually(
            lambda: http.get(f"/notifications/{account}"), lambda r: len(r.json()) == 1, timeout_s=60
        )
        assert notes.json()[0]["title"] == f"Order {account}:{order} confirmed"
        assert (await http.get(f"/account/{account}")).json()["balance"] == 70
        for name, url in replicated_stack.urls.items():
            ready = await http.get(f"{url}/health/ready")
            assert ready.status_code == 200, (name, ready.text)

    # Everything published is consumed (the DLT is written before the offset is committed).
    await wait_consumed(kafka, order_topic, GROUPS_OF_ORDER_TOPIC)
    await wait_consumed(kafka, payment_topic, GROUPS_OF_PAYMENT_TOPIC)

    async with httpx.AsyncClient(timeout=15) as http:
        parked = 0.0
        for name, url in replicated_stack.urls.items():
            if name.startswith("notification"):
                for family in text_string_to_metric_families((await http.get(f"{url}/metrics")).text):
                    if family.name == "orbilnot_parked_events":
                        parked += sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    assert parked == len(nul_placed), "the event the database refuses is parked once, by the notification group"

    expected = {
        order_topic: Counter((g, p, o) for g in GROUPS_OF_ORDER_TOPIC for p, o in order_placed),
        payment_topic: Counter((g, p, o) for g in GROUPS_OF_PAYMENT_TOPIC for p, o in payment_placed),
    }
    for topic, wanted in expected.items():
        dead = await read_all(kafka, f"{topic}.dlt")
        got: Counter[tuple[str, int, int]] = Counter()
        for record in dead:
            headers = _headers(record)
            assert headers.get("error"), f"a dead letter without its reason: {headers}"
            assert headers["original-topic"] == topic
            assert record.key == key
            got[(headers["consumer-group"], int(headers["original-partition"]), int(headers["original-offset"]))] += 1
        assert got == wanted, f"{topic}.dlt: missing {wanted - got}, extra {got - wanted}"

    # The near-1 MB messages were forwarded (cut down to what the DLT takes, and said so).
    big = [r for r in await read_all(kafka, f"{order_topic}.dlt") if "truncated-from-bytes" in _headers(r)]
    assert len(big) == 1 and int(_headers(big[0])["truncated-from-bytes"]) == NEAR_1MB
