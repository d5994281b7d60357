"""Order's tables, all in the `order_service` schema. The constraints are declared here, once;
the migrations create the same (a test compares the two)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
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

from orbilnot.shared.outbox import outbox_table

SCHEMA = "order_service"
metadata = MetaData(schema=SCHEMA)

# `created_event_id` names the outbox row of the order's CREATED event: while that row was never
# attempted the order is NEW and may still be amended or deleted (the row with it); the relay's
# attempt moves the order to SENT in the same transaction.
orders = Table(
    "orders",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("seq", BigInteger, Identity(), nullable=False, unique=True),
    Column("account_id", Uuid, nullable=False),
    Column("order_number", Text, nullable=False, unique=True),
    Column("amount", Numeric(14, 2), nullable=False),
    Column("status", Text, nullable=False),
    Column("created_event_id", Uuid, unique=True),
    # Who may see and change it (issue 9): the subject that placed it; once billing has decided,
    # the account owner it names (so an admin's order on bob's account becomes bob's). NULL:
    # placed with authentication off. `placed_by_admin` travels in its events to billing.
    Column("owner_sub", Text),
    Column("placed_by_admin", Boolean, nullable=False, server_default="false"),
    Column("idempotency_key", Text),
    Column("request_fingerprint", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("amount > 0", name="order_amount_positive"),
    CheckConstraint(
        "status IN ('NEW','SENT','CONFIRMED','CANCELLED','REFUND_PENDING','REFUNDED')", name="order_status_known"
    ),
    Index("orders_by_account", "account_id", "seq"),
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
# the primary key before it can touch an order. An event whose result could not be applied for a
# reason of its own is PARKED instead, with the error (`handlers.park_payment_result`).
processed_events = Table(
    "processed_events",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("status", Text, nullable=False, server_default=text("'PROCESSED'")),
    Column("error", Text),
    CheckConstraint("status IN ('PROCESSED','PARKED')", name="processed_event_status_known"),
)

# Every event the order service owes `order.event` (CREATED, CANCELLED), see shared/outbox.py.
outbox = outbox_table(metadata)
