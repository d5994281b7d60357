"""Rate limiting at the gateway: a token bucket per client, 429 with `Retry-After` when it is empty.

Who "a client" is comes from a key function of the ASGI scope, by default the client's address
(which uvicorn takes from `X-Forwarded-For` only when the peer is listed in FORWARDED_ALLOW_IPS).
Once requests carry an authenticated subject, a key function can return it instead (or both,
e.g. `f"{subject}@{address}"`), without touching the buckets or the middleware.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable

from prometheus_client import Counter
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

RATE_LIMITED = Counter("orbilnot_gateway_rate_limited_total", "Requests the gateway refused with 429 (rate limit)")

KeyFunction = Callable[[Scope], str | None]
"""Who is asking, as a bucket key; None: not limited."""


def client_address(scope: Scope) -> str | None:
    """Whom a request is counted against: its client's IPv4 address or IPv6 /64 (`client_key`)."""
    client = scope.get("client")
    return client_key(str(client[0])) if client else None


def client_key(address: str | None) -> str:
    """Whom a stream is counted against with authentication off: its IPv4 address, or its IPv6
    /64 — one host is commonly given a whole /64, so counting its addresses would not limit it."""
    if address is None:
        return "?"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class TokenBuckets:
    """One bucket per key, holding up to `burst` tokens and refilled at `rate_per_s`.

    Pure bookkeeping (the clock is injectable). A bucket that has been left alone long enough to be
    full again is the same as no bucket, so such buckets are forgotten, at most once per refill
    period: memory follows the clients seen in the last few seconds, not all clients ever seen.
    """

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._refill_s = burst / rate_per_s  # an empty bucket is full again after this
        self._buckets: dict[str, list[float]] = {}  # key → [tokens, when they were counted]
        self._next_forget = clock() + self._refill_s

    def take(self, key: str) -> float:
        """Take a token for `key`: 0.0 if there was one, else the seconds until there is."""
        now = self._clock()
        if now >= self._next_forget:
            self._forget_full(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [self.burst - 1.0, now]
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate_per_s)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate_per_s

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_full(self, now: float) -> None:
        self._buckets = {key: b for key, b in self._buckets.items() if now - b[1] < self._refill_s}
        self._next_forget = now + self._refill_s


class RateLimitMiddleware:
    """Pure ASGI: a request whose client has no token left is answered 429 and goes no further.

    The gateway's own `/health/...` and `/metrics` are never limited: a kubelet, load balancer or
    Prometheus sharing an address with busy clients must not see the gateway as dead.
    """

    def __init__(self, app: ASGIApp, buckets: TokenBuckets, key: KeyFunction = client_address) -> None:
        self.app = app
        self.buckets = buckets
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _is_operational(scope["path"]):
            key = self.key(scope)
            if key is not None:
                wait_s = self.buckets.take(key)
                if wait_s > 0.0:
                    RATE_LIMITED.inc()
                    retry_after = str(max(1, math.ceil(wait_s)))
                    response = JSONResponse(
                        {"detail": "too many requests"}, status_code=429, headers={"Retry-After": retry_after}
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _is_operational(path: str) -> bool:
    return path.startswith("/health/") or path == "/metrics"
