"""A load generator on raw HTTP/1.1 keep-alive connections: `POST /orders`, open or closed loop.

Not httpx: its connection pool costs milliseconds of CPU per request at tens of concurrent
requests (encode/httpcore#1035), which made the generator, not the system, the limit. `make bench`
runs it in a process of its own (`python -m bench.loadgen SPEC RESULT`), so it neither shares an
event loop with the measuring code nor hides its own CPU time: the benchmark reports it.

- open loop: order i leaves at `i / rate` seconds whatever became of the earlier ones, on an idle
  connection or a new one, up to `max_connections`; past that it waits for one, and the wait
  shows as lag (sent - scheduled). A server that cannot keep up makes the lag grow (and with
  `give_up_late_s`, the orders still waiting that long after the schedule's end are dropped).
- closed loop: `connections` clients each place orders back to back for `seconds`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class LoadSpec:
    port: int
    accounts: list[str]
    mode: str  # "open" or "closed"
    rate: float = 0.0  # open loop: orders per second
    count: int = 0  # open loop: orders in all
    max_connections: int = 256  # open loop
    # Open loop: an order still unsent this long after the schedule's end is given up (counted in
    # `abandoned`), so a phase far beyond what the system can do still ends in bounded time.
    give_up_late_s: float | None = None
    connections: int = 0  # closed loop
    seconds: float = 0.0  # closed loop
    amount: int = 1
    path: str = "/orders"


@dataclass
class Placed:
    """One order request; times in seconds from the start of the load (time.monotonic based)."""

    scheduled: float
    sent: float
    answered: float
    account_id: str
    order_id: str


@dataclass
class LoadResult:
    started_at: float  # wall clock (time.time()) when the load began, to compare with the database's
    finished: float  # seconds from the start until the last answer
    placed: list[Placed] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # a few, for the report; failed counts them all
    failed: int = 0
    abandoned: int = 0
    connections_opened: int = 0
    cpu_s: float = 0.0  # the generator's own CPU time, to show whether it was the limit


class Http1Connection:
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Http1Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            payload = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            payload = await self._read_chunked()
        else:
            payload = await self.reader.read()  # delimited by the server closing the connection
            self.closed = True
        if headers.get("connection", "").lower() == "close":
            self.closed = True
        return status, payload

    async def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers expected: the empty line
                return b"".join(chunks)
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        self.closed = True
        self.writer.close()


async def _place(
    spec: LoadSpec, connection: Http1Connection, i: int, scheduled: float, origin: float, result: LoadResult
) -> None:
    account = spec.accounts[i % len(spec.accounts)]
    body = json.dumps({"accountId": account, "amount": spec.amount}).encode()
    sent = time.monotonic() - origin
    try:
        status, payload = await connection.post_json(spec.path, body)
    except (OSError, asyncio.IncompleteReadError, ValueError) as error:
        connection.close()
        _failed(result, f"{type(error).__name__}: {error}")
        return
    if status != 200:
        _failed(result, f"HTTP {status}: {payload[:200]!r}")
        return
    answered = time.monotonic() - origin
    result.placed.append(Placed(scheduled, sent, answered, account, json.loads(payload)))


def _failed(result: LoadResult, reason: str) -> None:
    result.failed += 1
    if len(result.failures) < 5:
        result.failures.append(reason)


async def open_loop(spec: LoadSpec) -> LoadResult:
    result = LoadResult(started_at=time.time(), finished=0.0)
    idle: list[Http1Connection] = []
    available = asyncio.Semaphore(spec.max_connections)
    origin = time.monotonic()
    give_up_at = None if spec.give_up_late_s is None else spec.count / spec.rate + spec.give_up_late_s

    async def one(i: int, scheduled: float) -> None:
        async with available:
            if give_up_at is not None and time.monotonic() - origin > give_up_at:
                result.abandoned += 1
                return
            if idle:
                connection = idle.pop()
            else:
                try:
                    connection = await Http1Connection.open(spec.port)
                except OSError as error:
                    _failed(result, f"connect: {error}")
                    return
                result.connections_opened += 1
            await _place(spec, connection, i, scheduled, origin, result)
            if not connection.closed:
                idle.append(connection)

    tasks: list[asyncio.Task[None]] = []
    for i in range(spec.count):
        scheduled = i / spec.rate
        delay = scheduled - (time.monotonic() - origin)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    result.finished = time.monotonic() - origin
    for connection in idle:
        connection.close()
    return result


async def closed_loop(spec: LoadSpec) -> LoadResult:
    result = LoadResult(started_at=time.time(), finished=0.0)
    origin = time.monotonic()
    deadline = origin + spec.seconds

    async def client(offset: int) -> None:
        connection = await Http1Connection.open(spec.port)
        result.connections_opened += 1
        i = offset
        try:
            while time.monotonic() < deadline:
                now = time.monotonic() - origin
                await _place(spec, connection, i, now, origin, result)
                i += spec.connections
                if connection.closed:
                    connection = await Http1Connection.open(spec.port)
                    result.connections_opened += 1
        finally:
            connection.close()

    await asyncio.gather(*(client(n) for n in range(spec.connections)))
    result.finished = time.monotonic() - origin
    return result


async def run(spec: LoadSpec) -> LoadResult:
    if spec.mode == "open":
        return await open_loop(spec)
    if spec.mode == "closed":
        return await closed_loop(spec)
    raise ValueError(f"unknown mode {spec.mode!r}")


def load_result(path: Path) -> LoadResult:
    raw = json.loads(path.read_text())
    placed = [Placed(**p) for p in raw.pop("placed")]
    return LoadResult(**raw, placed=placed)


def main(argv: list[str]) -> None:
    spec_path, result_path = map(Path, argv)
    spec = LoadSpec(**json.loads(spec_path.read_text()))
    try:
        import uvloop  # uvicorn[standard] brings it; without it the generator is only slower

        result = uvloop.run(run(spec))
    except ImportError:
        result = asyncio.run(run(spec))
    result.cpu_s = time.process_time()
    result_path.write_text(json.dumps(asdict(result)))


if __name__ == "__main__":
    main(sys.argv[1:])
