"""What the migrations must produce: the services' own table definitions (their `tables.py`),
which are the one place the schema and its constraints are declared. Alembic compares the two
(`target_metadata`; `tests/integration/test_schema.py` fails when they drift apart)."""

from __future__ import annotations

from sqlalchemy import MetaData

from orbilnot.billing.tables import metadata as billing
from orbilnot.notification.tables import metadata as notification
from orbilnot.order.tables import metadata as order

TARGET_METADATA: list[MetaData] = [billing, order, notification]
SCHEMAS = frozenset(str(m.schema) for m in TARGET_METADATA)


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Compare only the services' schemas (not `public`, where Alembic keeps its version table)."""
    if type_ == "schema":
        return name in SCHEMAS
    return True
