"""Who gets which live event in the console (gateway/console.py): pure bookkeeping, no I/O."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from orbilnot.gateway.console import STREAM_QUEUE, Console, LiveFeed, TooManyStreams, Watcher, Watchers
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
    sent = [chunk async for chunk in app._stream(w, expires_at=time.time() - 1)]
    assert sent[0].startswith("event: hello") and sent[-1].startswith("event: bye")
    assert '"token expired"' in sent[-1] and len(app.watchers) == 0


async def test_a_stream_that_fell_behind_says_so_and_ends() -> None:
    app = console()
    account = uuid.uuid4()
    w = watcher(Caller.OPEN, account)
    app.watchers.add(w)
    for n in range(STREAM_QUEUE + 1):
        app.watchers.publish(account, None, {"kind": "order", "n": str(n)})
    sent = [chunk async for chunk in app._stream(w, expires_at=None)]
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
