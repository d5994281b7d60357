"""saga integrity (issue 7): an outbox per schema, refundable money, parked inbox rows

- `billing.outbox` and `order_service.outbox`: every event to publish, as an immutable
  serialised message, recorded with the change that causes it. The events still owed under the
  old design (orders' `pending_event_*`, billing rows decided but not EXECUTED) move into them.
- `billing.accounts.refundable`: what each account paid and may get back; deposits keep
  balance + refundable within the maximum, so every refund fits.
- billing's inbox: PARKED rows; no EXECUTED any more (the outbox says what was published).
- orders: `created_event_id` (the outbox row of the CREATED) replaces `pending_event_*`.

Revision ID: 0005_saga_integrity
Revises: 0004_idempotency_key_per_account
"""

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005_saga_integrity"
down_revision: str | None = "0004_idempotency_key_per_account"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")
MAX_MONEY = "999999999999.99"
# The events owed when this runs go to the topics the services are configured with (the same
# variables, read here once; the defaults are the services' own).
ORDER_EVENT_TOPIC = os.environ.get("ORDER_EVENT_TOPIC", "order.event")
PAYMENT_EVENT_TOPIC = os.environ.get("PAYMENT_EVENT_TOPIC", "payment.event")


def _create_outbox(schema: str) -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.Uuid, nullable=False, unique=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("headers", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("claimed_until", sa.DateTime(timezone=True)),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        schema=schema,
    )
    op.create_index(
        "outbox_unpublished", "outbox", ["id"], schema=schema, postgresql_where=sa.text("published_at IS NULL")
    )


def upgrade() -> None:
    # -- billing ---------------------------------------------------------------------------------
    S = "billing"
    _create_outbox(S)
    op.add_column("accounts", sa.Column("refundable", sa.Numeric(15, 2), nullable=False, server_default="0"), schema=S)
    op.execute(f"""
        UPDATE {S}.accounts a SET refundable = paid.total
        FROM (SELECT account_id, -sum(amount) AS total FROM {S}.ledger
              WHERE kind IN ('PAYMENT', 'REFUND') AND order_number IS NOT NULL GROUP BY account_id) paid
        WHERE paid.account_id = a.id""")
    op.create_check_constraint("refundable_never_negative", "accounts", "refundable >= 0", schema=S)
    # NOT VALID: a balance a refund took past the maximum before this revision stays readable.
    op.execute(
        f"ALTER TABLE {S}.accounts ADD CONSTRAINT balance_within_maximum "
        f"CHECK (balance + refundable <= {MAX_MONEY}) NOT VALID"
    )
    # Results decided but not yet published go to the outbox, as the old relay would have sent them.
    op.execute(f"""
        INSERT INTO {S}.outbox (event_id, topic, key, value)
        SELECT result_event_id, '{PAYMENT_EVENT_TOPIC}', account_id::text, json_build_object(
            'eventId', result_event_id, 'paymentEventType', status, 'accountId', account_id,
            'orderNumber', order_number, 'amount', amount, 'description', description,
            'occurredAt', processed_at)::text
        FROM {S}.order_events WHERE status IN ('PAYMENT_CONFIRMED', 'PAYMENT_DENIED', 'REFUNDED')
        ORDER BY seq""")
    # EXECUTED rows become the decision they published, read back from their description.
    op.execute(f"""
        UPDATE {S}.order_events SET status = CASE
            WHEN event_type = 'CANCELLED' THEN 'REFUNDED'
            WHEN description IN ('Payment confirmed', 'Payment already made') THEN 'PAYMENT_CONFIRMED'
            ELSE 'PAYMENT_DENIED' END
        WHERE status = 'EXECUTED'""")
    op.drop_constraint("order_event_status_known", "order_events", schema=S)
    op.create_check_constraint(
        "order_event_status_known",
        "order_events",
        "status IN ('RECEIVED','PAYMENT_CONFIRMED','PAYMENT_DENIED','REFUNDED','PARKED')",
        schema=S,
    )
    op.drop_index("order_events_in_play", "order_events", schema=S)
    op.create_index(
        "order_events_received", "order_events", ["seq"], schema=S, postgresql_where=sa.text("status = 'RECEIVED'")
    )
    op.drop_column("order_events", "executed_at", schema=S)

    # -- order_service -----------------------------------------------------------------------------
    S = "order_service"
    _create_outbox(S)
    op.add_column("orders", sa.Column("created_event_id", sa.Uuid), schema=S)
    op.create_unique_constraint("orders_created_event_id_key", "orders", ["created_event_id"], schema=S)
    op.execute(f"""
        INSERT INTO {S}.outbox (event_id, topic, key, value)
        SELECT pending_event_id, '{ORDER_EVENT_TOPIC}', account_id::text, json_build_object(
            'eventId', pending_event_id, 'eventType', pending_event_type, 'accountId', account_id,
            'orderNumber', order_number, 'amount', amount, 'occurredAt', updated_at)::text
        FROM {S}.orders WHERE pending_event_id IS NOT NULL ORDER BY seq""")
    op.execute(f"UPDATE {S}.orders SET created_event_id = pending_event_id WHERE status = 'NEW'")
    op.drop_index("orders_owing_an_event", "orders", schema=S)
    op.drop_constraint("pending_event_whole", "orders", schema=S)
    op.drop_column("orders", "pending_event_type", schema=S)
    op.drop_column("orders", "pending_event_id", schema=S)


def downgrade() -> None:
    raise NotImplementedError("0005 moves owed events into the outboxes; restore a backup to go back")
