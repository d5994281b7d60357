"""Which database errors mean "unavailable, retry" and which mean "this statement or row is wrong".

The consumer retries the first kind until it stores the batch and dead-letters the second, so a
server error mistaken for the second kind loses events (found by the PostgreSQL-restart scenario:
"the database system is not yet accepting connections" came as a plain DBAPIError)."""

from __future__ import annotations

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DBAPIError

from orbilnot.shared.db import is_connection_problem


def as_sqlalchemy_error(raw: Exception) -> DBAPIError:
    """`raw` as SQLAlchemy's asyncpg dialect hands it to our code."""
    dbapi = PGDialect_asyncpg.import_dbapi()
    translate = dbapi._asyncpg_error_translate
    kind = next(k for k in type(raw).__mro__ if k in translate)
    return DBAPIError.instance("SELECT 1", None, translate[kind](raw.args[0], raw), dbapi.Error)


@pytest.mark.parametrize(
    "raw",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is not yet accepting connections"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CrashShutdownError("terminating connection because of crash of another process"),
        asyncpg.exceptions.ConnectionFailureError("connection failure"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    ],
    ids=type,
)
def test_server_unavailable_is_a_connection_problem(raw: Exception) -> None:
    assert is_connection_problem(as_sqlalchemy_error(raw))


@pytest.mark.parametrize(
    "raw",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key value"),
        asyncpg.exceptions.CheckViolationError("new row violates check constraint"),
        asyncpg.exceptions.NumericValueOutOfRangeError("numeric field overflow"),
        asyncpg.exceptions.UndefinedTableError("relation does not exist"),
    ],
    ids=type,
)
def test_a_wrong_statement_or_row_is_not(raw: Exception) -> None:
    assert not is_connection_problem(as_sqlalchemy_error(raw))


def test_os_level_failures_are_connection_problems() -> None:
    assert is_connection_problem(ConnectionRefusedError(111, "Connection refused"))
    assert is_connection_problem(TimeoutError())
    assert is_connection_problem(sqlalchemy.exc.TimeoutError("QueuePool limit of size 20 overflow 0 reached"))
