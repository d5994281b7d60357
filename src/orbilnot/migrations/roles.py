"""Least privilege in the database (SPEC §9): one login role per service, with rights on its own
schema only; the migrations run as the owner of the schemas (`DATABASE_URL` of `orbilnot migrate`).

The contract, the same for `orbilnot up`, Docker Compose and the Helm chart:
- `orbilnot migrate` is given, besides the owner's `DATABASE_URL`, the services' passwords in
  `BILLING_DB_PASSWORD`, `ORDER_DB_PASSWORD`, `NOTIFICATION_DB_PASSWORD`. For each one given it
  creates the role (`orbilnot_billing`, …) or sets its password (this needs CREATEROLE).
- After every migration it grants each service role that exists what it needs on its own schema
  (and to read the migration revision, for `orbilnot migrate --wait`), nothing on the others.
- Each service's `DATABASE_URL` names its own role.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping

from sqlalchemy import text
from sqlalchemy.engine import Connection

SERVICE_SCHEMAS = {"billing": "billing", "order": "order_service", "notification": "notification_service"}
"""The schema each service owns rows in (SPEC §6)."""


def role_of(service: str) -> str:
    return f"orbilnot_{service}"


def password_variable(service: str) -> str:
    return f"{service.upper()}_DB_PASSWORD"


def service_passwords_from(environ: Mapping[str, str]) -> dict[str, str]:
    """The services' passwords `orbilnot migrate` was given, by service name."""
    return {
        service: environ[password_variable(service)]
        for service in SERVICE_SCHEMAS
        if environ.get(password_variable(service))
    }


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677), computed here
    so that the password itself never reaches the server, nor its statement logs."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def ensure_service_roles(connection: Connection, passwords: Mapping[str, str]) -> None:
    """Create each service's login role, or update its password. Roles belong to the whole server,
    so another database's migration may create the same role at the same moment: that is fine."""
    for service, password in passwords.items():
        role = role_of(service)
        connection.execute(
            text(
                "DO $$ BEGIN"
                f" IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF;"
                " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;"
                " END $$"
            )
        )
        # The verifier holds only base64 and '$:' characters: safe inside the quotes (its colons
        # escaped, or SQLAlchemy would take ":abc" for a bind parameter).
        verifier = scram_verifier(password).replace(":", "\\:")
        connection.execute(text(f"ALTER ROLE {role} WITH LOGIN PASSWORD '{verifier}'"))


def grant_service_rights(connection: Connection) -> None:
    """Give each existing service role read and write on the tables and sequences of its own schema
    and read on the migration revision; no role gets anything on another service's schema."""
    existing = set(connection.execute(text("SELECT rolname FROM pg_roles WHERE rolname LIKE 'orbilnot\\_%'")).scalars())
    for service, schema in SERVICE_SCHEMAS.items():
        role = role_of(service)
        if role not in existing:
            continue
        for statement in (
            f"GRANT USAGE ON SCHEMA {schema} TO {role}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
            f"GRANT SELECT ON public.alembic_version TO {role}",
        ):
            connection.execute(text(statement))
