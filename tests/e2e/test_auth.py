"""Issue 9 against a real Keycloak: who may call (401s), who may touch an account (ownership),
key rotation without a restart, and the open mode's warning.

Every ownership check runs twice: through the gateway and straight at the service that owns the
path, since each service verifies the token itself."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.utils import base64url_encode

from orbilnot.infra.keycloak import API_AUDIENCE, REALM, LocalKeycloak
from support import Stack, eventually_sync

PREFIX_SERVICE = {"/account": "billing", "/orders": "order", "/notifications": "notification"}


class Api:
    """Requests as one caller, either through the gateway or straight at each service."""

    def __init__(self, stack: Stack, token: str | None, *, direct: bool) -> None:
        self.stack, self.token, self.direct = stack, token, direct
        self.client = httpx.Client(timeout=15)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self.direct:
            service = next(name for prefix, name in PREFIX_SERVICE.items() if path.startswith(prefix))
            base = self.stack.urls[service]
        else:
            base = self.stack.gateway
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return self.client.request(method, base + path, headers=headers, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        assert response.status_code == 200, (method, path, response.status_code, response.text)
        return response.json()

    def open_account(self, deposit: int = 0) -> str:
        account: str = self.ok("POST", "/account/", json={"actionType": "CREATE_NEW", "amount": 0})
        if deposit:
            self.ok("PUT", "/account/", json={"accountId": account, "amount": deposit, "actionType": "DEPOSIT_MONEY"})
        return account

    def settled(self, account: str, order: str) -> dict[str, Any]:
        return eventually_sync(  # type: ignore[no-any-return]
            lambda: self.ok("GET", f"/orders/{account}/{order}"),
            lambda o: o["status"] in ("CONFIRMED", "CANCELLED"),
            what=f"order {order} decided",
        )


@dataclass
class Callers:
    alice: str
    bob: str
    admin: str


@pytest.fixture(scope="module")
def tokens(keycloak: LocalKeycloak) -> Callers:
    return Callers(*(keycloak.password_token(user) for user in ("alice", "bob", "admin")))


@pytest.fixture(params=["gateway", "direct"])
def route(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def api(stack: Stack, token: str | None, route: str) -> Api:
    return Api(stack, token, direct=route == "direct")


# -- 401: nobody valid is calling ------------------------------------------------------------------


class KeycloakAdmin:
    """Just enough of Keycloak's admin REST API for these tests."""

    def __init__(self, keycloak: LocalKeycloak) -> None:
        self.keycloak = keycloak
        self.base = f"{keycloak.base_url}/admin/realms/{REALM}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keycloak.admin_token()}"}

    def add_public_client(self, client_id: str, **extra: Any) -> None:
        body = {"clientId": client_id, "publicClient": True, "directAccessGrantsEnabled": True, **extra}
        response = httpx.post(f"{self.base}/clients", json=body, headers=self._headers(), timeout=30)
        assert response.status_code in (201, 409), response.text

    def add_signing_key(self, name: str, priority: int) -> None:
        realm_id = httpx.get(self.base, headers=self._headers(), timeout=30).json()["id"]
        component = {
            "name": name,
            "providerId": "rsa-generated",
            "providerType": "org.keycloak.keys.KeyProvider",
            "parentId": realm_id,
            "config": {"priority": [str(priority)], "enabled": ["true"], "active": ["true"], "algorithm": ["RS256"]},
        }
        response = httpx.post(f"{self.base}/components", json=component, headers=self._headers(), timeout=30)
        assert response.status_code == 201, response.text


AUDIENCE_MAPPER = {
    "name": "audience",
    "protocol": "openid-connect",
    "protocolMapper": "oidc-audience-mapper",
    "config": {"included.client.audience": API_AUDIENCE, "access.token.claim": "true"},
}


@pytest.fixture(scope="module")
def bad_tokens(keycloak: LocalKeycloak, tokens: Callers) -> dict[str, str]:
    """Tokens that must all be refused, each wrong in exactly one way."""
    admin = KeycloakAdmin(keycloak)
    # A client of the same realm whose tokens are not for our API.
    admin.add_public_client("orbilnot-test-other-audience")
    other_audience = keycloak.password_token("alice", client_id="orbilnot-test-other-audience")
    assert API_AUDIENCE not in jwt.decode(other_audience, options={"verify_signature": False})["aud"]
    # A client for our API whose tokens live one second.
    admin.add_public_client(
        "orbilnot-test-short-lived", attributes={"access.token.lifespan": "1"}, protocolMappers=[AUDIENCE_MAPPER]
    )
    short_lived = keycloak.password_token("alice", client_id="orbilnot-test-short-lived")

    genuine_header = jwt.get_unverified_header(tokens.alice)
    claims = jwt.decode(tokens.alice, options={"verify_signature": False})
    outsider_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = keycloak_public_pem(keycloak, genuine_header["kid"])
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": genuine_header["kid"]})
    return {
        "garbage": "not-a-token",
        "garbage JWS": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA",
        "expired": short_lived,
        "another audience": other_audience,
        "alg none": unsigned,
        # The classic confusion: HMAC "signed" with the issuer's public key as the secret.
        "HS256 with the public key": hs256_token(claims, public_pem, genuine_header["kid"]),
        "a key outside the JWKS, unknown kid": jwt.encode(
            claims, outsider_key, algorithm="RS256", headers={"kid": "not-in-the-jwks"}
        ),
        "a key outside the JWKS, a real kid": jwt.encode(
            claims, outsider_key, algorithm="RS256", headers={"kid": genuine_header["kid"]}
        ),
    }


def hs256_token(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """By hand, because PyJWT (rightly) refuses to use a PEM key as an HMAC secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = b".".join(base64url_encode(json.dumps(part).encode()) for part in (header, claims))
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64url_encode(signature)).decode()


def keycloak_public_pem(keycloak: LocalKeycloak, kid: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    jwks = httpx.get(f"{keycloak.issuer_url}/protocol/openid-connect/certs", timeout=30).json()
    key = jwt.PyJWKSet.from_dict(jwks)[kid].key
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[no-any-return, union-attr]


API_CALLS = [
    ("POST", "/account/", {"actionType": "CREATE_NEW", "amount": 0}),
    ("GET", f"/account/{uuid.uuid4()}", None),
    ("GET", f"/orders/{uuid.uuid4()}", None),
    ("POST", "/orders/", {"accountId": str(uuid.uuid4()), "amount": 1}),
    ("GET", f"/notifications/{uuid.uuid4()}", None),
]


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.status_code, response.text)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "detail" in response.json()


def test_without_a_token_every_api_call_is_401(auth_stack: Stack, route: str) -> None:
    anonymous = api(auth_stack, None, route)
    for method, path, body in API_CALLS:
        response = anonymous.request(method, path, json=body)
        assert_unauthorized(response)
        assert response.headers["www-authenticate"] == "Bearer"


def test_every_bad_token_is_401(auth_stack: Stack, bad_tokens: dict[str, str], route: str) -> None:
    for name, token in bad_tokens.items():
        caller = api(auth_stack, token, route)
        for method, path, body in API_CALLS:

            def call(caller: Api = caller, method: str = method, path: str = path, body: Any = body) -> httpx.Response:
                return caller.request(method, path, json=body)

            # The short-lived token is refused once its one second and the 1 s leeway are past.
            response = eventually_sync(call, lambda r: r.status_code == 401) if name == "expired" else call()
            assert response.status_code == 401, (name, method, path, response.status_code, response.text)
            assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"', name


def test_health_metrics_and_docs_stay_open(auth_stack: Stack) -> None:
    for service in ("billing", "order", "notification", "gateway"):
        base = auth_stack.urls[service]
        assert httpx.get(f"{base}/health/live").status_code == 200
        assert httpx.get(f"{base}/health/ready").status_code == 200
    for service in ("billing", "order", "gateway"):
        assert httpx.get(f"{auth_stack.urls[service]}/metrics").status_code == 200
    for path in ("/account/docs", "/orders/openapi.json", "/notifications/docs"):
        assert httpx.get(auth_stack.gateway + path).status_code == 200, path
    spec = httpx.get(auth_stack.gateway + "/account/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_metrics_can_be_restricted(auth_stack: Stack, tokens: Callers) -> None:
    notification = auth_stack.urls["notification"]  # started with METRICS_REQUIRE_AUTH=true
    assert_unauthorized(httpx.get(f"{notification}/metrics"))
    allowed = httpx.get(f"{notification}/metrics", headers={"Authorization": f"Bearer {tokens.bob}"})
    assert allowed.status_code == 200 and "orbilnot_http_requests_total" in allowed.text


# -- ownership --------------------------------------------------------------------------------------


def assert_same_as_missing(caller: Api, path: str, account: str, missing: str) -> None:
    """A stranger's answer about a real account is, byte for byte (ids aside), the answer about
    an account that does not exist."""
    as_stranger = caller.request("GET", path.format(account))
    for_nobody = caller.request("GET", path.format(missing))
    assert as_stranger.status_code == for_nobody.status_code == 404
    assert as_stranger.text == for_nobody.text.replace(missing, account)


def test_bob_cannot_see_change_order_on_or_list_alices_account(auth_stack: Stack, tokens: Callers, route: str) -> None:
    alice = api(auth_stack, tokens.alice, route)
    bob = api(auth_stack, tokens.bob, route)
    account = alice.open_account(deposit=1000)
    order = alice.ok("POST", "/orders/", json={"accountId": account, "amount": 300})
    assert alice.settled(account, order)["status"] == "CONFIRMED"
    order_number = f"{account}:{order}"
    notes = eventually_sync(lambda: alice.ok("GET", f"/notifications/{account}"), bool, what="alice's notification")
    missing = str(uuid.uuid4())

    # Reading: exactly what an account that does not exist answers.
    assert_same_as_missing(bob, "/account/{}", account, missing)
    assert_same_as_missing(bob, "/account/{}/transactions", account, missing)
    assert bob.ok("GET", f"/orders/{account}") == bob.ok("GET", f"/orders/{missing}") == []
    assert bob.ok("GET", f"/notifications/{account}") == bob.ok("GET", f"/notifications/{missing}") == []
    assert bob.request("GET", f"/orders/{account}/{order}").status_code == 404

    # Changing: refused as for a missing account, and nothing changed.
    for action in ("DEPOSIT_MONEY", "WITHDRAW_MONEY"):
        change = bob.request("PUT", "/account/", json={"accountId": account, "amount": 100, "actionType": action})
        absent = bob.request("PUT", "/account/", json={"accountId": missing, "amount": 100, "actionType": action})
        assert change.status_code == absent.status_code == 404
        assert change.json()["detail"] == absent.json()["detail"].replace(missing, account)
    amend = bob.request("PUT", "/orders/", json={"accountId": account, "orderNumber": order_number, "amount": 1})
    withdraw = bob.request("DELETE", "/orders/", json={"accountId": account, "orderNumber": order_number})
    assert amend.status_code == withdraw.status_code == 404

    # Ordering on it: accepted like an order on a missing account, then denied naming it missing.
    intrusion = bob.ok("POST", "/orders/", json={"accountId": account, "amount": 50})
    assert bob.settled(account, intrusion)["status"] == "CANCELLED"
    denial = eventually_sync(lambda: bob.ok("GET", f"/notifications/{account}"), bool, what="bob's denial")
    assert [n["body"] for n in denial] == [f"Account {account} not found"]

    # Alice's side is untouched and does not show bob's attempt.
    assert alice.ok("GET", f"/account/{account}")["balance"] == 700
    assert [o["id"] for o in alice.ok("GET", f"/orders/{account}")] == [order]
    assert alice.ok("GET", f"/notifications/{account}") == notes
    assert [e["kind"] for e in alice.ok("GET", f"/account/{account}/transactions")] == ["OPENING", "DEPOSIT", "PAYMENT"]


def test_the_admin_can_see_and_change_any_account(auth_stack: Stack, tokens: Callers, route: str) -> None:
    alice = api(auth_stack, tokens.alice, route)
    admin = api(auth_stack, tokens.admin, route)
    account = alice.open_account(deposit=500)

    assert admin.ok("GET", f"/account/{account}")["balance"] == 500
    assert len(admin.ok("GET", f"/account/{account}/transactions")) == 2
    admin.ok("PUT", "/account/", json={"accountId": account, "amount": 100, "actionType": "WITHDRAW_MONEY"})
    # An order the admin places on alice's account is paid from it, and becomes alice's.
    order = admin.ok("POST", "/orders/", json={"accountId": account, "amount": 150})
    assert admin.settled(account, order)["status"] == "CONFIRMED"
    assert alice.ok("GET", f"/account/{account}")["balance"] == 250
    assert [o["id"] for o in alice.ok("GET", f"/orders/{account}")] == [order]
    assert [o["id"] for o in admin.ok("GET", f"/orders/{account}")] == [order]
    eventually_sync(lambda: alice.ok("GET", f"/notifications/{account}"), bool, what="alice's notification")
    assert len(admin.ok("GET", f"/notifications/{account}")) == 1
    # The admin withdraws it: refunded to alice.
    refunding = admin.ok("DELETE", "/orders/", json={"accountId": account, "orderNumber": f"{account}:{order}"})
    assert refunding["status"] == "REFUND_PENDING"
    eventually_sync(lambda: alice.ok("GET", f"/account/{account}")["balance"], lambda b: b == 400, what="the refund")


# -- key rotation -----------------------------------------------------------------------------------


def test_a_key_rotated_in_keycloak_is_picked_up_without_a_restart(
    auth_stack: Stack, keycloak: LocalKeycloak, tokens: Callers
) -> None:
    before = api(auth_stack, tokens.alice, "direct")
    account = before.open_account()  # every service has the current keys cached from here on
    for route in ("gateway", "direct"):
        assert api(auth_stack, tokens.alice, route).ok("GET", f"/orders/{account}") == []
    old_kid = jwt.get_unverified_header(tokens.alice)["kid"]
    processes = {name: process.pid for name, process in auth_stack.processes.items()}

    KeycloakAdmin(keycloak).add_signing_key(f"rotated-{uuid.uuid4().hex[:6]}", priority=1000 + int(time.time()) % 1000)
    rotated = keycloak.password_token("alice")
    assert jwt.get_unverified_header(rotated)["kid"] != old_kid

    for route in ("gateway", "direct"):
        after = api(auth_stack, rotated, route)
        assert after.ok("GET", f"/account/{account}")["balance"] == 0
        assert after.ok("GET", f"/orders/{account}") == []
        assert after.ok("GET", f"/notifications/{account}") == []
    assert {name: process.pid for name, process in auth_stack.processes.items()} == processes
    assert all(process.poll() is None for process in auth_stack.processes.values())


# -- the open mode ----------------------------------------------------------------------------------


def test_with_auth_off_the_gateway_warns_that_the_api_is_open(stack: Stack) -> None:
    log = stack.logs / "gateway.log"
    assert "AUTH_MODE=off" in log.read_text(), "the gateway says at start that anyone may call the API"
