"""Settings, read once from the environment at start-up and passed down (never imported as globals).

Names follow SPEC §7: DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS and, for the gateway, BILLING_URL,
ORDER_URL, NOTIFICATION_URL. Everything else has a default a local run can live with.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from orbilnot.shared.kafka import KafkaConnection


class ProcessSettings(BaseSettings):
    """What every orbilnot process reads: how to log."""

    # An empty variable counts as unset: Compose passes `${VAR:-}` through as "" for options the
    # operator did not set.
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", env_ignore_empty=True)

    log_level: str = "INFO"
    # JSON log lines in production; `orbilnot up` sets LOG_FORMAT=text for a readable console.
    log_format: str = Field(default="json", pattern="^(json|text)$")


class HttpLimitSettings(BaseSettings):
    """What any client may cost a server process, gateway or service (SPEC "Edge limits"; README)."""

    model_config = SettingsConfigDict(env_prefix="HTTP_", case_sensitive=False, extra="ignore")

    # More than either is refused with 431 before the request reaches the application.
    max_headers: int = Field(default=100, ge=1)
    max_header_bytes: int = Field(default=16 * 1024, ge=256)  # the request line and all headers
    # A request's line and headers must all arrive within this, counted from its first byte (or
    # from the connection's opening, for its first request); else 408 and the connection closes.
    header_timeout_s: float = Field(default=10.0, gt=0)
    # A body must arrive within body_timeout_s, extended by one second per body_min_bytes_per_s
    # bytes received (a minimum rate, as Apache's mod_reqtimeout); else 408 and the connection closes.
    body_timeout_s: float = Field(default=10.0, gt=0)
    body_min_bytes_per_s: int = Field(default=1024, ge=1)
    # An idle keep-alive connection is closed after this; unset, each process keeps its own
    # default (serve.py: 75 s for the gateway, 3 s for a service).
    keep_alive_s: int | None = Field(default=None, ge=1)
    # On shutdown, an idle keep-alive connection is kept this long (at most) for a request a
    # client may already be sending on it (serve.py, DrainingHttpProtocol); unset: 3 s.
    shutdown_drain_s: float | None = Field(default=None, ge=0, le=30)

    def with_room_for_forwarding(self) -> HttpLimitSettings:
        """A service's limits: a request the gateway let through still fits once the gateway has
        added its own headers (Host, X-Forwarded-For/-Proto/-Host, X-Request-Id) to it."""
        return self.model_copy(
            update={"max_headers": self.max_headers + 8, "max_header_bytes": self.max_header_bytes + 2048}
        )


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


class DatabaseSettings(ProcessSettings):
    """Where the database is: DATABASE_URL, and optionally DATABASE_PASSWORD.

    A password with URL-reserved characters (`@`, `/`, `%`, `:` ...) breaks a URL it is pasted
    into. Given separately as DATABASE_PASSWORD (as the Helm chart does, from a Secret), it
    replaces any password in DATABASE_URL and is percent-encoded here, whatever it contains.
    """

    database_url: str
    database_password: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _use_asyncpg(cls, url: str) -> str:
        return async_database_url(url)

    @model_validator(mode="after")
    def _insert_password(self) -> DatabaseSettings:
        if self.database_password is not None:
            self.database_url = url_with_password(self.database_url, self.database_password.get_secret_value())
        return self


class KafkaClientSettings(ProcessSettings):
    """How a process's Kafka clients authenticate, and the topics' names (services and gateway)."""

    # A secured cluster: SASL (PLAIN or SCRAM) with or without TLS; KAFKA_SSL_CAFILE is the CA
    # that signed the brokers' certificates (empty: the system's trusted CAs).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None

    order_event_topic: str = "order.event"
    payment_event_topic: str = "payment.event"

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaClientSettings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} "
                "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        return self

    def kafka_connection_to(self, bootstrap_servers: str) -> KafkaConnection:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        return KafkaConnection(
            bootstrap_servers=bootstrap_servers,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism if sasl else None,
            sasl_username=self.kafka_sasl_username if sasl else None,
            sasl_password=self.kafka_sasl_password.get_secret_value() if sasl and self.kafka_sasl_password else None,
            ssl_cafile=self.kafka_ssl_cafile or None,
        )


class ServiceSettings(DatabaseSettings, AuthSettings, KafkaClientSettings):
    """Configuration of one billing, order or notification process."""

    kafka_bootstrap_servers: str
    # The topics this service creates when they are missing (existing ones are left alone).
    kafka_topic_replication_factor: int = Field(default=1, ge=1)
    kafka_topic_min_insync_replicas: int | None = Field(default=None, ge=1)
    topic_partitions: int = Field(default=6, ge=1)

    db_pool_size: int = Field(default=20, ge=1)
    # The relay and processors are woken right after the commit that creates their work; this
    # poll only picks up what other replicas or a crashed process left behind.
    safety_net_poll_s: float = Field(default=1.0, gt=0)
    relay_batch_size: int = Field(default=200, ge=1)
    # Published outbox rows are deleted once older than this (0: kept for ever). Kafka holds the
    # events and the consumers' inboxes recognise copies, so they are only a record for operators.
    outbox_retention_hours: float = Field(default=24.0, ge=0)
    consumer_batch_size: int = Field(default=500, ge=1)
    # A relay, processor or consumer failing for longer than this makes /health/ready say 503.
    stuck_after_s: float = Field(default=30.0, gt=0)

    @classmethod
    def of(cls, service: str) -> ServiceSettings:
        """The settings of one service: `<SERVICE>_DATABASE_URL` (its own role, e.g.
        `BILLING_DATABASE_URL`) wins over `DATABASE_URL`, so one environment can serve all
        processes (`orbilnot infra env`) while each connects as itself."""
        own_url = os.environ.get(f"{service.upper()}_DATABASE_URL")
        return cls(database_url=own_url) if own_url else cls()

    def kafka_connection(self) -> KafkaConnection:
        return self.kafka_connection_to(self.kafka_bootstrap_servers)


class GatewaySettings(AuthSettings, KafkaClientSettings):
    """Configuration of the API gateway. Each upstream may list several comma-separated URLs."""

    billing_url: Annotated[list[str], NoDecode]
    order_url: Annotated[list[str], NoDecode]
    notification_url: Annotated[list[str], NoDecode]

    gateway_connect_timeout_s: float = Field(default=2.0, gt=0)
    gateway_read_timeout_s: float = Field(default=30.0, gt=0)
    gateway_max_body_bytes: int = Field(default=1024 * 1024, ge=0)
    # Connections to all upstreams together: the most requests the gateway forwards at once.
    gateway_upstream_connections: int = Field(default=256, ge=1)
    # A token bucket per client address: this many requests a second on average, up to `burst` at
    # once; 0 turns the limit off. Generous: aimed at a runaway client, not at ordinary heavy use
    # (the benchmark's hundreds of orders a second from one address pass untouched).
    gateway_rate_limit_per_s: float = Field(default=2000.0, ge=0)
    gateway_rate_limit_burst: int = Field(default=4000, ge=1)
    gateway_cors_origins: Annotated[list[str], NoDecode] = ["*"]

    # The console's live feed (gateway/console.py) reads the order, payment and dead-letter topics
    # from here; unset, the console still works, refreshing only after the user's own actions.
    kafka_bootstrap_servers: str | None = None
    # What one client (address, or subject with AUTH_MODE=oidc) and all clients together may hold
    # open as live streams; each stream watches at most console_max_accounts accounts.
    console_max_streams_per_client: int = Field(default=4, ge=1)
    console_max_streams: int = Field(default=500, ge=1)
    console_max_accounts: int = Field(default=20, ge=1)
    # How long one stream lasts at most (the page reconnects and reloads): with authentication off
    # no token expiry ends it, and a slot held for ever is a slot taken from everyone else.
    console_max_stream_s: float = Field(default=600.0, gt=0)
    # The OIDC client the console signs in with (authorization code + PKCE, a public client).
    console_oidc_client_id: str = "orbilnot-console"

    def console_kafka(self) -> KafkaConnection | None:
        return None if self.kafka_bootstrap_servers is None else self.kafka_connection_to(self.kafka_bootstrap_servers)

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


def url_with_password(url: str, password: str) -> str:
    """`url` with its password replaced by `password`, percent-encoded as a URL needs it."""
    return make_url(url).set(password=password).render_as_string(hide_password=False)
