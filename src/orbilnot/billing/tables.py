"""Billing's tables, all in the `billing` schema (the migrations create them)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Identity,
    MetaData,
    Numeric,
    Table,
    Text,
    Uuid,
    func,
)

SCHEMA = "billing"
metadata = MetaData(schema=SCHEMA)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("balance", Numeric(15, 2), nullable=False),  # CHECK (balance >= 0) in the migration
    # The subject that opened it (issue 9); NULL: opened with authentication off.
    Column("owner_sub", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Every balance change, signed: the balance is always the sum of `amount`. A partial unique index
# per kind on order_number makes "charged once, refunded once" a database fact.
ledger = Table(
    "ledger",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("account_id", Uuid, nullable=False),
    Column("kind", Text, nullable=False),
    Column("amount", Numeric(15, 2), nullable=False),
    Column("balance_after", Numeric(15, 2), nullable=False),
    Column("order_number", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The inbox (seed: order_events): one row per order event, keyed by its event id so a
# redelivered event is recognised by the primary key. It is also the outbox of the payment
# results: a processed row owes one payment event until the relay marks it EXECUTED.
order_events = Table(
    "order_events",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("seq", BigInteger, Identity(), nullable=False, unique=True),
    Column("event_type", Text, nullable=False),
    Column("account_id", Uuid, nullable=False),
    Column("order_number", Text, nullable=False),
    Column("amount", Numeric(15, 2), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    # Who placed the order (the event's extension fields), and whose the result is (issue 9).
    Column("placed_by", Text),
    Column("placed_by_admin", Boolean, nullable=False, server_default="false"),
    Column("result_owner_sub", Text),
    Column("status", Text, nullable=False),
    Column("description", Text),
    Column("result_event_id", Uuid, unique=True),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("processed_at", DateTime(timezone=True)),
    Column("executed_at", DateTime(timezone=True)),
)
