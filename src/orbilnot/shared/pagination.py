"""Keyset pagination of the list endpoints (SPEC §3): `limit`, an opaque `cursor`, oldest first,
the next page named in a `Link: <…>; rel="next"` header, the body still a plain JSON list.

A page is "the next `limit` rows of this account after position p" on an index that starts with
the account id and ends with an increasing number (`seq`, the ledger's `id`), never an OFFSET:
every page costs the same however deep it is.

Keyset pages skip nothing only if a row can never commit *behind* one a reader has already been
shown. A number comes from a sequence when the row is inserted, not when it commits, so two
writers of one account could commit out of number order. Each list's writers therefore append
to an account one at a time (`account_list_turn`/`lock_account_lists`, or the account's own row
lock in billing), and a row's number then is its place in commit order within its account.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar
from urllib.parse import urlencode
from uuid import UUID

from fastapi import Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy import ColumnElement, Text, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_POSITION = struct.Struct(">q")
_TAG_BYTES = 8
_CURSOR_CHARS = 22  # base64url of 16 bytes, unpadded


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """Up to `limit` items; `after` is the position of the last one (None for an empty page), and
    `more` says whether rows after it existed when the page was read."""

    items: list[T]
    after: int | None
    more: bool

    @classmethod
    def of(cls, positioned: Sequence[tuple[int, T]], limit: int) -> Page[T]:
        """From up to `limit + 1` (position, item) pairs in order: the extra one only says "more"."""
        shown = positioned[:limit]
        return cls([item for _, item in shown], shown[-1][0] if shown else None, len(positioned) > limit)


def account_list_key(list_name: str, account_id: UUID) -> str:
    """The name of the right to append to `list_name` of `account_id` (see `account_list_turn`)."""
    return f"{list_name}:{account_id}"


def account_list_turn(key: ColumnElement[str]) -> ColumnElement[Any]:
    """Takes, until the transaction ends, the right to append to the list `key` names
    (`account_list_key`), so that rows of one account get their numbers in commit order (see the
    module's docstring): an expression to evaluate in the inserting statement *before* the row
    draws its number.

    A transaction-scoped advisory lock on a 64-bit hash: writers of other accounts never wait,
    a writer of the same account waits for the previous one's commit.
    """
    return func.pg_advisory_xact_lock(func.hashtextextended(key, 0))


async def lock_account_lists(conn: AsyncConnection, list_name: str, account_ids: Iterable[UUID]) -> None:
    """`account_list_turn` for several accounts, in one statement, before a batch of inserts.

    The locks are taken in one order (sorted keys, and a function scan yields its rows in order),
    so two transactions that append to some of the same accounts never deadlock on each other.
    """
    keys = sorted({account_list_key(list_name, account_id) for account_id in account_ids})
    batch = func.unnest(bindparam("keys", keys, type_=ARRAY(Text))).table_valued("key").render_derived()
    await conn.execute(select(account_list_turn(batch.c.key)).select_from(batch))


def encode_cursor(position: int, path: str) -> str:
    return base64.urlsafe_b64encode(_POSITION.pack(position) + _tag(path)).decode().rstrip("=")


def decode_cursor(cursor: str, path: str) -> int:
    """The position a cursor of the list at `path` names; ValueError for anything else."""
    if len(cursor) != _CURSOR_CHARS:
        raise ValueError("wrong length")
    try:
        raw = base64.b64decode(cursor + "==", altchars=b"-_", validate=True)
    except binascii.Error as error:
        raise ValueError("not base64url") from error
    (position,) = _POSITION.unpack(raw[: _POSITION.size])
    if raw[_POSITION.size :] != _tag(path) or position < 0:
        raise ValueError("not a cursor of this list")
    return int(position)


def _tag(path: str) -> bytes:
    # Binds a cursor to the list it came from (another account's cursor means nothing here). Not a
    # secret: a client that forges a position merely reads its own list from elsewhere.
    return hashlib.sha256(path.encode()).digest()[:_TAG_BYTES]


class _PageQuery:
    """The `limit` and `cursor` query parameters of a list endpoint, checked."""

    def __init__(
        self,
        request: Request,
        response: Response,
        limit: Annotated[
            int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page, 1-{MAX_LIMIT} (else 422)")
        ] = DEFAULT_LIMIT,
        cursor: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=64,
                description='Where to continue: copy it from the `Link: <…>; rel="next"` header of the '
                "previous page; anything else is a 422",
            ),
        ] = None,
    ) -> None:
        self.limit = limit
        self._path = request.url.path
        self._response = response
        self.after: int | None = None
        if cursor is not None:
            try:
                self.after = decode_cursor(cursor, self._path)
            except ValueError:
                error = {"type": "value_error", "loc": ("query", "cursor"), "msg": "not a cursor this list gave out"}
                raise RequestValidationError([error]) from None

    def answer(self, page: Page[T]) -> list[T]:
        """The page's items; names the next page in a `Link` header when there is one."""
        if page.more and page.after is not None:
            query = urlencode({"limit": self.limit, "cursor": encode_cursor(page.after, self._path)})
            # Relative to the host the client used, so it is followed through the gateway too.
            self._response.headers["Link"] = f'<{self._path}?{query}>; rel="next"'
        return page.items


PAGED_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "One page, oldest first",
        "headers": {
            "Link": {
                "description": 'The next page, `<relative URL>; rel="next"`, when there is one',
                "schema": {"type": "string"},
            }
        },
    },
}
"""The `responses` of a list endpoint in OpenAPI: the `Link` header of its pages."""

PageQuery = Annotated[_PageQuery, Depends()]
"""What a list endpoint declares: `page.limit`, `page.after`, and `page.answer(...)`."""
