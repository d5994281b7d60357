"""The two integration events of SPEC §4, as every service reads and writes them.

JSON values with camelCase fields; the Kafka key is the account id, so one account's events
stay in order on one partition. `eventId` is fixed when the event is recorded in the database,
so a re-publish after a crash carries the same id and consumers recognise the duplicate.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import ClassVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from orbilnot.shared.money import PositiveMoney

_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
ORDER_NUMBER_PATTERN = f"^{_UUID}:{_UUID}$"
_ORDER_NUMBER = re.compile(ORDER_NUMBER_PATTERN)


def order_number_of(account_id: UUID, order_id: UUID) -> str:
    """The order number the seed uses everywhere: `{accountId}:{orderId}`."""
    return f"{account_id}:{order_id}"


def parse_order_number(order_number: str) -> tuple[UUID, UUID]:
    """`{accountId}:{orderId}` → (account id, order id); ValueError when it is not that shape."""
    if not _ORDER_NUMBER.match(order_number):
        raise ValueError(f"not an order number: {order_number!r}")
    account, order = order_number.split(":")
    return UUID(account), UUID(order)


def _ensure_order_of_the_account(account_id: UUID, order_number: str) -> None:
    # An order number is `{accountId}:{orderId}`: an event whose order number names another
    # account than its own is refused here, so it is dead-lettered and never touches money.
    if not order_number.lower().startswith(f"{account_id}:"):
        raise ValueError("orderNumber names another account than accountId")


# Subjects are opaque strings chosen by the identity provider (Keycloak: a UUID).
_SUBJECT = Field(default=None, min_length=1, max_length=255)


class _Event(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")

    # Optional extension fields (issue 9, ownership): left out of the JSON while unset, so that
    # with AUTH_MODE=off every event is exactly SPEC §4's, and readers that do not know them
    # ignore them (extra="ignore").
    _EXTENSIONS: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> bytes:
        unset = {name for name in self._EXTENSIONS if getattr(self, name) in (None, False)}
        return self.model_dump_json(by_alias=True, exclude=unset).encode()


class OrderEventType(StrEnum):
    CREATED = "CREATED"
    CANCELLED = "CANCELLED"


class OrderEvent(_Event):
    """Published by order on `order.event`: an order to be paid (CREATED) or refunded (CANCELLED).

    Extension (issue 9): `placedBy` is the subject that placed the order and `placedByAdmin`
    whether it did so with the admin role; billing pays only if that subject owns the account or
    was an admin. Both absent: placed with authentication off.
    """

    _EXTENSIONS = frozenset({"placed_by", "placed_by_admin"})

    event_id: UUID
    event_type: OrderEventType
    account_id: UUID
    order_number: str = Field(pattern=ORDER_NUMBER_PATTERN)
    amount: PositiveMoney
    occurred_at: AwareDatetime
    placed_by: str | None = _SUBJECT
    placed_by_admin: bool = False

    @model_validator(mode="after")
    def _order_of_the_account(self) -> OrderEvent:
        _ensure_order_of_the_account(self.account_id, self.order_number)
        return self


# The `description` of a PAYMENT_DENIED for lack of money: the original's exact text, spelling
# included, because clients compare it (SPEC §3).
NOT_ENOUGH_BALANCE = "Not enough balance for commiting payment for order"


class PaymentEventType(StrEnum):
    PAYMENT_CONFIRMED = "PAYMENT_CONFIRMED"
    PAYMENT_DENIED = "PAYMENT_DENIED"
    REFUNDED = "REFUNDED"


class PaymentEvent(_Event):
    """Published by billing on `payment.event`: what became of an order's payment or refund.

    Extension (issue 9): `ownerSub` is the subject the outcome belongs to — the account's owner
    when the order was allowed on the account, else whoever placed it (who is told, as for an
    account that does not exist, "Account ... not found"). Absent: authentication off.
    """

    _EXTENSIONS = frozenset({"owner_sub"})

    event_id: UUID
    payment_event_type: PaymentEventType
    account_id: UUID
    order_number: str = Field(pattern=ORDER_NUMBER_PATTERN)
    amount: PositiveMoney
    description: str | None = Field(default=None, max_length=1000)
    occurred_at: AwareDatetime
    owner_sub: str | None = _SUBJECT

    @model_validator(mode="after")
    def _order_of_the_account(self) -> PaymentEvent:
        _ensure_order_of_the_account(self.account_id, self.order_number)
        return self
