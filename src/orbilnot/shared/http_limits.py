"""What one HTTP client may cost a server: header count and size, and how slowly it may send.

uvicorn (httptools) enforces none of it, measured with scripts/edge_probe.py: it takes any number
of headers of any size, never times out a client that is sending its request (its only timer is
the keep-alive one, armed after a response), and a connection that never sends a byte stays open
for ever. So the rules live here, in uvicorn's own protocol class extended, where they cost a
counter per header and a timer per request, and refuse before anything reaches the application:

- more than `max_headers` headers, or more than `max_header_bytes` of request line and headers
  → 431; the bytes are counted before the parser sees them, so one 32 MB header is refused after
  16 KiB instead of being accumulated;
- a request line and headers not complete `header_timeout_s` after their first byte (or after the
  connection opened, for its first request) → 408;
- a body not complete `body_timeout_s` after the headers, extended by a second per
  `body_min_bytes_per_s` bytes received (a minimum rate) → 408;

each answered with a small JSON body and `Connection: close`, then the connection is closed
after a short linger (what the client still sends is read and dropped, so that closing does not
reset the connection and destroy the answer before the client reads it). An
application still waiting for that body sees the client disconnect (the gateway then drops the
upstream request, which frees its pooled connection). Idle keep-alive connections are closed by
uvicorn's own `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from orbilnot.shared.config import HttpLimitSettings
from orbilnot.shared.observability import count_rejection

# How long a refused connection is still read (and what arrives dropped) before it is closed.
LINGER_S = 2.0

# A response that never ends on its own (the console's event stream) puts a callable under this
# key of its ASGI scope; the server's protocol calls it when a graceful shutdown begins, so the
# response can finish at once instead of holding the shutdown for its whole grace period.
ON_SERVER_SHUTDOWN = "orbilnot.on_server_shutdown"


class _HeadersTooLarge(Exception):
    """Raised from the parser's header callback; httptools hands it back wrapped in its own error."""


class EdgeLimitsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with the limits of `limits` (set by `with_limits`)."""

    limits: ClassVar[HttpLimitSettings] = HttpLimitSettings()

    _reading_headers = True
    _header_budget = 0  # bytes of the current request's head still allowed before the parser
    _header_count = 0
    _header_bytes = 0
    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _body_started = 0.0
    _body_received = 0
    _refused = False

    @classmethod
    def with_limits(cls, limits: HttpLimitSettings) -> type[EdgeLimitsProtocol]:
        """This protocol class with `limits` (uvicorn instantiates the class it is given itself)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_next_request()
        # A connection that never sends its first request is a silent client, not an idle one.
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: dropped unread
        self._unset_keepalive_if_required()
        if self._reading_headers:
            if self._header_timer is None:
                self._arm_header_timer()
            if len(data) > self._header_budget:
                # Feed the parser only what the head may still take: if the head is not complete
                # within it, the request is refused without the parser ever buffering the rest.
                allowed, rest = data[: self._header_budget], data[self._header_budget :]
                self._header_budget = 0
                if not self._feed(allowed) or self.transport.is_closing():
                    return
                if self._reading_headers:
                    self._refuse(431, "request headers too large")
                    return
                data = rest
            else:
                self._header_budget -= len(data)
        self._feed(data)

    def _feed(self, data: bytes) -> bool:
        """Parse `data` as uvicorn does; False if the connection was answered and closed."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, _HeadersTooLarge):
                self._refuse(431, str(error.__context__))
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        return True

    # -- parser callbacks ---------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # An exact count per request; the byte budget in data_received is per read and coarser.
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            raise _HeadersTooLarge(f"more than {self.limits.max_headers} request headers")
        if self._header_bytes > self.limits.max_header_bytes:
            raise _HeadersTooLarge(f"request headers larger than {self.limits.max_header_bytes} bytes")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()
        self._body_started = self.loop.time()
        self._body_received = 0
        self._body_timer = self.loop.call_at(self._body_deadline(), self._on_body_timeout)

    def on_body(self, body: bytes) -> None:
        self._body_received += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        super().on_message_complete()
        self._expect_next_request()

    # -- timers -------------------------------------------------------------------------------

    def _expect_next_request(self) -> None:
        self._reading_headers = True
        self._header_budget = self.limits.max_header_bytes
        self._header_count = 0
        self._header_bytes = 0

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._on_header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_deadline(self) -> float:
        earned_s = self._body_received / self.limits.body_min_bytes_per_s
        return self._body_started + self.limits.body_timeout_s + earned_s

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if not self._reading_headers or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelining client is still receiving our answer to its previous request: its next
            # one is not late yet.
            self._arm_header_timer()
            return
        self._refuse(408, "request headers not received in time")

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # The server is not reading (the application has not taken what came) or the client
            # waits for our `100 Continue`: not the client's slowness. Start its clock again.
            self._body_started = self.loop.time()
            self._body_received = 0
        elif self.loop.time() >= self._body_deadline():
            self._refuse(408, "request body not received in time")
            return
        self._body_timer = self.loop.call_at(self._body_deadline(), self._on_body_timeout)

    # -- answering ----------------------------------------------------------------------------

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` (unless a response is already under way) and close the connection."""
        count_rejection(status)  # refused before the application (and its metrics) saw the request
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The application is still on this connection: from now on it reads a disconnect and
            # its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started or self._reading_headers:
                # Our answer would land inside a response already under way (or one to an
                # earlier request on this connection, when it is the next request that is late).
                self.transport.close()
                return
        body = json.dumps({"detail": detail}).encode()
        head: list[Any] = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        self._linger()

    def _linger(self) -> None:
        """Close our side now and the connection once the client closes its own, or after LINGER_S."""
        self._refused = True
        self._cancel_header_timer()
        self._cancel_body_timer()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()  # keep reading, or a client still sending would wait for nothing
        self.loop.call_later(LINGER_S, self.transport.close)
