"""The API gateway (SPEC §2): the single entry point, forwarding each request to the service that
owns its path prefix, unchanged except for the `/order` alias.

    /account...        → billing
    /orders...         → order
    /order...          → order, as /orders...
    /notifications...  → notification

The gateway's own `/health/live`, `/health/ready` and `/metrics` are served at the root, and the
live console at `/console` (`/` redirects there; console.py); anything else is a JSON 404.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from orbilnot.gateway.console import Console
from orbilnot.gateway.proxy import Proxy
from orbilnot.gateway.rate_limit import KeyFunction, RateLimitMiddleware, TokenBuckets, client_address
from orbilnot.gateway.upstreams import PrefixRule, Upstream
from orbilnot.shared.config import GatewaySettings
from orbilnot.shared.observability import REQUEST_ID_HEADER, RequestContextMiddleware, health_routes

log = logging.getLogger(__name__)

_UPSTREAM_PATH = "orbilnot.upstream_path"


def create_app(settings: GatewaySettings, rate_limit_key: KeyFunction = client_address) -> Starlette:
    """The gateway app; its HTTP client to the services lives as long as the app's lifespan.

    `rate_limit_key` says whose token bucket a request draws from (rate_limit.py).
    """
    proxy = Proxy(settings)
    console = Console(settings)

    async def readiness() -> dict[str, bool]:
        # Deliberately not the services' health: a gateway that reports itself unready whenever a
        # service is down would only add a second outage on top of the first.
        return {"upstreamClient": proxy.is_running}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if settings.auth_mode == "off":
            log.warning(
                "AUTH_MODE=off: the API is open, anyone who knows an account id may use it "
                "(set AUTH_MODE=oidc with OIDC_ISSUER_URL and OIDC_AUDIENCE to require tokens)"
            )
        else:
            # The services verify every token themselves; the gateway passes Authorization on.
            log.info("AUTH_MODE=oidc: the services require access tokens of %s", settings.oidc_issuer_url)
        async with proxy.running(), console.running():
            yield

    routes: list[BaseRoute] = [*health_routes(readiness), *console.routes()]
    routes += [ProxyRoute(rule, proxy) for rule in prefix_rules(settings)]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            # Outermost, so that every answer (CORS preflights included) carries a request id.
            Middleware(RequestContextMiddleware),
            Middleware(
                CORSMiddleware,
                allow_origins=settings.gateway_cors_origins,
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=[REQUEST_ID_HEADER],
            ),
            # Inside CORS, so that a browser can read a 429 (and its Retry-After).
            *_rate_limit(settings, rate_limit_key),
        ],
        exception_handlers={HTTPException: _json_http_error},
    )
    # SPEC §2: never answer with a redirect, not even to add or remove a trailing slash.
    app.router.redirect_slashes = False
    return app


def _rate_limit(settings: GatewaySettings, key: KeyFunction) -> list[Middleware]:
    if settings.gateway_rate_limit_per_s == 0:
        return []
    buckets = TokenBuckets(settings.gateway_rate_limit_per_s, settings.gateway_rate_limit_burst)
    return [Middleware(RateLimitMiddleware, buckets=buckets, key=key)]


def prefix_rules(settings: GatewaySettings) -> list[PrefixRule]:
    """The routing table. `/orders` and `/order` share one upstream, hence one round-robin."""
    billing = Upstream.from_urls("billing", settings.billing_url)
    order = Upstream.from_urls("order", settings.order_url)
    notification = Upstream.from_urls("notification", settings.notification_url)
    return [
        PrefixRule(b"/account", billing),
        PrefixRule(b"/orders", order),
        PrefixRule(b"/order", order, rewrite_to=b"/orders"),
        PrefixRule(b"/notifications", notification),
    ]


class ProxyRoute(BaseRoute):
    """Every HTTP request under one prefix, forwarded to that prefix's upstream.

    A route (rather than a middleware) so that Starlette's router does the dispatching and the
    metrics label requests by prefix (`route.path`), not by the unbounded set of full URLs.
    """

    def __init__(self, rule: PrefixRule, proxy: Proxy) -> None:
        self.rule = rule
        self.proxy = proxy
        self.path = rule.prefix.decode("ascii")

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        # The raw path, so the upstream gets the client's exact percent-encoding.
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        upstream_path = self.rule.upstream_path(raw_path)
        if upstream_path is None:
            return Match.NONE, {}
        return Match.FULL, {_UPSTREAM_PATH: upstream_path, "route": self}  # "route": for the metrics label

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.proxy.forward(scope, receive, send, self.rule.upstream, scope[_UPSTREAM_PATH])


async def _json_http_error(_: Request, exc: Exception) -> Response:
    """Errors the gateway raises itself (unknown path, wrong method) as `{"detail": ...}`."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
