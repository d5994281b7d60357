"""Retrying, written once: which failures are worth another try, and how long to wait between tries.

tenacity runs the loops; every retry in the services goes through `backoff` (the background loops,
the consumer's store, the relay's and the processor's transactions), so there is one policy to
read and to change: exponential waits with jitter, from 50 ms up to 5 s, for as long as it takes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from orbilnot.shared.db import is_transient, transaction

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_WAIT_S = 0.05
LONGEST_WAIT_S = 5.0


class FailureTracker:
    """Since when a loop keeps failing, and why: what readiness reports (issue 7, item 2)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failing_since: float | None = None
        self.last_error: str = ""

    def failed(self, error: BaseException | None) -> None:
        if self.failing_since is None:
            self.failing_since = asyncio.get_running_loop().time()
        self.last_error = repr(error)[:300]

    def succeeded(self) -> None:
        self.failing_since = None
        self.last_error = ""

    def failing_for(self) -> float:
        if self.failing_since is None:
            return 0.0
        return asyncio.get_running_loop().time() - self.failing_since


def backoff(
    what: str,
    *,
    retry_on: Callable[[BaseException], bool],
    tracker: FailureTracker | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    give_up: Callable[[], bool] = lambda: False,
) -> AsyncRetrying:
    """Retry what `retry_on` accepts, waiting longer each time, until it succeeds or `give_up()`."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if tracker is not None:
            tracker.failed(error)
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s failed (%r); try %d in %.2fs", what, error, state.attempt_number + 1, wait)

    return AsyncRetrying(
        retry=retry_if_exception(retry_on),
        wait=wait_exponential_jitter(multiplier=FIRST_WAIT_S, max=LONGEST_WAIT_S, jitter=FIRST_WAIT_S),
        stop=lambda _: give_up(),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )


async def in_transaction(
    engine: AsyncEngine,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    what: str,
    tracker: FailureTracker | None = None,
) -> T:
    """Run `work` in one transaction; run the whole transaction again after a transient error
    (the database unreachable, a serialization failure, a deadlock). Other errors propagate.
    What `work` registers with `after_commit` runs once, after the attempt that committed."""
    async for attempt in backoff(what, retry_on=is_transient, tracker=tracker):
        with attempt:
            async with transaction(engine) as conn:
                return await work(conn)
    raise AssertionError("unreachable: tenacity either returns or raises")
