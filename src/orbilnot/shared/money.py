"""Money: a Decimal with at most 2 fraction digits, NUMERIC in the database, a JSON *number* on the wire.

Never a float inside. At the JSON edge we do turn the Decimal into an int or a float, because the
contract (SPEC §3, and the original's Postman checks `balance === 500`) wants a JSON number. That is
exact: every amount has at most 14 significant digits (NUMERIC(14,2)), and a double's shortest
repr round-trips any decimal of up to 15 significant digits, so `12.5` is written as `12.5`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field, PlainSerializer

MONEY_DIGITS = 14
MONEY_PLACES = 2
MAX_MONEY = Decimal("999999999999.99")  # the largest NUMERIC(14,2)
CENT = Decimal("0.01")


def money_to_json(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


_money_json = PlainSerializer(money_to_json, return_type=int | float, when_used="json")
_money_field = {"max_digits": MONEY_DIGITS, "decimal_places": MONEY_PLACES, "allow_inf_nan": False}

Money = Annotated[Decimal, Field(**_money_field), _money_json]
PositiveMoney = Annotated[Decimal, Field(gt=0, **_money_field), _money_json]
NonNegativeMoney = Annotated[Decimal, Field(ge=0, **_money_field), _money_json]
# For answers only: what the database holds may be more than a request may ask for. A refund is
# never refused, so it can take a balance past MAX_MONEY (the columns are NUMERIC(15,2)); with the
# 14-digit limit of `Money` such a balance failed the answer's validation, a 500.
StoredMoney = Annotated[Decimal, _money_json]
