"""Notification's table, in the `notification_service` schema. The constraints are declared here,
once; the migrations create the same (a test compares the two)."""

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
)

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
    UniqueConstraint("order_number", "notification_type", name="one_notice_per_outcome"),
    Index("notifications_by_account", "account_id", "seq"),
)

# Payment events whose notification could not be stored for a reason of their own (text the
# database cannot hold, say), set aside with the error and the event as it arrived, so that they
# hold back no other (`handlers.park_notification`). `notifications` is the user's list and the
# inbox of what was stored; this is the inbox of what was not.
parked_events = Table(
    "parked_events",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("account_id", Uuid, nullable=False),
    Column("order_number", Text, nullable=False),
    Column("value", Text, nullable=False),  # the event's JSON (escaped, so any text fits)
    Column("error", Text, nullable=False),
    Column("parked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
