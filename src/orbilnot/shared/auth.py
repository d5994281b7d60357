"""Who is calling (issue 9): bearer access tokens from an OpenID Connect provider, verified here.

Every service verifies the token itself; none trusts an identity header a client could send
through the gateway. With `AUTH_MODE=off` (the default, seed-compatible) every caller is
`Caller.OPEN`, who may touch everything.

Verification is local and cheap per request: a token already verified is remembered with its
expiry (a client sends the same token for its whole lifetime), and the issuer's signing keys (its
JWKS, found through OIDC discovery) are fetched once and kept; a token naming a key id we do not hold makes us fetch
the JWKS again — that is how a key rotated at the provider is picked up without a restart — but
at most once per `OIDC_JWKS_MIN_REFRESH_S`, so a stream of made-up key ids cannot turn every
request into a call to the provider. Only asymmetric algorithms are accepted: `none` and `HS*`
(whose "key" would be the public key itself) are refused before any key is looked at.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import httpx
import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.responses import JSONResponse, Response

from orbilnot.shared.config import AuthSettings

log = logging.getLogger(__name__)

# Asymmetric JWS algorithms only (RFC 7518): a symmetric one would let anyone holding the public
# JWKS forge tokens, and `none` is no signature at all.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# Claims a token must carry for us to use it at all.
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")


@dataclass(frozen=True, slots=True)
class Caller:
    """The verified caller of one request. `subject` is None only when authentication is off."""

    subject: str | None
    is_admin: bool = False

    OPEN: ClassVar[Caller]

    @property
    def sees_everything(self) -> bool:
        return self.is_admin or self.subject is None

    def may_touch(self, owner: str | None) -> bool:
        """May this caller read or change something owned by `owner` (None: made with auth off)?"""
        return self.sees_everything or owner == self.subject


Caller.OPEN = Caller(subject=None, is_admin=False)


class InvalidToken(Exception):
    """The token cannot be accepted; the message says why (logged, never sent to the client)."""


class TokenVerifier:
    """Verifies access tokens of one issuer for one audience, with the issuer's keys cached."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        admin_role: str,
        leeway_s: float,
        min_refresh_s: float,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.admin_role = admin_role
        self.leeway_s = leeway_s
        self.min_refresh_s = min_refresh_s
        self._http = http
        self._clock = clock
        self._jwks_uri: str | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._refresh_lock = asyncio.Lock()
        self._wall_clock = wall_clock
        # Tokens already verified, with their expiry: a client sends the same token with every
        # request for its whole lifetime, and a full check (PyJWT parses the token twice, char by
        # char) costs a few hundred microseconds. Only fully verified tokens get in; a hit still
        # checks the expiry. LRU-bounded.
        self._verified: OrderedDict[str, tuple[Caller, float]] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def from_settings(cls, settings: AuthSettings, http: httpx.AsyncClient) -> TokenVerifier:
        assert settings.oidc_issuer_url is not None and settings.oidc_audience is not None  # validated
        return cls(
            issuer=settings.oidc_issuer_url,
            audience=settings.oidc_audience,
            admin_role=settings.oidc_admin_role,
            leeway_s=settings.oidc_leeway_s,
            min_refresh_s=settings.oidc_jwks_min_refresh_s,
            http=http,
        )

    async def verify(self, token: str) -> Caller:
        cached = self._verified.get(token)
        if cached is not None:
            caller, expires_at = cached
            if self._wall_clock() <= expires_at + self.leeway_s:
                self._verified.move_to_end(token)
                return caller
            del self._verified[token]
            raise InvalidToken("the token has expired")
        caller, expires_at = await self._verify_fully(token)
        self._verified[token] = (caller, expires_at)
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return caller

    async def _verify_fully(self, token: str) -> tuple[Caller, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise InvalidToken(f"not a JWS: {error}") from None
        algorithm = header.get("alg")
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise InvalidToken(f"algorithm {algorithm!r} is not accepted")
        key = await self._key(header.get("kid"))
        try:
            # PyJWT also refuses a token whose `alg` is not the one the JWK is bound to.
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("the token has no usable subject")
        return Caller(subject=subject, is_admin=self.admin_role in _realm_roles(claims)), float(claims["exp"])

    async def _key(self, key_id: object) -> jwt.PyJWK:
        if not isinstance(key_id, str):
            raise InvalidToken("the token names no key id")
        key = self._keys.get(key_id)
        if key is not None:
            return key
        async with self._refresh_lock:
            key = self._keys.get(key_id)  # fetched by a request that held the lock before us
            if key is None and self._may_refresh():
                await self._refresh()
                key = self._keys.get(key_id)
        if key is None:
            raise InvalidToken(f"key {key_id!r} is not in the issuer's JWKS")
        return key

    def _may_refresh(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self.min_refresh_s

    async def _refresh(self) -> None:
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            response = await self._http.get(self._jwks_uri)
            response.raise_for_status()
            key_set = jwt.PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
            # The provider is unreachable or answers nonsense: the token cannot be checked now.
            # Remember the attempt anyway, so that an outage is not hammered once per request.
            self._fetched_at = self._clock()
            log.warning("could not fetch the signing keys of %s: %s", self.issuer, error)
            raise ProviderUnavailable(str(error)) from error
        self._fetched_at = self._clock()
        self._keys = {key.key_id: key for key in key_set.keys if key.key_id and key.public_key_use in (None, "sig")}
        log.info("fetched %d signing keys of %s", len(self._keys), self.issuer)

    async def _discover(self) -> str:
        response = await self._http.get(f"{self.issuer.rstrip('/')}/.well-known/openid-configuration")
        response.raise_for_status()
        document = response.json()
        if document.get("issuer") != self.issuer:
            raise ValueError(f"discovery names issuer {document.get('issuer')!r}, expected {self.issuer!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("http://", "https://")):
            raise ValueError(f"discovery has no usable jwks_uri: {jwks_uri!r}")
        return jwks_uri


class ProviderUnavailable(Exception):
    """The issuer's keys could not be fetched: answered 503, as a database outage is."""


def _realm_roles(claims: dict[str, Any]) -> list[str]:
    # Keycloak puts realm roles under realm_access.roles; anything else shaped differently is ignored.
    realm_access = claims.get("realm_access")
    roles = realm_access.get("roles") if isinstance(realm_access, dict) else None
    return [role for role in roles if isinstance(role, str)] if isinstance(roles, list) else []


class Authenticator:
    """What an app holds: the mode, and in `oidc` mode the verifier and its HTTP client."""

    def __init__(self, settings: AuthSettings) -> None:
        self.enabled = settings.auth_mode == "oidc"
        self.metrics_restricted = settings.metrics_require_auth
        self._http: httpx.AsyncClient | None = None
        self.verifier: TokenVerifier | None = None
        if self.enabled:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=False)
            self.verifier = TokenVerifier.from_settings(settings, self._http)

    async def caller(self, credentials: HTTPAuthorizationCredentials | None) -> Caller:
        if self.verifier is None:
            return Caller.OPEN
        if credentials is None:
            raise _unauthorized(None)
        try:
            return await self.verifier.verify(credentials.credentials)
        except InvalidToken as error:
            log.info("bearer token refused: %s", error)
            raise _unauthorized("invalid_token") from None
        except ProviderUnavailable:
            raise HTTPException(
                status_code=503, detail="the identity provider is unreachable", headers={"Retry-After": "1"}
            ) from None

    async def guard_metrics(self, request: Request) -> Response | None:
        """With METRICS_REQUIRE_AUTH, /metrics wants a valid token too (any subject)."""
        scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
        credentials = (
            HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if scheme.lower() == "bearer" else None
        )
        try:
            await self.caller(credentials)
        except HTTPException as refusal:
            return JSONResponse({"detail": refusal.detail}, status_code=refusal.status_code, headers=refusal.headers)
        return None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _unauthorized(error: str | None) -> HTTPException:
    # RFC 6750 §3: no error code when no credentials were sent, `invalid_token` otherwise.
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    detail = "a bearer access token is required" if error is None else "the access token is not valid"
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": challenge})


# auto_error=False: we answer the 401 ourselves (with the challenge), and with auth off a missing
# header is fine. Declaring it still puts the bearer scheme into each service's OpenAPI docs.
_bearer = HTTPBearer(auto_error=False, description="An access token of the configured OIDC issuer")


async def current_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.caller(credentials)


CallerDep = Annotated[Caller, Depends(current_caller)]
"""What a route declares to learn who calls it (a 401 has been answered if nobody valid does)."""
