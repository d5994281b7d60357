"""notification_service schema: notifications, one per payment event

Revision ID: 0003_notification_service
Revises: 0002_order_service
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_notification_service"
down_revision: str | None = "0002_order_service"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "notification_service"


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {S}")
    op.create_table(
        "notifications",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True),
        sa.Column("event_id", sa.Uuid, nullable=False, unique=True),
        sa.Column("account_id", sa.Uuid, nullable=False),
        sa.Column("order_number", sa.Text, nullable=False),
        sa.Column("notification_type", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.UniqueConstraint("order_number", "notification_type", name="one_notice_per_outcome"),
        schema=S,
    )
    op.create_index("notifications_by_account", "notifications", ["account_id", "seq"], schema=S)


def downgrade() -> None:
    op.execute(f"DROP SCHEMA IF EXISTS {S} CASCADE")
