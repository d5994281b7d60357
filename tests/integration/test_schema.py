"""One definition of the schema (issue 7, item 5): the tables the code uses, with their
constraints and indexes (`tables.py`), are exactly what the migrations create."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from orbilnot.migrations.schema import TARGET_METADATA, include_name


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"include_schemas": True, "include_name": include_name, "compare_type": True}
    )
    return list(compare_metadata(context, TARGET_METADATA))  # type: ignore[arg-type]


# Alembic's index comparison passes SQLAlchemy a keyword it then warns about; nothing is skipped.
@pytest.mark.filterwarnings("ignore:Can't validate argument 'dialect_options'")
async def test_the_migrations_create_exactly_the_tables_the_code_declares(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == [], "tables.py and the migrations differ:\n" + "\n".join(map(str, differences))
