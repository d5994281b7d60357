"""Billing's tables, all in the `billing` schema. The constraints are declared here, once; the
migrations create the same (a test compares the two)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
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
from sqlalchemy.dialects.postgresql import JSONB

from orbilnot.shared.money import MAX_MONEY
from orbilnot.shared.outbox import outbox_table

SCHEMA = "billing"
metadata = MetaData(schema=SCHEMA)

# `refundable` is what the account paid for orders and may still get back. A deposit is refused
# when it would take balance + refundable past MAX_MONEY, so every refund (of money actually paid)
# still leaves the balance within MAX_MONEY: no sequence of API calls can make a refund overflow.
accounts = Table(
    "accounts",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("balance", Numeric(15, 2), nullable=False),
    Column("refundable", Numeric(15, 2), nullable=False, server_default=text("0")),
    # The subject that opened it (issue 9); NULL: opened with authentication off.
    Column("owner_sub", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("balance >= 0", name="balance_never_negative"),
    CheckConstraint("refundable >= 0", name="refundable_never_negative"),
    CheckConstraint(f"balance + refundable <= {MAX_MONEY}", name="balance_within_maximum"),
)

# Every balance change, signed: the balance is always the sum of `amount`. A partial unique index
# per kind on order_number makes "charged once, refunded once" a database fact.
ledger = Table(
    "ledger",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("account_id", Uuid, ForeignKey("billing.accounts.id"), nullable=False),
    Column("kind", Text, nullable=False),
    Column("amount", Numeric(15, 2), nullable=False),
    Column("balance_after", Numeric(15, 2), nullable=False),
    Column("order_number", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("kind IN ('OPENING','DEPOSIT','WITHDRAWAL','PAYMENT','REFUND')", name="ledger_kind_known"),
    CheckConstraint("balance_after >= 0", name="ledger_balance_never_negative"),
    Index("ledger_by_account", "account_id", "id"),
    Index("one_payment_per_order", "order_number", unique=True, postgresql_where=text("kind = 'PAYMENT'")),
    Index("one_refund_per_order", "order_number", unique=True, postgresql_where=text("kind = 'REFUND'")),
)

# The inbox (seed: order_events): one row per order event, keyed by its event id so a
# redelivered event is recognised by the primary key. The processor decides each RECEIVED row
# (PAYMENT_CONFIRMED, PAYMENT_DENIED, REFUNDED) or, when it fails on its own, sets it aside as
# PARKED with the error in `description`; either way the payment event it answers with
# (`result_event_id`) is recorded in the outbox in the same transaction.
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
    # Who placed the order (the event's extension fields, issue 9): billing pays only for its owner or an admin.
    Column("placed_by", Text),
    Column("placed_by_admin", Boolean, nullable=False, server_default="false"),
    Column("status", Text, nullable=False),
    Column("description", Text),
    Column("result_event_id", Uuid, unique=True),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("processed_at", DateTime(timezone=True)),
    # With tracing on, the trace context the event came with ({traceparent: …}), so the decision,
    # made later by the processor, continues the order's trace (shared/tracing.py).
    Column("trace_context", JSONB),
    CheckConstraint(
        "status IN ('RECEIVED','PAYMENT_CONFIRMED','PAYMENT_DENIED','REFUNDED','PARKED')",
        name="order_event_status_known",
    ),
    # The processor's claim scans only what is still to decide.
    Index("order_events_received", "seq", postgresql_where=text("status = 'RECEIVED'")),
)

# Every payment event billing owes `payment.event`, see shared/outbox.py.
outbox = outbox_table(metadata)
