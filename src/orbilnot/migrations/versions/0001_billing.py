"""billing schema: accounts, ledger, order_events inbox

Revision ID: 0001_billing
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_billing"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "billing"
NOW = sa.text("now()")


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {S}")
    op.create_table(
        "accounts",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("balance", sa.Numeric(15, 2), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.CheckConstraint("balance >= 0", name="balance_never_negative"),
        schema=S,
    )
    op.create_table(
        "ledger",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("account_id", sa.Uuid, sa.ForeignKey(f"{S}.accounts.id"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric(15, 2), nullable=False),
        sa.Column("balance_after", sa.Numeric(15, 2), nullable=False),
        sa.Column("order_number", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.CheckConstraint("kind IN ('OPENING','DEPOSIT','WITHDRAWAL','PAYMENT','REFUND')", name="ledger_kind_known"),
        sa.CheckConstraint("balance_after >= 0", name="ledger_balance_never_negative"),
        schema=S,
    )
    op.create_index("ledger_by_account", "ledger", ["account_id", "id"], schema=S)
    # An order is charged at most once and refunded at most once: the database says so.
    op.create_index(
        "one_payment_per_order", "ledger", ["order_number"], unique=True, schema=S,
        postgresql_where=sa.text("kind = 'PAYMENT'"),
    )  # fmt: skip
    op.create_index(
        "one_refund_per_order", "ledger", ["order_number"], unique=True, schema=S,
        postgresql_where=sa.text("kind = 'REFUND'"),
    )  # fmt: skip
    op.create_table(
        "order_events",
        sa.Column("event_id", sa.Uuid, primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("account_id", sa.Uuid, nullable=False),
        sa.Column("order_number", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric(15, 2), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("result_event_id", sa.Uuid, unique=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("processed_at", sa.DateTime(timezone=True)),
        sa.Column("executed_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "status IN ('RECEIVED','PAYMENT_CONFIRMED','PAYMENT_DENIED','REFUNDED','EXECUTED')",
            name="order_event_status_known",
        ),
        schema=S,
    )
    # The processor's and the relay's claim queries scan only the rows still in play.
    op.create_index(
        "order_events_in_play", "order_events", ["seq"], schema=S,
        postgresql_where=sa.text("status <> 'EXECUTED'"),
    )  # fmt: skip


def downgrade() -> None:
    op.execute(f"DROP SCHEMA IF EXISTS {S} CASCADE")
