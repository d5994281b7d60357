"""Settings, read once from the environment at start-up and passed down (never imported as globals).

Names follow SPEC §7: DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS and, for the gateway, BILLING_URL,
ORDER_URL, NOTIFICATION_URL. Everything else has a default a local run can live with.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ProcessSettings(BaseSettings):
    """What every orbilnot process reads: how to log."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    log_level: str = "INFO"
    # JSON log lines in production; `orbilnot up` sets LOG_FORMAT=text for a readable console.
    log_format: str = Field(default="json", pattern="^(json|text)$")


class AuthSettings(ProcessSettings):
    """Who may call the API (issue 9; README "Authentication"). Off by default, seed-compatible."""

    auth_mode: Literal["off", "oidc"] = "off"
    # The issuer exactly as it appears in the tokens' `iss` (for Keycloak: .../realms/<realm>);
    # its keys are found through `<issuer>/.well-known/openid-configuration`.
    oidc_issuer_url: str | None = None
    oidc_audience: str | None = None
    oidc_admin_role: str = "orbilnot-admin"
    # Clock skew tolerated on exp/nbf/iat between the provider and us.
    oidc_leeway_s: float = Field(default=10.0, ge=0, le=300)
    # An unknown key id makes us fetch the issuer's keys again, at most this often.
    oidc_jwks_min_refresh_s: float = Field(default=5.0, ge=0)
    # /metrics is open by default (scrapers inside the cluster); true: it needs a valid token too.
    metrics_require_auth: bool = False

    @field_validator("oidc_issuer_url", "oidc_audience", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose passes `OIDC_ISSUER_URL: ${OIDC_ISSUER_URL:-}`: an empty variable means "not set".
        return None if value == "" else value

    @field_validator("oidc_issuer_url")
    @classmethod
    def _issuer_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"OIDC_ISSUER_URL must start with http:// or https://: {url!r}")
        return url  # kept exactly: it is compared with `iss` as is (Auth0's ends with a slash)

    @model_validator(mode="after")
    def _oidc_needs_issuer_and_audience(self) -> AuthSettings:
        if self.auth_mode == "oidc" and not (self.oidc_issuer_url and self.oidc_audience):
            raise ValueError("AUTH_MODE=oidc needs OIDC_ISSUER_URL and OIDC_AUDIENCE")
        if self.metrics_require_auth and self.auth_mode != "oidc":
            raise ValueError("METRICS_REQUIRE_AUTH=true needs AUTH_MODE=oidc")
        return self


class ServiceSettings(AuthSettings):
    """Configuration of one billing, order or notification process."""

    database_url: str
    kafka_bootstrap_servers: str

    order_event_topic: str = "order.event"
    payment_event_topic: str = "payment.event"
    topic_partitions: int = Field(default=6, ge=1)

    db_pool_size: int = Field(default=20, ge=1)
    # The relay and processors are woken right after the commit that creates their work; this
    # poll only picks up what other replicas or a crashed process left behind.
    safety_net_poll_s: float = Field(default=1.0, gt=0)
    relay_batch_size: int = Field(default=200, ge=1)
    consumer_batch_size: int = Field(default=500, ge=1)

    @field_validator("database_url")
    @classmethod
    def _use_asyncpg(cls, url: str) -> str:
        return async_database_url(url)

    @classmethod
    def of(cls, service: str) -> ServiceSettings:
        """The settings of one service: `<SERVICE>_DATABASE_URL` (its own role, e.g.
        `BILLING_DATABASE_URL`) wins over `DATABASE_URL`, so one environment can serve all
        processes (`orbilnot infra env`) while each connects as itself."""
        own_url = os.environ.get(f"{service.upper()}_DATABASE_URL")
        return cls(database_url=own_url) if own_url else cls()


class GatewaySettings(AuthSettings):
    """Configuration of the API gateway. Each upstream may list several comma-separated URLs."""

    billing_url: Annotated[list[str], NoDecode]
    order_url: Annotated[list[str], NoDecode]
    notification_url: Annotated[list[str], NoDecode]

    gateway_connect_timeout_s: float = Field(default=2.0, gt=0)
    gateway_read_timeout_s: float = Field(default=30.0, gt=0)
    gateway_max_body_bytes: int = Field(default=1024 * 1024, ge=0)
    gateway_cors_origins: Annotated[list[str], NoDecode] = ["*"]

    @field_validator("billing_url", "order_url", "notification_url", "gateway_cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    @field_validator("billing_url", "order_url", "notification_url")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        if not urls:
            raise ValueError("at least one upstream URL is required")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream URL must start with http:// or https://: {url!r}")
        return urls


def async_database_url(url: str) -> str:
    """Accept the plain `postgresql://` form operators write and select the asyncpg driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url
