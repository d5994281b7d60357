"""The OIDC token verifier (see `auth.py` for what it is for): PyJWT against the issuer's JWKS.

A module of its own so that a service with `AUTH_MODE=off` never imports it, nor PyJWT,
`cryptography` and httpx behind it (`Authenticator` imports it only in `oidc` mode).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from orbilnot.shared.auth import Caller, InvalidToken, ProviderUnavailable
from orbilnot.shared.config import AuthSettings

log = logging.getLogger(__name__)

# Asymmetric JWS algorithms only (RFC 7518): a symmetric one would let anyone holding the public
# JWKS forge tokens, and `none` is no signature at all.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# Claims a token must carry for us to use it at all.
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")


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


def _realm_roles(claims: dict[str, Any]) -> list[str]:
    # Keycloak puts realm roles under realm_access.roles; anything else shaped differently is ignored.
    realm_access = claims.get("realm_access")
    roles = realm_access.get("roles") if isinstance(realm_access, dict) else None
    return [role for role in roles if isinstance(role, str)] if isinstance(roles, list) else []
