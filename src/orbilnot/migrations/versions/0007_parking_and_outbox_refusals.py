"""parking in every consumer, refused outbox messages (issue 7)

- `order_service.processed_events`: a `status` (PROCESSED, or PARKED when the payment result
  could not be applied for a reason of its own) and the `error` of a parked one.
- `notification_service.parked_events`: payment events whose notification could not be stored.
- both outboxes: `refused_at` and `error`, for a message the broker refused on its own (set
  aside so that the rows behind it keep flowing).

Revision ID: 0007_parking_and_outbox_refusals
Revises: 0006_ownership
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_parking_and_outbox_refusals"
down_revision: str | None = "0006_ownership"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTBOXES = ("billing", "order_service")


def upgrade() -> None:
    op.add_column(
        "processed_events",
        sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'PROCESSED'")),
        schema="order_service",
    )
    op.add_column("processed_events", sa.Column("error", sa.Text), schema="order_service")
    op.create_check_constraint(
        "processed_event_status_known",
        "processed_events",
        "status IN ('PROCESSED','PARKED')",
        schema="order_service",
    )
    op.create_table(
        "parked_events",
        sa.Column("event_id", sa.Uuid, primary_key=True),
        sa.Column("account_id", sa.Uuid, nullable=False),
        sa.Column("order_number", sa.Text, nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        schema="notification_service",
    )
    for schema in OUTBOXES:
        op.add_column("outbox", sa.Column("refused_at", sa.DateTime(timezone=True)), schema=schema)
        op.add_column("outbox", sa.Column("error", sa.Text), schema=schema)


def downgrade() -> None:
    for schema in OUTBOXES:
        op.drop_column("outbox", "error", schema=schema)
        op.drop_column("outbox", "refused_at", schema=schema)
    op.drop_table("parked_events", schema="notification_service")
    op.drop_constraint("processed_event_status_known", "processed_events", schema="order_service")
    op.drop_column("processed_events", "error", schema="order_service")
    op.drop_column("processed_events", "status", schema="order_service")
