"""The benchmark's own arithmetic and parsing (make bench): percentiles, the py-spy summary, the
table, and the load generator's HTTP/1.1 client against a loopback server."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

from bench.loadgen import Http1Connection, LoadSpec, open_loop
from bench.profiling import hotspots
from bench.report import PhaseResult, _abridged, markdown_table, percentiles, text_table


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles([7.0]) == {"p50": 7.0, "p90": 7.0, "p99": 7.0, "max": 7.0}
    assert all(math.isnan(v) for v in percentiles([]).values())


def test_hotspots_share_the_sampled_time_by_the_function_on_top(tmp_path: Path) -> None:
    document = {
        "shared": {
            "frames": [
                {"name": "main", "file": "/x/site-packages/app.py", "line": 1},
                {"name": "handle", "file": "/x/src/orbilnot/order/api.py", "line": 50},
                {"name": "execute", "file": "/x/site-packages/asyncpg/connection.py", "line": 377},
            ]
        },
        "profiles": [
            {"samples": [[0, 1, 2], [0, 1, 2], [0, 1], [0], []], "weights": [0.01] * 5},
        ],
    }
    profile = tmp_path / "order.speedscope.json"
    profile.write_text(json.dumps(document))
    samples, spots = hotspots(profile)
    assert samples == 4  # the empty stack is no sample of CPU
    assert [s.function for s in spots] == [
        "execute (asyncpg/connection.py:377)",
        "handle (orbilnot/order/api.py:50)",
        "main (app.py:1)",
    ]
    assert [round(s.self_share, 2) for s in spots] == [0.5, 0.25, 0.25]
    assert [round(s.total_share, 2) for s in spots] == [0.5, 0.75, 1.0]


def test_the_table_has_a_column_per_phase_and_marks_the_profiled_one() -> None:
    phases = [
        PhaseResult(name="50/s", kind="open", offered_rate=50, placed=500, notified=500, placed_per_s=50.0),
        PhaseResult(name="32 conn", kind="closed", connections=32, placed=4000, notified=3990, profiled=True),
    ]
    text = text_table(phases).splitlines()
    assert text[0].split() == ["50/s", "32", "conn", "(profiled)"]
    assert any(line.startswith("orders placed / notified") and "4,000 / 3,990" in line for line in text)
    markdown = markdown_table(phases).splitlines()
    assert markdown[0] == "| | 50/s | 32 conn (profiled) |"
    assert all(line.count("|") == 4 for line in markdown)


async def test_the_http_client_reads_fixed_length_and_chunked_answers_on_one_connection() -> None:
    answers = [
        b'HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n"abcd"',
        b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n"ef\r\n2\r\ng"\r\n0\r\n\r\n',
    ]
    bodies: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            bodies.append(await reader.readexactly(length))
            writer.write(answer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        connection = await Http1Connection.open(port)
        assert await connection.post_json("/orders", b'{"a":1}') == (200, b'"abcd"')
        assert await connection.post_json("/orders", b'{"a":2}') == (200, b'"efg"')
        connection.close()
    assert bodies == [b'{"a":1}', b'{"a":2}']


async def test_the_open_loop_keeps_its_schedule_and_records_each_order() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                account = json.loads(await reader.readexactly(length))["accountId"]
                body = json.dumps(f"order-of-{account}").encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        except asyncio.IncompleteReadError:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        spec = LoadSpec(port=port, accounts=["a", "b"], mode="open", rate=200, count=20, max_connections=4)
        result = await open_loop(spec)
    assert result.failed == 0 and len(result.placed) == 20
    assert sorted(p.scheduled for p in result.placed) == [i / 200 for i in range(20)]
    assert all(p.order_id == f"order-of-{p.account_id}" for p in result.placed)
    assert all(p.sent >= p.scheduled and p.answered >= p.sent for p in result.placed)
    assert result.connections_opened <= 4


def test_statements_are_abridged_to_what_they_read_and_where() -> None:
    select = "SELECT billing.order_events.event_id, billing.order_events.seq, billing.order_events.status FROM "
    select += "billing.order_events WHERE billing.order_events.status = $1::VARCHAR FOR UPDATE SKIP LOCKED"
    assert _abridged(select) == (
        "SELECT … FROM billing.order_events WHERE order_events.status = $1::VARCHAR FOR UPDATE SKIP LOCKED"
    )
    insert = "INSERT INTO billing.ledger (account_id, amount) VALUES ($1::UUID, $2::NUMERIC(15, 2))"
    assert _abridged(insert) == "INSERT INTO billing.ledger … VALUES …"
    assert _abridged("INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING") == (
        "INSERT INTO t … VALUES … ON CONFLICT DO NOTHING"
    )
