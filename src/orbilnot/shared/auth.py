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
(whose "key" would be the public key itself) are refused before any key is looked at. The
verifier is in `oidc.py`, imported only when AUTH_MODE=oidc.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.responses import JSONResponse, Response

from orbilnot.shared.config import AuthSettings

if TYPE_CHECKING:
    import httpx

    from orbilnot.shared.oidc import TokenVerifier

log = logging.getLogger(__name__)


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


class ProviderUnavailable(Exception):
    """The issuer's keys could not be fetched: answered 503, as a database outage is."""


class Authenticator:
    """What an app holds: the mode, and in `oidc` mode the verifier and its HTTP client."""

    def __init__(self, settings: AuthSettings) -> None:
        self.enabled = settings.auth_mode == "oidc"
        self.metrics_restricted = settings.metrics_require_auth
        self._http: httpx.AsyncClient | None = None
        self.verifier: TokenVerifier | None = None
        if self.enabled:
            # Imported only here: the token stack (PyJWT with `cryptography`, httpx) is ~15 MB of
            # every service's memory, and with AUTH_MODE=off nothing needs it.
            import httpx

            from orbilnot.shared.oidc import TokenVerifier

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
    caller = await authenticator.caller(credentials)
    request.state.caller = caller  # for `verified_caller`
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
"""What a route declares to learn who calls it (a 401 has been answered if nobody valid does)."""


def verified_caller(request: Request) -> Caller:
    """The caller that the app-wide `current_caller` dependency (`create_service_app`) verified
    for this request, for a hot route that reads it from its `Request` instead of declaring
    `CallerDep`: FastAPI solves a declared dependency again, with its own sub-dependencies, even
    when it was solved before (about 10 µs of CPU each, a third of the POST /orders overhead)."""
    caller: Caller = request.state.caller
    return caller
