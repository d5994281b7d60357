"""trace context (issue 11): billing's inbox keeps the trace context its event came with

The processor decides an inbox row later, in another task; with tracing on, the row's
`trace_context` (W3C `traceparent`, as Kafka headers) lets the decision and the payment result
it records continue the order's trace. NULL when tracing is off or the message carried none.

Revision ID: 0008_trace_context
Revises: 0007_parking_and_outbox_refusals
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008_trace_context"
down_revision: str | None = "0007_parking_and_outbox_refusals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("order_events", sa.Column("trace_context", JSONB), schema="billing")


def downgrade() -> None:
    op.drop_column("order_events", "trace_context", schema="billing")
