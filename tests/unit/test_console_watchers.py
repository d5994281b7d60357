"""Who gets which live event in the console (gateway/console.py): pure bookkeeping, no I/O."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from aiokafka.structs import ConsumerRecord
from starlette.requests import Request
from starlette.types import Message

from orbilnot.gateway import console as console_module
from orbilnot.gateway.console import (
    DEAD_LETTERS_KEPT,
    STREAM_QUEUE,
    Console,
    LiveFeed,
    TooManyStreams,
    Watcher,
    Watchers,
    _EventStream,
    dead_letter_view,
)
from orbilnot.gateway.rate_limit import client_key
from orbilnot.shared.auth import Caller
from orbilnot.shared.config import GatewaySettings
from orbilnot.shared.kafka import KafkaConnection

ALICE = Caller(subject="alice")
BOB = Caller(subject="bob")
ADMIN = Caller(subject="root", is_admin=True)


def watcher(caller: Caller, *accounts: uuid.UUID, client: str | None = None) -> Watcher:
    return Watcher(caller, client or caller.subject or "127.0.0.1", frozenset(accounts))


def received(w: Watcher) -> list[dict[str, str]]:
    events = []
    while not w.queue.empty():
        events.append(w.queue.get_nowait())
    return events


def test_an_event_reaches_only_the_streams_watching_its_account() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    watchers = Watchers(max_per_client=4, max_total=10)
    on_a, on_b = watcher(Caller.OPEN, a, client="x"), watcher(Caller.OPEN, b, client="y")
    watchers.add(on_a)
    watchers.add(on_b)
    watchers.publish(a, None, {"kind": "order"})
    assert received(on_a) == [{"kind": "order"}] and received(on_b) == []


def test_with_authentication_an_event_reaches_only_whom_it_belongs_to_and_admins() -> None:
    account = uuid.uuid4()
    watchers = Watchers(max_per_client=4, max_total=10)
    alice, bob, admin = watcher(ALICE, account), watcher(BOB, account), watcher(ADMIN, account)
    for w in (alice, bob, admin):
        watchers.add(w)
    # bob's order attempt on alice's account is his, never hers (README "Ownership").
    watchers.publish(account, "bob", {"kind": "order"})
    assert received(alice) == [] and len(received(bob)) == 1 and len(received(admin)) == 1
    # An event made with authentication off has no owner: only an admin sees it.
    watchers.publish(account, None, {"kind": "payment"})
    assert received(alice) == [] and received(bob) == [] and len(received(admin)) == 1


def test_dead_letters_go_to_admins_and_to_everyone_with_authentication_off() -> None:
    watchers = Watchers(max_per_client=4, max_total=10)
    alice, admin, open_ = watcher(ALICE), watcher(ADMIN), watcher(Caller.OPEN)
    for w in (alice, admin, open_):
        watchers.add(w)
    watchers.publish_dead_letter({"kind": "deadLetter"})
    assert received(alice) == [] and len(received(admin)) == 1 and len(received(open_)) == 1


def test_streams_are_capped_per_client_and_in_all_and_removal_frees_them() -> None:
    account = uuid.uuid4()
    watchers = Watchers(max_per_client=2, max_total=3)
    first, second = watcher(ALICE, account), watcher(ALICE, account)
    watchers.add(first)
    watchers.add(second)
    with pytest.raises(TooManyStreams):
        watchers.add(watcher(ALICE, account))
    watchers.add(watcher(BOB, account))
    with pytest.raises(TooManyStreams):
        watchers.add(watcher(ADMIN))  # the total
    watchers.remove(first)
    watchers.remove(first)  # twice is harmless
    watchers.add(watcher(ALICE, account))
    assert len(watchers) == 3
    for w in list(watchers._all):
        watchers.remove(w)
    assert len(watchers) == 0 and watchers._by_account == {} and watchers._per_client == {}


def test_a_stream_that_falls_too_far_behind_is_marked_to_close_not_grown() -> None:
    account = uuid.uuid4()
    watchers = Watchers(max_per_client=1, max_total=1)
    slow = watcher(Caller.OPEN, account)
    watchers.add(slow)
    for n in range(STREAM_QUEUE + 5):
        watchers.publish(account, None, {"n": str(n)})
    assert slow.ending == "too far behind" and slow.queue.qsize() == STREAM_QUEUE


def console() -> Console:
    urls = ["http://127.0.0.1:1"]
    return Console(GatewaySettings(billing_url=urls, order_url=urls, notification_url=urls))


async def test_a_stream_ends_when_its_token_expires_and_lets_go_of_its_slot() -> None:
    app = console()
    w = watcher(ALICE, uuid.uuid4())
    app.watchers.add(w)
    sent = [chunk async for chunk in app._stream(w, expires_at=time.time() - 1, ends_at=time.time() + 60)]
    assert sent[0].startswith("event: hello") and sent[-1].startswith("event: bye")
    assert '"token expired"' in sent[-1] and len(app.watchers) == 0


async def test_a_stream_that_fell_behind_says_so_and_ends() -> None:
    app = console()
    account = uuid.uuid4()
    w = watcher(Caller.OPEN, account)
    app.watchers.add(w)
    for n in range(STREAM_QUEUE + 1):
        app.watchers.publish(account, None, {"kind": "order", "n": str(n)})
    sent = [chunk async for chunk in app._stream(w, expires_at=None, ends_at=time.time() + 60)]
    # Its backlog is not worth sending: the page reloads the accounts when it reconnects.
    assert len(sent) == 2 and '"too far behind"' in sent[-1]
    assert len(app.watchers) == 0


async def test_the_feed_survives_a_broker_that_cannot_be_reached(caplog: pytest.LogCaptureFixture) -> None:
    """The gateway starts and serves without Kafka; the feed keeps trying, warning, never raising."""
    feed = LiveFeed(KafkaConnection("127.0.0.1:1"), "o", "p", Watchers(1, 1))
    task = asyncio.create_task(feed.run())
    deadline = time.monotonic() + 20
    while not any("console feed" in r.getMessage() for r in caplog.records):
        assert not task.done() and time.monotonic() < deadline, "no warning about the broker"
        await asyncio.sleep(0.05)
    assert not feed.connected
    assert all(r.levelname == "WARNING" for r in caplog.records if r.name == "orbilnot.gateway.console")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def dead_letter_record(offset: int, headers: list[tuple[str, bytes | None]]) -> ConsumerRecord:
    return ConsumerRecord("o.dlt", 0, offset, 1_700_000_000_000, 0, b"k", b"{}", None, 1, 2, headers)


def test_a_dead_letter_header_without_a_value_is_shown_without_it() -> None:
    """Kafka allows a header with a null value: the feed shows the dead letter, it does not fail."""
    view = dead_letter_view(dead_letter_record(3, [("error", None), ("consumer-group", b"orbilnot-billing")]))
    assert view["error"] == "" and view["consumerGroup"] == "orbilnot-billing" and view["offset"] == 3


def test_dead_letters_read_again_after_a_reconnect_are_kept_and_sent_once() -> None:
    watchers = Watchers(max_per_client=4, max_total=10)
    admin = watcher(ADMIN)
    watchers.add(admin)
    feed = LiveFeed(KafkaConnection("127.0.0.1:1"), "o", "p", watchers)
    for _ in range(2):  # the feed rewinds each dead-letter partition again when it reconnects
        for offset in range(3):
            feed._dispatch(dead_letter_record(offset, [("error", b"boom")]))
    assert [entry["offset"] for entry in feed.dead_letters] == [0, 1, 2]
    assert len(received(admin)) == 3
    # Past DEAD_LETTERS_KEPT the oldest go, and are forgotten: nothing kept grows without bound.
    for offset in range(3, 3 + DEAD_LETTERS_KEPT):
        feed._dispatch(dead_letter_record(offset, [("error", b"boom")]))
    assert len(feed.dead_letters) == DEAD_LETTERS_KEPT and len(feed._kept) == DEAD_LETTERS_KEPT


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        (None, "?"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_without_authentication_streams_are_counted_per_ipv4_address_or_ipv6_64(address: str | None, key: str) -> None:
    assert client_key(address) == key


async def test_a_stream_ends_after_its_maximum_lifetime_and_lets_go_of_its_slot() -> None:
    app = console()
    w = watcher(Caller.OPEN, uuid.uuid4())
    app.watchers.add(w)
    sent = [chunk async for chunk in app._stream(w, expires_at=None, ends_at=time.time() - 1)]
    assert sent[0].startswith("event: hello") and '"stream lifetime reached"' in sent[-1]
    assert len(app.watchers) == 0


class _Verifier:
    """Stands in for the OIDC verifier: the token names its caller."""

    async def verify(self, token: str) -> Caller:
        return {"alice": ALICE, "root": ADMIN}[jwt.decode(token, options={"verify_signature": False})["sub"]]


HEALTH = {
    "checkedAt": "2026-01-01T00:00:00+00:00",
    "services": {
        "billing": [
            {"instance": 1, "ready": False, "status": 503, "ms": 3.0, "checks": {"loops": "OperationalError('db-1')"}}
        ]
    },
}


async def health_as(token_subject: str | None, *, oidc: bool) -> tuple[int, dict[str, Any]]:
    app = console()

    async def check() -> dict[str, Any]:
        return HEALTH

    app.health.check = check  # type: ignore[method-assign]
    app.authenticator = SimpleNamespace(verifier=_Verifier() if oidc else None)  # type: ignore[assignment]
    headers = []
    if token_subject is not None:
        token = jwt.encode({"sub": token_subject, "exp": int(time.time()) + 60}, "k" * 32, algorithm="HS256")
        headers.append((b"authorization", f"Bearer {token}".encode()))
    response = await app._health(Request({"type": "http", "method": "GET", "path": "/", "headers": headers}))
    return response.status_code, json.loads(bytes(response.body))


async def test_service_health_details_go_to_admins_only_and_with_oidc_to_signed_in_users_only() -> None:
    without_checks = {"instance": 1, "ready": False, "status": 503, "ms": 3.0}
    # Authentication off: anyone sees whether each instance is ready, no one its errors.
    status, body = await health_as(None, oidc=False)
    assert status == 200 and body["services"]["billing"] == [without_checks]
    status, _ = await health_as(None, oidc=True)
    assert status == 401
    status, body = await health_as("alice", oidc=True)
    assert status == 200 and body["services"]["billing"] == [without_checks]
    status, body = await health_as("root", oidc=True)
    assert status == 200 and body == HEALTH


async def test_a_client_that_stops_reading_loses_its_stream_and_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its writes block (its socket buffers are full): the stream gives up instead of waiting for ever."""
    monkeypatch.setattr(console_module, "SEND_TIMEOUT_S", 0.2)
    app = console()
    w = watcher(Caller.OPEN, uuid.uuid4())
    app.watchers.add(w)
    response = _EventStream(app._stream(w, expires_at=None, ends_at=time.time() + 60), media_type="text/event-stream")
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # the client reads nothing more

    async def receive() -> Message:
        await asyncio.Event().wait()  # nor does it close the connection
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "GET", "path": "/", "headers": []}
    await asyncio.wait_for(response(scope, receive, send), 10)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert len(app.watchers) == 0
