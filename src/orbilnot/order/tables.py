"""Order's tables, all in the `order_service` schema (the migrations create them)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Identity,
    Index,
    MetaData,
    Numeric,
    Table,
    Text,
    Uuid,
    func,
    text,
)

SCHEMA = "order_service"
metadata = MetaData(schema=SCHEMA)

# The order row is also its own outbox: `pending_event_type`/`pending_event_id` say which event
# it still owes `order.event`. The relay claims such rows with SKIP LOCKED and clears them once
# the broker acknowledged. Amending or deleting an order locks the same row, so neither can slip
# in between "published" and "marked SENT".
orders = Table(
    "orders",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("seq", BigInteger, Identity(), nullable=False, unique=True),
    Column("account_id", Uuid, nullable=False),
    Column("order_number", Text, nullable=False, unique=True),
    Column("amount", Numeric(14, 2), nullable=False),
    Column("status", Text, nullable=False),
    # Who may see and change it (issue 9): the subject that placed it; once billing has decided,
    # the account owner it names (so an admin's order on bob's account becomes bob's). NULL:
    # placed with authentication off. `placed_by_admin` travels in its events to billing.
    Column("owner_sub", Text),
    Column("placed_by_admin", Boolean, nullable=False, server_default="false"),
    Column("pending_event_type", Text),
    Column("pending_event_id", Uuid, unique=True),
    Column("idempotency_key", Text),
    Column("request_fingerprint", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # An Idempotency-Key is the client's name for one request of one account (migration 0004).
    Index(
        "idempotency_key_per_account",
        "account_id",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
)

# The inbox of payment events: the event id is inserted first, so a redelivery is dropped by
# the primary key before it can touch an order.
processed_events = Table(
    "processed_events",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
