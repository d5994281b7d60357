"""Scenario 8: SIGTERM under load.

A process sent SIGTERM stops within 10 s with exit code 0; it answers every request it had
accepted, and loses nothing it had consumed. Two tests:

- one replica of each service terminated in turn (and restarted) while a load runs through the
  gateway: no client request answered 5xx or cut off (the gateway sends the requests that the
  closing replica refuses to the other one), every acknowledged deposit counted once, and the
  SIGTERMed consumers' work lost nowhere (`check_invariants`);
- requests provably in flight when SIGTERM arrives, at the gateway and at a service: the server
  has answered `100 Continue` (so its app is reading the body), then it is sent SIGTERM, then the
  body follows once the process no longer accepts connections; each request still gets its
  complete answer, and the deposit it carries is made once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections import Counter
from decimal import Decimal

import httpx
from replicated import LONG, ReplicatedStack
from workload import Workload, check_invariants

EXIT_WITHIN_S = 10.0
PROBE_CLIENTS = 16


async def terminate(stack: ReplicatedStack, name: str) -> float:
    """SIGTERM `name`; the seconds it took to exit, which it must do in time and with code 0."""
    process = stack.processes[name]
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(process.wait, EXIT_WITHIN_S + 20)
    except Exception:
        process.kill()
        raise
    took = time.monotonic() - started
    assert code == 0, f"{name} exited with {code} after SIGTERM"
    assert took <= EXIT_WITHIN_S, f"{name} took {took:.1f}s to stop after SIGTERM"
    return took


async def test_sigterm_each_service_under_load_answers_everything_and_loses_nothing(
    replicated_stack: ReplicatedStack,
) -> None:
    stack = replicated_stack
    workload = Workload(stack.gateway, accounts=20, orders=1500 if LONG else 300, seed=8)
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    deposited: list[Decimal] = []
    stop = asyncio.Event()
    took: dict[str, float] = {}
    try:
        await workload.open_accounts()
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as http:
            probe = (await http.post("/account", json={"actionType": "CREATE_NEW", "amount": 0})).json()

            async def strict_client(n: int) -> None:
                """Requests that are not retried: each must get a complete non-5xx answer."""
                i = 0
                while not stop.is_set():
                    i += 1
                    kind = ("deposit", "read", "order", "notes")[(n + i) % 4]
                    try:
                        if kind == "deposit":
                            body = {"accountId": probe, "amount": 1, "actionType": "DEPOSIT_MONEY"}
                            response = await http.put("/account", json=body)
                            if response.status_code == 200:
                                deposited.append(Decimal(1))
                        elif kind == "read":
                            response = await http.get(f"/account/{probe}")
                        elif kind == "order":
                            # Denied: the probe never holds that much (the long form deposits well over
                            # 1,000), so its balance stays exactly the sum of the deposits.
                            body = {"accountId": probe, "amount": 10**11}
                            key = uuid.uuid4().hex
                            response = await http.post("/orders", json=body, headers={"Idempotency-Key": key})
                        else:
                            response = await http.get(f"/notifications/{probe}")
                        outcomes[f"{kind} {response.status_code}"] += 1
                        if response.status_code >= 500:
                            problems.append(f"{kind}: {response.status_code} {response.text[:200]}")
                    except httpx.HTTPError as error:
                        outcomes[f"{kind} {type(error).__name__}"] += 1
                        problems.append(f"{kind}: {error!r}")

            probes = [asyncio.create_task(strict_client(n)) for n in range(PROBE_CLIENTS)]
            orders = asyncio.create_task(workload.place_orders())
            try:
                for name in ("billing-1", "order-1", "notification-1", "billing-2", "order-2", "notification-2"):
                    took[name] = await terminate(stack, name)
                    await asyncio.to_thread(stack.restart, name)
                    if not LONG and name.endswith("-1") and name.startswith("notification"):
                        break
            finally:
                stop.set()
                await asyncio.gather(*probes)
                await orders
            balance = (await http.get(f"/account/{probe}")).json()["balance"]
        report = await check_invariants(workload, stack.env["DATABASE_URL"])
    finally:
        await workload.close()
    print(f"graceful shutdown: stop times {took}, probe answers {dict(outcomes)}, invariants {report}")
    assert not problems, f"{len(problems)} requests not answered properly: {problems[:10]}"
    assert sum(outcomes.values()) > 200, outcomes
    assert Decimal(str(balance)) == sum(deposited, Decimal(0)), (balance, len(deposited))


async def _send_headers(
    port: int, method: str, path: str, body: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection and send a request's head with `Expect: 100-continue`; return once the
    server said `100 Continue`, i.e. its app has started reading this request's body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    assert interim.startswith(b"HTTP/1.1 100"), interim
    return reader, writer


async def _finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> tuple[int, bytes]:
    """Send the body and read the complete answer (the server closes the connection after it)."""
    writer.write(body)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 15)  # to EOF
    writer.close()
    head, _, content = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    if b"content-length" in {k.lower() for k in headers}:
        length = int(next(v for k, v in headers.items() if k.lower() == b"content-length"))
        assert len(content) == length, f"answer cut off: {len(content)} of {length} bytes"
    return status, content


async def _refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_requests_in_flight_at_sigterm_are_answered(replicated_stack: ReplicatedStack) -> None:
    stack = replicated_stack
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as http:
        account = (await http.post("/account", json={"actionType": "CREATE_NEW", "amount": 0})).json()
    deposit = json.dumps({"accountId": account, "amount": 5, "actionType": "DEPOSIT_MONEY"}).encode()

    for name in ("gateway", "billing-1"):
        port = stack.ports[name]
        in_flight = [await _send_headers(port, "PUT", "/account", deposit) for _ in range(3)]
        stack.processes[name].send_signal(signal.SIGTERM)
        started = time.monotonic()
        # The body follows only once the process has closed its listening socket: it is shutting
        # down, and these requests are the ones it accepted before.
        while not await _refuses_connections(port):
            assert time.monotonic() - started < EXIT_WITHIN_S, f"{name} still accepts connections"
            await asyncio.sleep(0.02)
        answers = await asyncio.gather(*(_finish(reader, writer, deposit) for reader, writer in in_flight))
        for status, content in answers:
            assert status == 200, (name, status, content[:300])
            assert json.loads(content)["id"] == account
        code = await asyncio.to_thread(stack.processes[name].wait, EXIT_WITHIN_S + 20)
        took = time.monotonic() - started
        assert code == 0 and took <= EXIT_WITHIN_S, f"{name}: exit code {code} after {took:.1f}s"
        await asyncio.to_thread(stack.restart, name)

    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as http:
        balance = (await http.get(f"/account/{account}")).json()["balance"]
        kinds = [e["kind"] for e in (await http.get(f"/account/{account}/transactions")).json()]
    assert balance == 6 * 5, "every in-flight deposit made, and made once"
    assert kinds.count("DEPOSIT") == 6
