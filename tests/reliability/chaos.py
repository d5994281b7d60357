"""Breaking things while the workload runs: the load is one task, the disruptions come from the
test's own task, each one fired when the load has reached a given number of acknowledged orders
(polled, never a fixed sleep). The load is paced by the disruptions: it starts no order past a
disruption's mark until that disruption has struck (it calls `workload.resume()` right after its
kill or stop), so every disruption lands mid-load however fast or slow the machine is."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable

import httpx
from replicated import SERVICES, ReplicatedStack
from workload import Workload

Disruption = Callable[[], Awaitable[None]]


def acknowledged(workload: Workload) -> int:
    """Orders the system has acknowledged so far (answered 200)."""
    return sum(len(book.orders) for book in workload.books.values())


async def until_acknowledged(
    workload: Workload, count: int, load: asyncio.Task[None], *, timeout_s: float = 180.0
) -> None:
    """Wait until `count` orders are acknowledged. The load must still be running afterwards: a
    disruption after the load would prove nothing (and a failed load fails the test here)."""
    deadline = time.monotonic() + timeout_s
    while acknowledged(workload) < count and not load.done():
        if time.monotonic() > deadline:
            raise AssertionError(f"only {acknowledged(workload)} of {count} orders acknowledged in {timeout_s}s")
        await asyncio.sleep(0.05)
    if load.done():
        await load  # raises the load's own failure, if it failed
        raise AssertionError(f"the load finished before reaching {count} acknowledged orders mid-load")


async def progress_or_timeout(workload: Workload, more: int, timeout_s: float) -> None:
    """Let the load move on by `more` orders, or `timeout_s` pass if it cannot (nothing serves)."""
    target = acknowledged(workload) + more
    deadline = time.monotonic() + timeout_s
    while acknowledged(workload) < target:
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)


async def run_with_disruptions(workload: Workload, plan: Iterable[tuple[int, Disruption]]) -> None:
    """Run the whole load, firing each disruption once `at` orders are acknowledged."""
    plan = list(plan)
    for at, _ in plan:
        workload.hold_at(at)
    load = asyncio.create_task(workload.place_orders(), name="load")
    try:
        for at, disrupt in plan:
            await until_acknowledged(workload, at, load)
            await disrupt()
            workload.resume()  # in case the disruption did not (it should, right after striking)
        await load
    finally:
        if not load.done():
            load.cancel()
            # The test already fails with the reason that stopped us; the load's own end is noise.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await load


def service_processes(stack: ReplicatedStack) -> list[str]:
    return [f"{service}-{n}" for service in SERVICES for n in range(1, stack.replicas + 1)]


async def readiness(stack: ReplicatedStack, names: Iterable[str]) -> dict[str, int | str]:
    """Each process's /health/ready status code (or the transport error's name)."""
    answers: dict[str, int | str] = {}
    async with httpx.AsyncClient(timeout=5) as http:
        for name in names:
            try:
                answers[name] = (await http.get(f"{stack.urls[name]}/health/ready")).status_code
            except httpx.HTTPError as error:
                answers[name] = type(error).__name__
    return answers


async def until_readiness(
    stack: ReplicatedStack, names: list[str], status: int, *, timeout_s: float, what: str
) -> float:
    """Poll until every one of `names` answers /health/ready with `status`; returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        answers = await readiness(stack, names)
        if all(code == status for code in answers.values()):
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not all {status} after {timeout_s}s: {answers}")
        await asyncio.sleep(0.1)
