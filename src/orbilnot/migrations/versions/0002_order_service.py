"""order_service schema: orders (their own outbox) and the payment-event inbox

Revision ID: 0002_order_service
Revises: 0001_billing
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_order_service"
down_revision: str | None = "0001_billing"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "order_service"
NOW = sa.text("now()")


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {S}")
    op.create_table(
        "orders",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True),
        sa.Column("account_id", sa.Uuid, nullable=False),
        sa.Column("order_number", sa.Text, nullable=False, unique=True),
        sa.Column("amount", sa.Numeric(14, 2), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("pending_event_type", sa.Text),
        sa.Column("pending_event_id", sa.Uuid, unique=True),
        sa.Column("idempotency_key", sa.Text, unique=True),
        sa.Column("request_fingerprint", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.CheckConstraint("amount > 0", name="order_amount_positive"),
        sa.CheckConstraint(
            "status IN ('NEW','SENT','CONFIRMED','CANCELLED','REFUND_PENDING','REFUNDED')",
            name="order_status_known",
        ),
        sa.CheckConstraint("(pending_event_type IS NULL) = (pending_event_id IS NULL)", name="pending_event_whole"),
        schema=S,
    )
    op.create_index("orders_by_account", "orders", ["account_id", "seq"], schema=S)
    # The relay's claim query scans only orders that still owe an event.
    op.create_index(
        "orders_owing_an_event", "orders", ["seq"], schema=S,
        postgresql_where=sa.text("pending_event_id IS NOT NULL"),
    )  # fmt: skip
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.Uuid, primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        schema=S,
    )


def downgrade() -> None:
    op.execute(f"DROP SCHEMA IF EXISTS {S} CASCADE")
