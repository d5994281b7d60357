"""The token verifier's own logic, with an in-memory issuer (keys made here, JWKS served by
httpx.MockTransport): what it accepts and refuses, and when it goes back to the issuer for keys.
The same behaviour against a real Keycloak is in tests/e2e/test_auth.py."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from orbilnot.shared.auth import Caller, InvalidToken, ProviderUnavailable
from orbilnot.shared.oidc import TokenVerifier

ISSUER = "https://sso.example.test/realms/orbilnot"
AUDIENCE = "orbilnot-api"


class FakeIssuer:
    """Serves discovery and a JWKS; counts how often the JWKS is fetched."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.jwks_fetches = 0
        self.discovered_issuer = ISSUER
        self.down = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return httpx.Response(503)
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json={"issuer": self.discovered_issuer, "jwks_uri": f"{ISSUER}/certs"})
        if request.url.path.endswith("/certs"):
            self.jwks_fetches += 1
            return httpx.Response(200, json={"keys": [self._jwk(kid, key) for kid, key in self.keys.items()]})
        return httpx.Response(404)

    @staticmethod
    def _jwk(kid: str, key: Any) -> dict[str, Any]:
        algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
        jwk |= {"kid": kid, "use": "sig", "alg": "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"}
        return jwk

    def token(self, kid: str = "k1", algorithm: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice-id", "iat": now, "exp": now + 300, **claims}
        body = {name: value for name, value in body.items() if value is not None}
        return jwt.encode(body, self.keys[kid], algorithm=algorithm, headers={"kid": kid})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer()


@pytest.fixture
def clock() -> Clock:
    return Clock()


class WallClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def wall_clock() -> WallClock:
    return WallClock()


@pytest.fixture
def verifier(issuer: FakeIssuer, clock: Clock, wall_clock: WallClock) -> TokenVerifier:
    http = httpx.AsyncClient(transport=httpx.MockTransport(issuer.handle))
    return TokenVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        admin_role="orbilnot-admin",
        leeway_s=5,
        min_refresh_s=10,
        http=http,
        clock=clock,
        wall_clock=wall_clock,
        cache_size=3,
    )


async def test_a_good_token_names_its_subject_and_roles(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    assert await verifier.verify(issuer.token()) == Caller("alice-id", is_admin=False)
    admin = issuer.token(realm_access={"roles": ["orbilnot-admin"]})
    assert await verifier.verify(admin) == Caller("alice-id", is_admin=True)
    assert (await verifier.verify(issuer.token(realm_access={"roles": "orbilnot-admin"}))).is_admin is False


async def test_keys_are_fetched_once_not_per_request(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    for _ in range(20):
        await verifier.verify(issuer.token())
    assert issuer.jwks_fetches == 1


@pytest.mark.parametrize(
    "claims",
    [
        # Times relative to when the test runs (see below), not to when the module was collected:
        # collected long before, an "nbf in a minute" would already have passed.
        {"exp": -60},
        {"nbf": +60},
        {"aud": "another-api"},
        {"iss": "https://evil.example.test/realms/orbilnot"},
        {"sub": None},
        {"exp": None},
        {"sub": ""},
    ],
    ids=["expired", "not-yet-valid", "audience", "issuer", "no-sub", "no-exp", "empty-sub"],
)
async def test_claims_are_checked(issuer: FakeIssuer, verifier: TokenVerifier, claims: dict[str, Any]) -> None:
    now = int(time.time())
    claims = {
        name: now + value if name in ("exp", "nbf") and value is not None else value for name, value in claims.items()
    }
    with pytest.raises(InvalidToken):
        await verifier.verify(issuer.token(**claims))


async def test_a_small_clock_skew_is_tolerated(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    await verifier.verify(issuer.token(exp=int(time.time()) - 2, nbf=int(time.time()) + 2))


async def test_none_and_symmetric_algorithms_are_refused_without_asking_the_issuer(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    claims = jwt.decode(issuer.token(), options={"verify_signature": False})
    for token in (
        jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"}),
        jwt.encode(claims, "a-shared-secret-of-some-length-32b", algorithm="HS256", headers={"kid": "k1"}),
    ):
        with pytest.raises(InvalidToken, match="not accepted"):
            await verifier.verify(token)
    assert issuer.jwks_fetches == 0


async def test_a_token_whose_alg_does_not_match_the_key_is_refused(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    issuer.keys["k2"] = ec.generate_private_key(ec.SECP256R1())
    await verifier.verify(issuer.token(kid="k2", algorithm="ES256"))
    forged = issuer.token(kid="k1", algorithm="PS256")  # a real RSA key, but the JWK says RS256
    with pytest.raises(InvalidToken):
        await verifier.verify(forged)


async def test_an_unknown_kid_refetches_the_keys_so_rotation_needs_no_restart(
    issuer: FakeIssuer, verifier: TokenVerifier, clock: Clock
) -> None:
    await verifier.verify(issuer.token())
    issuer.keys["k2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    clock.now += 10
    assert await verifier.verify(issuer.token(kid="k2")) == Caller("alice-id")
    assert issuer.jwks_fetches == 2


async def test_unknown_kids_cannot_make_every_request_call_the_issuer(
    issuer: FakeIssuer, verifier: TokenVerifier, clock: Clock
) -> None:
    await verifier.verify(issuer.token())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(issuer.token(), options={"verify_signature": False})
    for n in range(50):
        with pytest.raises(InvalidToken, match="not in the issuer's JWKS"):
            await verifier.verify(jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": f"made-up-{n}"}))
    assert issuer.jwks_fetches == 1, "within OIDC_JWKS_MIN_REFRESH_S the keys are not fetched again"
    clock.now += 10
    with pytest.raises(InvalidToken):
        await verifier.verify(jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": "made-up-again"}))
    assert issuer.jwks_fetches == 2


async def test_a_key_outside_the_jwks_under_a_known_kid_is_refused(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(issuer.token(), options={"verify_signature": False})
    with pytest.raises(InvalidToken, match="Signature"):
        await verifier.verify(jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": "k1"}))


async def test_discovery_must_name_the_configured_issuer(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    issuer.discovered_issuer = "https://elsewhere.example.test/realms/orbilnot"
    with pytest.raises(ProviderUnavailable):
        await verifier.verify(issuer.token())


async def test_an_unreachable_issuer_is_not_an_invalid_token(
    issuer: FakeIssuer, verifier: TokenVerifier, clock: Clock
) -> None:
    issuer.down = True
    with pytest.raises(ProviderUnavailable):
        await verifier.verify(issuer.token())
    issuer.down = False
    clock.now += 10
    assert await verifier.verify(issuer.token()) == Caller("alice-id")


async def test_a_verified_token_is_remembered_until_it_expires(
    issuer: FakeIssuer, verifier: TokenVerifier, clock: Clock, wall_clock: WallClock
) -> None:
    token = issuer.token(exp=int(time.time()) + 60)
    assert await verifier.verify(token) == Caller("alice-id")
    # k1 leaves the issuer's keys and the verifier learns it (a k2 token makes it fetch them):
    # a full check of `token` would fail now; a remembered token is not checked again.
    issuer.keys = {"k2": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
    clock.now += 10
    await verifier.verify(issuer.token(kid="k2"))
    assert await verifier.verify(token) == Caller("alice-id")
    wall_clock.offset = 60 + 5 + 1  # past exp and the leeway
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)


async def test_only_verified_tokens_are_remembered_and_the_memory_is_bounded(
    issuer: FakeIssuer, verifier: TokenVerifier, clock: Clock
) -> None:
    bad = issuer.token(aud="another-api")
    for _ in range(2):
        with pytest.raises(InvalidToken):
            await verifier.verify(bad)
    tokens = [issuer.token(jti=str(n)) for n in range(5)]
    for token in tokens:
        await verifier.verify(token)
    # The issuer replaces k1 by k2, and a k2 token makes the verifier fetch the keys again: from
    # now on a full check of a k1 token fails.
    issuer.keys = {"k2": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
    clock.now += 10
    await verifier.verify(issuer.token(kid="k2"))
    for token in tokens[-2:]:
        await verifier.verify(token)
    with pytest.raises(InvalidToken):
        await verifier.verify(tokens[0])  # pushed out by newer ones (cache_size=3), so checked again


def test_open_mode_may_touch_everything_and_a_subject_only_its_own() -> None:
    assert Caller.OPEN.may_touch(None) and Caller.OPEN.may_touch("bob-id")
    alice = Caller("alice-id")
    assert alice.may_touch("alice-id")
    assert not alice.may_touch("bob-id")
    assert not alice.may_touch(None), "what was made with auth off is not alice's"
    assert Caller("admin-id", is_admin=True).may_touch("bob-id")
