"""Money: a Decimal with at most 2 fraction digits, NUMERIC in the database, a JSON *number* on the wire.

Never a float inside. At the JSON edge we do turn the Decimal into an int or a float, because the
contract (SPEC §3, and the original's Postman checks `balance === 500`) wants a JSON number. That is
exact: every amount has at most 14 significant digits (NUMERIC(14,2)), and a double's shortest
repr round-trips any decimal of up to 15 significant digits, so `12.5` is written as `12.5`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema

MONEY_DIGITS = 14
MONEY_PLACES = 2
MAX_MONEY = Decimal("999999999999.99")  # the largest NUMERIC(14,2)
CENT = Decimal("0.01")


def money_to_json(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def reject_strings(value: object) -> object:
    """Money comes in as a JSON number (SPEC §3). Pydantic's Decimal would also read a string,
    trimming blanks and underscores ("  5  ", "5_0" → 50): a client that sends such a thing has
    a bug we must not paper over, so a string is invalid input (422), never a number."""
    if isinstance(value, str | bytes):
        raise ValueError("money must be a JSON number, not a string")
    return value


_money_json = PlainSerializer(money_to_json, return_type=int | float, when_used="json")
_money_field = {"max_digits": MONEY_DIGITS, "decimal_places": MONEY_PLACES, "allow_inf_nan": False}
_numbers_only = BeforeValidator(reject_strings)


def _number_schema(**bounds: float) -> WithJsonSchema:
    """What OpenAPI shows for a money input: a number, never the string pydantic's Decimal allows."""
    schema = {"type": "number", "maximum": float(MAX_MONEY), "multipleOf": 0.01, **bounds}
    return WithJsonSchema(schema, mode="validation")


Money = Annotated[Decimal, _numbers_only, Field(**_money_field), _money_json, _number_schema()]
PositiveMoney = Annotated[
    Decimal, _numbers_only, Field(gt=0, **_money_field), _money_json, _number_schema(exclusiveMinimum=0)
]
NonNegativeMoney = Annotated[
    Decimal, _numbers_only, Field(ge=0, **_money_field), _money_json, _number_schema(minimum=0)
]
# For answers only, where the value comes from the database, not from a request. Balances stay
# within MAX_MONEY (a deposit must leave room for every refund still possible, billing/domain.py),
# but one that a refund took past it before revision 0005 can still be there (the columns are
# NUMERIC(15,2)), and reading it must not fail the answer's validation (a 500).
StoredMoney = Annotated[Decimal, _money_json]
