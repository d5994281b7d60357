"""The database: one async engine per process, built at start-up from the settings.

Services use SQLAlchemy Core (tables and statements), not the ORM: every handler is a handful of
explicit statements — `FOR UPDATE SKIP LOCKED`, `ON CONFLICT DO NOTHING`, conditional updates —
and Core keeps them visible and cheap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Dialect, Select, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from orbilnot.shared.config import ServiceSettings


def create_engine(settings: ServiceSettings, *, application_name: str, pool_size: int | None = None) -> AsyncEngine:
    """The process's engine: `pool_size` connections (DB_POOL_SIZE unless given)."""
    return create_async_engine(
        settings.database_url,
        # A fixed pool: overflow connections would be opened and closed under every burst, and
        # opening one (with TLS negotiation) costs more than the request that wanted it.
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=0,
        pool_timeout=10,
        # No pre-ping: it is a round trip before every transaction (~15% of a request's CPU).
        # When PostgreSQL restarts, the first statement on a dead connection fails, SQLAlchemy
        # then discards the whole pool, and the background loops retry what failed.
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={
            "server_settings": {"application_name": application_name},
            "timeout": 5,
            "command_timeout": 30,
        },
    )


_AFTER_COMMIT = "orbilnot.after_commit"


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """`engine.begin()`, which also runs what `after_commit` was given once the commit succeeded.

    For effects outside the database that must follow only a change that really happened, such
    as counting an order's transition in a metric: a transaction that rolls back, or whose commit
    fails, runs none of them, so a retried transaction counts its change once.
    """
    callbacks: list[Callable[[], None]] = []
    async with engine.begin() as conn:
        # `info` belongs to the pooled DBAPI connection and outlives this checkout: take it back.
        conn.info[_AFTER_COMMIT] = callbacks
        try:
            yield conn
        finally:
            conn.info.pop(_AFTER_COMMIT, None)
    for callback in callbacks:
        callback()


def after_commit(conn: AsyncConnection, callback: Callable[[], None]) -> None:
    """Run `callback` once the transaction `conn` is in has committed, if it was opened with
    `transaction()`. Under any other owner (a test's own `engine.begin()`) it is dropped: a metric
    then misses a change rather than counting one that may be rolled back.

    Register only at the transaction's own level, or inside `savepoint()` (which drops what was
    registered in it if it rolls back), never inside a plain savepoint that may still roll back:
    collect what such a savepoint did and register it once the savepoint is released.
    """
    callbacks: list[Callable[[], None]] | None = conn.info.get(_AFTER_COMMIT)
    if callbacks is not None:
        callbacks.append(callback)


@asynccontextmanager
async def savepoint(conn: AsyncConnection) -> AsyncIterator[None]:
    """`conn.begin_nested()`, which also forgets what `after_commit` was given inside it when it
    rolls back: the work it undid must not be counted at the commit."""
    callbacks: list[Callable[[], None]] | None = conn.info.get(_AFTER_COMMIT)
    registered = len(callbacks) if callbacks is not None else 0
    try:
        async with conn.begin_nested():
            yield
    except BaseException:
        if callbacks is not None:
            del callbacks[registered:]
        raise


_Compiled = tuple[str, list[str], dict[str, Any], dict[str, Callable[[Any], Any]]]
"""A statement's text, its parameters' names in positional order, the values it carries itself,
and the bind processors of the parameters that have one."""


class DirectStatement:
    """A hot statement that is atomic on its own, written in SQLAlchemy Core, compiled once, and
    run by asyncpg itself on a pooled connection in autocommit mode.

    SQLAlchemy's execution path around one statement (a greenlet switch, an execution context,
    a cursor, a result, the `AsyncConnection` checkout) cost more CPU than asyncpg's bind and
    execute themselves: placing an order took 262 µs of CPU through `conn.scalar` and 125 µs
    this way (uvloop, local PostgreSQL). The statement's text and bind processors are
    SQLAlchemy's, compiled for the engine's dialect, and asyncpg's own statement cache prepares
    it once per connection (re-preparing it by itself if a schema change invalidated it).

    Given an `AsyncEngine`, `scalar` checks out a connection of its own; given an
    `AsyncConnection` (a caller's transaction, a test's), it runs the statement through SQLAlchemy
    on it, as does an engine whose statements something listens to (tracing's per-statement
    spans). Errors come out as SQLAlchemy raises them either way (`_translated`), so callers, the
    retry rules (`is_transient`) and the services' error handlers see no difference.
    """

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        self._compiled: dict[Dialect, _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect)
        names = list(compiled.positiontup or ())
        constants = {name: value for name, value in compiled.params.items() if value is not None}
        processors: dict[str, Callable[[Any], Any]] = {}
        for name in names:
            bind_type = compiled.binds[name].type
            processor = bind_type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors[name] = processor
        self._compiled[dialect] = (compiled.string, names, constants, processors)
        return self._compiled[dialect]

    async def scalar(self, db: AsyncEngine | AsyncConnection, parameters: Mapping[str, Any]) -> Any:
        """The first column of the first row (None if none), with `parameters` by name."""
        if isinstance(db, AsyncConnection):
            return await db.scalar(self.statement, parameters)
        if db.sync_engine.dispatch.before_cursor_execute:
            async with db.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                return await conn.scalar(self.statement, parameters)
        return await self._run(db, parameters, first_row=True)

    async def column(self, db: AsyncEngine | AsyncConnection, parameters: Mapping[str, Any]) -> list[Any]:
        """The first column of every row, with `parameters` by name."""
        if isinstance(db, AsyncConnection):
            return list(await db.scalars(self.statement, parameters))
        if db.sync_engine.dispatch.before_cursor_execute:
            async with db.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                return list(await conn.scalars(self.statement, parameters))
        rows = await self._run(db, parameters, first_row=False)
        return [row[0] for row in rows]

    async def _run(self, engine: AsyncEngine, parameters: Mapping[str, Any], *, first_row: bool) -> Any:
        dialect = engine.dialect
        sql, names, constants, processors = self._compiled.get(dialect) or self._compile(dialect)
        arguments = []
        for name in names:
            value = parameters[name] if name in parameters else constants[name]
            processor = processors.get(name)
            arguments.append(value if processor is None else processor(value))
        # A pooled connection as SQLAlchemy keeps it between checkouts: no transaction open (the
        # pool rolls back on checkin), so asyncpg runs the statement as its own transaction.
        raw = await engine.raw_connection()
        driver: Any = raw.driver_connection
        try:
            if first_row:
                return await driver.fetchval(sql, *arguments)
            return await driver.fetch(sql, *arguments)
        except Exception as error:
            raise _translated(engine, raw, error, sql, arguments) from error
        except BaseException:
            # Cancelled mid-statement: what the connection is doing is unknown, so it is not
            # handed to anyone else (as SQLAlchemy does, on any exit exception).
            raw.invalidate()
            raise
        finally:
            # Inside SQLAlchemy's greenlet, as its own checkin would be: handing a connection back
            # may mean closing it (an overflow connection, a full pool), which awaits.
            await greenlet_spawn(raw.close)


def _translated(
    engine: AsyncEngine, raw: PoolProxiedConnection, error: Exception, sql: str, arguments: list[Any]
) -> Exception:
    """`error`, raised by asyncpg running `sql` on `raw`, as SQLAlchemy's execution would raise it
    (`Connection._handle_dbapi_exception`): the dialect's DBAPI error wrapped in a `DBAPIError`,
    and when the connection died, that connection dropped and every pooled one as old as it
    recycled at its next checkout. Any other error as it is."""
    dialect = engine.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        # The asyncpg dialect's translation (asyncpg's exception → the DBAPI class it stands
        # for), as its cursor does it; for anything that is no asyncpg error, `error` itself.
        raw.dbapi_connection._handle_exception(error)  # type: ignore[union-attr]
    except dbapi_error as translated:
        disconnected = dialect.is_disconnect(translated, raw.dbapi_connection, None)
        if disconnected:
            engine.sync_engine.pool._invalidate(raw, translated)
        return DBAPIError.instance(
            sql, tuple(arguments), translated, dbapi_error, connection_invalidated=disconnected, dialect=dialect
        )
    except Exception as other:
        return other
    return error


async def database_is_up(engine: AsyncEngine, timeout_s: float = 2.0) -> bool:
    try:
        async with asyncio.timeout(timeout_s), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except (TimeoutError, OSError, DBAPIError):
        return False


def is_connection_problem(error: BaseException) -> bool:
    """True when an error says the database could not be reached, not that a statement was wrong.

    Workers retry the first kind forever (the database will come back) and treat the second kind
    as a fault of the message or row at hand.
    """
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    # SQLAlchemy's asyncpg dialect turns most server errors into a plain DBAPIError, among them
    # "the database system is starting up / not yet accepting connections" (57P03) that every
    # connect gets while a restarted PostgreSQL runs recovery: only the SQLSTATE tells them apart.
    # Missing it, the consumer dead-lettered every event it took during a restart (issue 4).
    sqlstate = sqlstate_of(error)
    if sqlstate is not None and sqlstate.startswith(UNAVAILABLE_SQLSTATES):
        return True
    # PoolTimeout: no pooled connection came free in time (the server is slow or reconnecting),
    # which says nothing against the statement either.
    return isinstance(error, (OperationalError, InterfaceError, OSError, TimeoutError, ConnectionError, PoolTimeout))


def is_transient(error: BaseException) -> bool:
    """True when trying the same work again may well succeed: the database was unreachable, or
    PostgreSQL aborted the transaction to settle a conflict with another one (a serialization
    failure or a deadlock). Such errors are retried with backoff, never blamed on an event."""
    return sqlstate_of(error) in CONFLICT_SQLSTATES or is_connection_problem(error)


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE PostgreSQL answered with, if `error` carries one (None: no answer from it)."""
    sqlstate = getattr(getattr(error, "orig", None), "sqlstate", None) or getattr(error, "sqlstate", None)
    return sqlstate if isinstance(sqlstate, str) else None


CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
"""serialization_failure and deadlock_detected: the transaction lost a race; run it again."""

UNAVAILABLE_SQLSTATES = (
    "08",  # connection exception (class 08): refused, broken, does not exist
    "57P01",  # admin_shutdown: terminated by a fast/immediate shutdown
    "57P02",  # crash_shutdown: another backend crashed, the server restarts
    "57P03",  # cannot_connect_now: starting up, in recovery, shutting down
    "53300",  # too_many_connections: transient, while pools of restarted replicas refill
)
"""SQLSTATEs (or their class prefix) that say the server is unavailable for now, not that a
statement was wrong."""
