"""ownership (issue 9): who owns each account, who placed each order, whose each notification is

Revision ID: 0006_ownership
Revises: 0005_saga_integrity
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_ownership"
down_revision: str | None = "0005_saga_integrity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Subjects are the identity provider's `sub`; NULL means "made with AUTH_MODE=off" (rows from
# before this revision included): only an admin (or auth off) may touch those.


def upgrade() -> None:
    op.add_column("accounts", sa.Column("owner_sub", sa.Text), schema="billing")
    op.add_column("order_events", sa.Column("placed_by", sa.Text), schema="billing")
    op.add_column(
        "order_events",
        sa.Column("placed_by_admin", sa.Boolean, nullable=False, server_default=sa.false()),
        schema="billing",
    )
    op.add_column("orders", sa.Column("owner_sub", sa.Text), schema="order_service")
    op.add_column(
        "orders",
        sa.Column("placed_by_admin", sa.Boolean, nullable=False, server_default=sa.false()),
        schema="order_service",
    )
    op.add_column("notifications", sa.Column("owner_sub", sa.Text), schema="notification_service")


def downgrade() -> None:
    op.drop_column("notifications", "owner_sub", schema="notification_service")
    op.drop_column("orders", "placed_by_admin", schema="order_service")
    op.drop_column("orders", "owner_sub", schema="order_service")
    op.drop_column("order_events", "placed_by_admin", schema="billing")
    op.drop_column("order_events", "placed_by", schema="billing")
    op.drop_column("accounts", "owner_sub", schema="billing")
