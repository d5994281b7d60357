"""Notification's table, in the `notification_service` schema (the migrations create it)."""

from sqlalchemy import BigInteger, Column, DateTime, Identity, MetaData, Table, Text, Uuid, func

SCHEMA = "notification_service"
metadata = MetaData(schema=SCHEMA)

# One row per payment event: `event_id` is unique, so a redelivered event stores nothing, and
# (order_number, notification_type) is unique too, so one order never gets two notices of the
# same outcome even if billing ever sent it twice under different ids.
notifications = Table(
    "notifications",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("seq", BigInteger, Identity(), nullable=False, unique=True),
    Column("event_id", Uuid, nullable=False, unique=True),
    Column("account_id", Uuid, nullable=False),
    # Whose it is (issue 9): the payment event's `ownerSub`; NULL with authentication off.
    Column("owner_sub", Text),
    Column("order_number", Text, nullable=False),
    Column("notification_type", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
