"""The live console (issue 11): a page at `/console` that watches accounts as the saga moves them.

What the gateway serves for it, and nothing else:

    /                          → 307 to /console/ (SPEC §10)
    /console, /console/        the page (static/index.html); its script and style under /console/assets/
    /console/config.json       how to sign in (auth mode, issuer, client id) and whether the feed is live
    /console/api/events        a server-sent-event stream of the watched accounts' order and payment
                               events, and of new dead letters
    /console/api/dead-letters  the dead-letter topics' latest entries
    /console/api/health        each service's readiness, instance by instance (its /health/ready
                               body, which names hosts and errors, to admins only)

Everything else the page shows (balances, ledgers, orders, notifications) it reads through the
ordinary API with the user's own token, so the services' ownership rules apply unchanged.

**Where the live events come from.** One Kafka consumer per gateway process reads `order.event`,
`payment.event` and their `.dlt` topics: the events the services publish anyway, so nothing is
polled and no table is read. It has no consumer group and commits nothing: every gateway replica
must see every event (a watcher may be connected to any of them), and a console that missed
events while the gateway was down has nothing to catch up on — the page reloads the current state
through the API when it (re)connects. Events are fanned out by account id to the streams watching
that account, each through a bounded queue: a stream that cannot keep up is closed (the page
reconnects and reloads) rather than buffering without limit.

**Who sees what.** With authentication off, anyone who names an account sees its events (as
anyone who names it may read it through the API). With `AUTH_MODE=oidc` the stream needs a valid
token, and an event is delivered only when the caller may see it by the services' own rule
(`Caller.may_touch`): an order event belongs to the subject that placed the order (`placedBy`), a
payment event to `ownerSub`. Dead letters, which may belong to anyone, go only to admins. A stream
ends when its token expires; the page reconnects with a fresh one. Service health needs a token
too; the services' own check details (hosts, the loops' last errors) go to admins only, with
authentication off to no one.

**Bounds.** At most `CONSOLE_MAX_STREAMS_PER_CLIENT` streams per client (its subject, or with
authentication off its IPv4 address or IPv6 /64) and `CONSOLE_MAX_STREAMS` in all (429 beyond),
each watching at most `CONSOLE_MAX_ACCOUNTS` accounts (422 beyond); a comment line every 15 s keeps
proxies from closing an idle stream and finds a client that is gone; the stream's task ends when
the client disconnects, when a write has waited SEND_TIMEOUT_S for a client that does not read,
and after `CONSOLE_MAX_STREAM_S` in any case (the page reconnects). Every console request goes
through the gateway's edge limits and rate limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import aiohttp
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Send

from orbilnot.gateway.rate_limit import client_address
from orbilnot.model.events import OrderEvent, PaymentEvent
from orbilnot.shared.auth import Authenticator, Caller, InvalidToken, ProviderUnavailable
from orbilnot.shared.config import GatewaySettings
from orbilnot.shared.http_limits import ON_SERVER_SHUTDOWN
from orbilnot.shared.kafka import KafkaConnection, dead_letter_topic

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
HEARTBEAT_S = 15.0
# Events buffered for one stream; a stream further behind than this is closed, not grown.
STREAM_QUEUE = 256
# Dead letters kept in memory (and read back from each DLT partition's tail at start).
DEAD_LETTERS_KEPT = 20
# How long one write to a stream may wait for the client to read: one that stops reading (its
# socket buffers full) would otherwise hold its slot for ever, the stream blocked in that write.
SEND_TIMEOUT_S = 30.0
HEALTH_TIMEOUT_S = 1.0
# Health answers are shared by every page for this long: N open consoles cost one probe per service.
HEALTH_CACHE_S = 2.0


# -- who is watching what ------------------------------------------------------------------------


@dataclass(eq=False)
class Watcher:
    """One open stream: whom it serves, the accounts it watches, and its bounded queue."""

    caller: Caller
    client: str
    accounts: frozenset[UUID]
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(STREAM_QUEUE))
    # Why the stream is to end now, once set.
    ending: str | None = None

    def offer(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # The stream ends (and the page reloads) rather than holding an unbounded backlog.
            self.end("too far behind")

    def end(self, reason: str) -> None:
        if self.ending is None:
            self.ending = reason
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(_WAKE_UP)  # a full queue wakes its reader anyway


_WAKE_UP: dict[str, Any] = {"kind": "wake-up"}


class TooManyStreams(Exception):
    pass


class Watchers:
    """The open streams, indexed by account so an event costs a dictionary lookup, not a scan."""

    def __init__(self, max_per_client: int, max_total: int) -> None:
        self.max_per_client = max_per_client
        self.max_total = max_total
        self._by_account: dict[UUID, set[Watcher]] = {}
        self._per_client: dict[str, int] = {}
        self._all: set[Watcher] = set()

    def __len__(self) -> int:
        return len(self._all)

    def add(self, watcher: Watcher) -> None:
        if len(self._all) >= self.max_total:
            raise TooManyStreams("the gateway holds as many console streams as it allows")
        if self._per_client.get(watcher.client, 0) >= self.max_per_client:
            raise TooManyStreams(f"at most {self.max_per_client} console streams per client")
        self._all.add(watcher)
        self._per_client[watcher.client] = self._per_client.get(watcher.client, 0) + 1
        for account in watcher.accounts:
            self._by_account.setdefault(account, set()).add(watcher)

    def remove(self, watcher: Watcher) -> None:
        if watcher not in self._all:
            return
        self._all.discard(watcher)
        left = self._per_client[watcher.client] - 1
        if left:
            self._per_client[watcher.client] = left
        else:
            del self._per_client[watcher.client]
        for account in watcher.accounts:
            watching = self._by_account[account]
            watching.discard(watcher)
            if not watching:
                del self._by_account[account]

    def publish(self, account: UUID, owner: str | None, event: dict[str, Any]) -> None:
        """Hand an account's event to each stream watching it whose caller may see it."""
        for watcher in self._by_account.get(account, ()):
            if watcher.caller.may_touch(owner):
                watcher.offer(event)

    def publish_dead_letter(self, event: dict[str, Any]) -> None:
        for watcher in self._all:
            if watcher.caller.sees_everything:
                watcher.offer(event)


# -- the events, as the page gets them ------------------------------------------------------------


def _record_time(record: ConsumerRecord) -> str:
    # The broker's (or producer's) timestamp: for order.event, when the relay published the
    # order, i.e. when it went SENT; the event's own occurredAt is when the order was made.
    return datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat()


def order_event_view(event: OrderEvent, record: ConsumerRecord) -> dict[str, Any]:
    return {
        "kind": "order",
        "type": event.event_type.value,
        "accountId": str(event.account_id),
        "orderNumber": event.order_number,
        "amount": str(event.amount),  # exact, as the API gives it; the page only shows it
        "occurredAt": event.occurred_at.isoformat(),
        "publishedAt": _record_time(record),
    }


def payment_event_view(event: PaymentEvent, record: ConsumerRecord) -> dict[str, Any]:
    return {
        "kind": "payment",
        "type": event.payment_event_type.value,
        "accountId": str(event.account_id),
        "orderNumber": event.order_number,
        "amount": str(event.amount),  # exact, as the API gives it; the page only shows it
        "description": event.description,
        "occurredAt": event.occurred_at.isoformat(),
        "publishedAt": _record_time(record),
    }


def dead_letter_view(record: ConsumerRecord) -> dict[str, Any]:
    # Kafka allows a header without a value (None here): there is nothing to show of it.
    headers = {name: value.decode("utf-8", "replace") for name, value in (record.headers or ()) if value is not None}
    value = record.value or b""
    return {
        "kind": "deadLetter",
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "at": _record_time(record),
        "error": headers.get("error", "")[:500],
        "consumerGroup": headers.get("consumer-group"),
        # Its head only: a dead letter may be anything up to the broker's message size.
        "value": value[:500].decode("utf-8", "replace"),
    }


# -- the feed: one consumer, fanned out -----------------------------------------------------------


class LiveFeed:
    """Reads the topics from their current end and hands each event to the streams that want it."""

    def __init__(self, kafka: KafkaConnection, order_topic: str, payment_topic: str, watchers: Watchers) -> None:
        self.kafka = kafka
        self.order_topic = order_topic
        self.payment_topic = payment_topic
        self.dead_letter_topics = (dead_letter_topic(order_topic), dead_letter_topic(payment_topic))
        self.topics = (order_topic, payment_topic, *self.dead_letter_topics)
        self.watchers = watchers
        self.dead_letters: deque[dict[str, Any]] = deque(maxlen=DEAD_LETTERS_KEPT)
        # Where each kept dead letter is, so the entries a reconnect reads again are not kept twice.
        self._kept: set[tuple[str, int, int]] = set()
        self.connected = False

    async def run(self) -> None:
        """Until cancelled; a broker that is down or goes away is retried, never fatal."""
        delay_s = 1.0
        while True:
            consumer = AIOKafkaConsumer(
                **self.kafka.client_options(),
                client_id="orbilnot-gateway-console",
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="latest",
                # How soon a topic created after the gateway started (the services create them) is read.
                metadata_max_age_ms=5000,
            )
            failure: Exception | None = None
            try:
                await consumer.start()
                delay_s = 1.0
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failure = error
            finally:
                self.connected = False
                with contextlib.suppress(Exception):
                    await consumer.stop()
            # A warning, not an error: the console works without its feed, and a broker that
            # comes up after the gateway is a normal start.
            log.warning("console feed: %s; retrying in %.0f s", repr(failure), delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 30.0)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        # Subscribed without a group, the consumer takes every partition of these topics, and of
        # topics created later once its metadata (refreshed every few seconds) shows them.
        consumer.subscribe(list(self.topics))
        self.connected = True
        tailed: set[TopicPartition] = set()
        while True:
            await self._rewind_dead_letters(consumer, tailed)
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batches.values():
                for record in records:
                    self._dispatch(record)

    async def _rewind_dead_letters(self, consumer: AIOKafkaConsumer, tailed: set[TopicPartition]) -> None:
        """The other topics are read from their end; a dead-letter partition first shows its last
        few entries, so the console shows the latest dead letters however old they are."""
        new = [tp for tp in consumer.assignment() if tp.topic in self.dead_letter_topics and tp not in tailed]
        if not new:
            return
        ends = await consumer.end_offsets(new)
        starts = await consumer.beginning_offsets(new)
        for tp in new:
            consumer.seek(tp, max(starts[tp], ends[tp] - DEAD_LETTERS_KEPT))
        tailed.update(new)

    def _dead_letter(self, view: dict[str, Any]) -> None:
        """Keep and announce a dead letter, unless it is one kept already: after the feed
        reconnects it rewinds each dead-letter partition again, re-reading its latest entries."""
        where = (view["topic"], view["partition"], view["offset"])
        if where in self._kept:
            return
        if len(self.dead_letters) == self.dead_letters.maxlen:
            oldest = self.dead_letters[0]
            self._kept.discard((oldest["topic"], oldest["partition"], oldest["offset"]))
        self.dead_letters.append(view)
        self._kept.add(where)
        self.watchers.publish_dead_letter(view)

    def _dispatch(self, record: ConsumerRecord) -> None:
        try:
            if record.topic in self.dead_letter_topics:
                self._dead_letter(dead_letter_view(record))
            elif record.topic == self.order_topic:
                order = OrderEvent.model_validate_json(record.value or b"")
                self.watchers.publish(order.account_id, order.placed_by, order_event_view(order, record))
            elif record.topic == self.payment_topic:
                payment = PaymentEvent.model_validate_json(record.value or b"")
                self.watchers.publish(payment.account_id, payment.owner_sub, payment_event_view(payment, record))
        except ValidationError:
            pass  # the consuming service dead-letters it; the console shows it from the DLT


# -- service health -------------------------------------------------------------------------------


class HealthProbe:
    """Each upstream instance's /health/ready, probed at most once per HEALTH_CACHE_S."""

    def __init__(self, upstreams: dict[str, list[str]]) -> None:
        self.upstreams = upstreams
        self._http: aiohttp.ClientSession | None = None
        self._answer: dict[str, Any] | None = None
        self._taken_at = 0.0
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        # aiohttp, like the proxy's client: httpx would be in the gateway for these probes alone
        # (~5 MB resident with httpcore and h11).
        timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as http:
            self._http = http
            try:
                yield
            finally:
                self._http = None

    async def check(self) -> dict[str, Any]:
        async with self._lock:  # one probe at a time; the others take its answer
            if self._answer is None or time.monotonic() - self._taken_at > HEALTH_CACHE_S:
                self._answer = await self._probe_all()
                self._taken_at = time.monotonic()
            return self._answer

    async def _probe_all(self) -> dict[str, Any]:
        names = [(service, url) for service, urls in self.upstreams.items() for url in urls]
        results = await asyncio.gather(*(self._probe(url) for _, url in names))
        services: dict[str, list[dict[str, Any]]] = {service: [] for service in self.upstreams}
        for (service, _), result in zip(names, results, strict=True):
            # Instances by number only: the page need not learn the cluster's internal addresses.
            services[service].append({"instance": len(services[service]) + 1, **result})
        return {"checkedAt": datetime.now(UTC).isoformat(), "services": services}

    async def _probe(self, base_url: str) -> dict[str, Any]:
        assert self._http is not None
        started = time.monotonic()
        try:
            async with self._http.get(f"{base_url}/health/ready", allow_redirects=False) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            return {"ready": False, "detail": type(error).__name__}
        took_ms = round((time.monotonic() - started) * 1000, 1)
        try:
            checks = json.loads(body)
        except ValueError:
            checks = None
        return {"ready": status == 200, "status": status, "ms": took_ms, "checks": checks}


# -- the routes -----------------------------------------------------------------------------------


class Console:
    """The console's routes and the tasks behind them, started and stopped with the gateway."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.watchers = Watchers(settings.console_max_streams_per_client, settings.console_max_streams)
        kafka = settings.console_kafka()
        self.feed = (
            LiveFeed(kafka, settings.order_event_topic, settings.payment_event_topic, self.watchers)
            if kafka is not None
            else None
        )
        self.health = HealthProbe(
            {
                "billing": settings.billing_url,
                "order": settings.order_url,
                "notification": settings.notification_url,
            }
        )
        self.authenticator: Authenticator | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.authenticator = Authenticator(self.settings)
        feed_task = asyncio.create_task(self.feed.run(), name="console-feed") if self.feed else None
        try:
            async with self.health.running():
                yield
        finally:
            if feed_task is not None:
                feed_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed_task
            await self.authenticator.close()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", _to_console, methods=["GET", "HEAD"]),
            Route("/console", self._page, methods=["GET", "HEAD"]),
            Route("/console/", self._page, methods=["GET", "HEAD"]),
            Route("/console/config.json", self._config, methods=["GET"]),
            Route("/console/api/events", self._events, methods=["GET"]),
            Route("/console/api/dead-letters", self._dead_letters, methods=["GET"]),
            Route("/console/api/health", self._health, methods=["GET"]),
            Mount("/console/assets", app=StaticFiles(directory=STATIC_DIR), name="console-assets"),
        ]

    async def _page(self, _: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=_page_headers(self.settings))

    async def _config(self, _: Request) -> Response:
        settings = self.settings
        oidc = settings.auth_mode == "oidc"
        return JSONResponse(
            {
                "authMode": settings.auth_mode,
                "issuer": settings.oidc_issuer_url if oidc else None,
                "clientId": settings.console_oidc_client_id if oidc else None,
                "adminRole": settings.oidc_admin_role if oidc else None,
                "live": self.feed is not None,
                "maxAccounts": settings.console_max_accounts,
            }
        )

    async def _caller(self, request: Request) -> tuple[Caller, float | None]:
        """The caller and when its token expires (None: authentication off); raises _Refusal."""
        assert self.authenticator is not None
        if self.authenticator.verifier is None:
            return Caller.OPEN, None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _Refusal(401, "a bearer access token is required", {"WWW-Authenticate": "Bearer"})
        try:
            caller = await self.authenticator.verifier.verify(token)
        except InvalidToken:
            raise _Refusal(
                401, "the access token is not valid", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            ) from None
        except ProviderUnavailable:
            raise _Refusal(503, "the identity provider is unreachable", {"Retry-After": "1"}) from None
        # Verified just now, so its claims can be read as they are. (Imported here: PyJWT and
        # `cryptography` are ~10 MB of memory that a gateway with AUTH_MODE=off never needs.)
        import jwt

        expires = jwt.decode(token, options={"verify_signature": False}).get("exp")
        return caller, float(expires) if isinstance(expires, int | float) else None

    async def _events(self, request: Request) -> Response:
        try:
            caller, expires_at = await self._caller(request)
        except _Refusal as refusal:
            return refusal.response()
        try:
            accounts = frozenset(UUID(value) for value in request.query_params.getlist("account"))
        except ValueError:
            return JSONResponse({"detail": "each account must be an account id (a UUID)"}, status_code=422)
        if len(accounts) > self.settings.console_max_accounts:
            return JSONResponse(
                {"detail": f"at most {self.settings.console_max_accounts} accounts per stream"}, status_code=422
            )
        client = caller.subject or client_address(request.scope) or "?"
        watcher = Watcher(caller, client, accounts)
        try:
            self.watchers.add(watcher)
        except TooManyStreams as error:
            return JSONResponse({"detail": str(error)}, status_code=429, headers={"Retry-After": "5"})
        # A gateway shutting down ends the stream at once (serve.py); the page reconnects elsewhere.
        request.scope[ON_SERVER_SHUTDOWN] = partial(watcher.end, "the gateway is shutting down")
        ends_at = time.time() + self.settings.console_max_stream_s
        return _EventStream(
            self._stream(watcher, expires_at, ends_at),
            media_type="text/event-stream",
            # No proxy may buffer or transform it (nginx honours X-Accel-Buffering).
            headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, watcher: Watcher, expires_at: float | None, ends_at: float) -> AsyncIterator[str]:
        """Starlette cancels this when the client disconnects; `finally` then lets go of the slot.
        It ends by itself when the caller's token expires or, sooner, after console_max_stream_s."""
        try:
            yield _sse("hello", {"live": self.feed is not None and self.feed.connected})
            while watcher.ending is None:
                now = time.time()
                if expires_at is not None and expires_at <= now:
                    watcher.end("token expired")
                    break
                if ends_at <= now:
                    watcher.end("stream lifetime reached")
                    break
                wait_s = min(HEARTBEAT_S, ends_at - now, (expires_at - now) if expires_at is not None else HEARTBEAT_S)
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), wait_s)
                except TimeoutError:
                    yield ": heartbeat\n\n"
                    continue
                if watcher.ending is None:
                    yield _sse(event["kind"], event)
            yield _sse("bye", {"reason": watcher.ending})
        finally:
            self.watchers.remove(watcher)

    async def _dead_letters(self, request: Request) -> Response:
        try:
            caller, _ = await self._caller(request)
        except _Refusal as refusal:
            return refusal.response()
        if not caller.sees_everything:
            return JSONResponse({"detail": "dead letters are shown to admins only"}, status_code=403)
        entries = list(self.feed.dead_letters) if self.feed else []
        return JSONResponse({"live": self.feed is not None, "entries": entries})

    async def _health(self, request: Request) -> Response:
        try:
            caller, _ = await self._caller(request)
        except _Refusal as refusal:
            return refusal.response()
        answer = await self.health.check()
        if caller.is_admin:
            return JSONResponse(answer)
        # The services' own check results name hosts, statements and the last error of each
        # background loop (which may carry order numbers and subjects): for an admin only. With
        # authentication off there is no admin, and anyone sees whether each instance is ready.
        services = {
            service: [{key: value for key, value in instance.items() if key != "checks"} for instance in instances]
            for service, instances in answer["services"].items()
        }
        return JSONResponse({**answer, "services": services})


class _EventStream(StreamingResponse):
    """A StreamingResponse whose every write must be taken by the client within SEND_TIMEOUT_S.

    uvicorn's `send` waits while the client's socket buffers are full, so a client that stops
    reading would hold the stream (blocked in that write, its heartbeat never due) and its slot
    for ever. Given up on, the stream's generator is closed (its `finally` lets go of the slot)
    and the response left unfinished, which makes uvicorn close the connection."""

    async def stream_response(self, send: Send) -> None:
        async def send_or_give_up(message: Message) -> None:
            await asyncio.wait_for(send(message), SEND_TIMEOUT_S)

        try:
            await super().stream_response(send_or_give_up)
        except TimeoutError:
            log.info("console stream: the client read nothing for %.0f s; closing it", SEND_TIMEOUT_S)
        finally:
            body = self.body_iterator
            if isinstance(body, AsyncGenerator):
                await body.aclose()


class _Refusal(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str]) -> None:
        self.status, self.detail, self.headers = status, detail, headers

    def response(self) -> Response:
        return JSONResponse({"detail": self.detail}, status_code=self.status, headers=self.headers)


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _to_console(_: Request) -> Response:
    return RedirectResponse("/console/", status_code=307)


def _page_headers(settings: GatewaySettings) -> dict[str, str]:
    # The page runs only its own script and style and talks only to the gateway and, to sign in,
    # the identity provider: an injected script or a framing site gets nowhere. no-cache: a new
    # version of the console is picked up on the next load.
    issuer = urlsplit(settings.oidc_issuer_url) if settings.auth_mode == "oidc" and settings.oidc_issuer_url else None
    connect = "'self'" + (f" {issuer.scheme}://{issuer.netloc}" if issuer else "")
    policy = (
        f"default-src 'self'; connect-src {connect}; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )
    return {"Cache-Control": "no-cache", "Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff"}
