"""order_service: an Idempotency-Key belongs to one account

Revision ID: 0004_idempotency_key_per_account
Revises: 0003_notification_service

A key was unique across all accounts, so one account could occupy a key another was about to
use (409), and a repeat from another account got the first account's order id back (issue 8).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_idempotency_key_per_account"
down_revision: str | None = "0003_notification_service"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "order_service"


def upgrade() -> None:
    op.drop_constraint("orders_idempotency_key_key", "orders", schema=S, type_="unique")
    op.execute(
        f"CREATE UNIQUE INDEX idempotency_key_per_account ON {S}.orders (account_id, idempotency_key) "
        "WHERE idempotency_key IS NOT NULL"
    )


def downgrade() -> None:
    op.execute(f"DROP INDEX {S}.idempotency_key_per_account")
    op.create_unique_constraint("orders_idempotency_key_key", "orders", ["idempotency_key"], schema=S)
