"""`make bench` (`python -m bench`): the stack on its own PostgreSQL and Kafka, measured.

    python -m bench [--profile] [--tracing] [--rates 50,200,500] [--connections 8,32,128] ...

Phases, one after the other, after a short warm-up:
  1. open loop at each of `--rates` for `--open-seconds`: orders leave on schedule whatever the
     system does; each stage (order → decision → notification) is timed by the services' own
     timestamps in the database;
  2. closed loop at each of `--connections`: that many keep-alive connections place orders back
     to back for `--closed-seconds`; placed/s and notified/s (end to end);
  3. the ceiling: the same closed loop against a bare FastAPI endpoint on the same machine.
For each phase, the CPU time every process spent per order (/proc) and its memory. With
`--profile`, py-spy records each Python process during the last closed-loop phase. PostgreSQL's
statements (pg_stat_statements) are counted over the closed-loop phases. With `--tracing`, the
services trace every order and export the spans to a receiver in this process that counts them.

Prints one table; writes it with the plots under bench-results/ (table.md, results.json,
latency-vs-rate.png, throughput-vs-connections.png, profiles/, logs/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import asyncpg
import httpx

from bench import database, procstat
from bench.loadgen import LoadResult, LoadSpec, load_result
from bench.otlp import OtlpReceiver
from bench.profiling import Recording, hotspots
from bench.report import PROCESSES, PhaseResult, Report, StatementRow, percentiles, statements_table, text_table, write
from bench.report import hotspots_table as format_hotspots
from bench.stack import BenchStack, running_stack

REPO = Path(__file__).resolve().parents[1]
ACCOUNTS = 200
# Large enough that every order is paid: the benchmark times the saga, not the denials.
OPENING_BALANCE = 10**9
NOTIFIED_TIMEOUT_S = 120.0
# An open-loop rate far beyond what the stack can do would otherwise run for as long as it takes.
GIVE_UP_LATE_S = 10.0


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", type=_floats, default=[50.0, 200.0, 500.0], help="open-loop orders/s")
    parser.add_argument("--open-seconds", type=float, default=10.0, help="length of each open-loop phase")
    parser.add_argument("--connections", type=_ints, default=[8, 32, 128], help="closed-loop connection counts")
    parser.add_argument("--closed-seconds", type=float, default=8.0, help="length of each closed-loop phase")
    parser.add_argument("--ceiling-seconds", type=float, default=4.0, help="length of each ceiling phase")
    parser.add_argument("--max-connections", type=int, default=512, help="open loop: most connections at once")
    parser.add_argument("--profile", action="store_true", help="py-spy on each Python process (last closed loop)")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="tracing on: the services export every span over OTLP/HTTP to a receiver here that counts them",
    )
    parser.add_argument("--results", type=Path, default=REPO / "bench-results")
    parser.add_argument("--kafka-lib", type=Path, default=REPO / ".orbilnot" / "kafka-lib")
    return parser.parse_args(argv)


async def open_accounts(gateway: str, count: int) -> list[str]:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        body = {"actionType": "CREATE_NEW", "amount": OPENING_BALANCE}
        responses = await asyncio.gather(*(http.post("/account", json=body) for _ in range(count)))
    for response in responses:
        response.raise_for_status()
    return [str(response.json()) for response in responses]


async def run_load(spec: LoadSpec, work: Path, name: str) -> LoadResult:
    """The load generator in a process of its own."""
    spec_file, result_file = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec_file.write_text(json.dumps(asdict(spec)))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", str(spec_file), str(result_file), cwd=REPO
    )
    try:
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"the load generator failed (exit {process.returncode})")
    return load_result(result_file)


class Bench:
    def __init__(self, stack: BenchStack, args: argparse.Namespace, db: asyncpg.Connection) -> None:
        self.stack = stack
        self.args = args
        self.db = db
        self.watched = stack.watched()
        self.work = args.results / "logs"
        self.accounts: list[str] = []

    async def phase(self, name: str, spec: LoadSpec, *, profile_dir: Path | None = None) -> PhaseResult:
        result = PhaseResult(
            name=name,
            kind=spec.mode,
            offered_rate=spec.rate if spec.mode == "open" else None,
            connections=spec.connections if spec.mode == "closed" else None,
            profiled=profile_dir is not None,
        )
        baseline = await database.notification_count(self.db)
        cpu_before = procstat.cpu_snapshot(self.watched)
        recording = None
        if profile_dir is not None:
            pids = {n: self.watched[n].pid for n in ("gateway", "order", "billing", "notification")}
            recording = Recording(pids, profile_dir, spec.seconds)
        try:
            load = await run_load(spec, self.work, name.replace(" ", "-").replace("/", ""))
        finally:
            if recording is not None:
                recording.stop()
        order_ids = [p.order_id for p in load.placed]
        result.notified = await database.wait_notified(self.db, baseline, len(order_ids), NOTIFIED_TIMEOUT_S)
        cpu = procstat.cpu_delta(cpu_before, procstat.cpu_snapshot(self.watched))
        result.memory_mb = procstat.memory_mb(self.watched)
        result.placed, result.failed, result.abandoned = len(load.placed), load.failed, load.abandoned
        if load.abandoned:
            print(f"  {name}: {load.abandoned} orders given up, still unsent {GIVE_UP_LATE_S:g} s after the schedule")
        if load.failures:
            print(f"  {name}: {load.failed} requests failed, e.g. {load.failures[0]}", file=sys.stderr)
        if load.placed:
            first_sent = min(p.sent for p in load.placed)
            last_answer = max(p.answered for p in load.placed)
            result.placed_per_s = len(load.placed) / max(last_answer - first_sent, 1e-9)
            result.cpu_ms_per_order = {p: 1000 * cpu[p] / len(load.placed) for p in PROCESSES}
            result.cpu_ms_per_order["total"] = sum(result.cpu_ms_per_order.values())
        result.generator_cpu_share = load.cpu_s / max(load.finished, 1e-9)
        if spec.mode == "open":
            result.generator_lag_ms = percentiles([1000 * (p.sent - p.scheduled) for p in load.placed])
        stages = await database.order_stages(self.db, order_ids)
        result.latency_ms["HTTP POST /orders"] = percentiles([1000 * (p.answered - p.sent) for p in load.placed])
        result.latency_ms["order → decision"] = percentiles([1000 * (s.decided - s.created) for s in stages])
        result.latency_ms["decision → notification"] = percentiles([1000 * (s.notified - s.decided) for s in stages])
        result.latency_ms["order → notification"] = percentiles([1000 * (s.notified - s.created) for s in stages])
        if stages:
            span = max(s.notified for s in stages) - min(s.created for s in stages)
            result.notified_per_s = len(stages) / max(span, 1e-9)
        print(f"  {name}: {result.placed_per_s:,.0f} placed/s, {result.notified_per_s:,.0f} notified/s", flush=True)
        return result

    async def ceiling(self, phase: PhaseResult, connections: int) -> None:
        """Requests per second and CPU ms per request of the bare FastAPI endpoint, and how much of
        a core the generator needed to keep it busy (near 100 %: the generator was the limit)."""
        pid = self.stack.processes["ceiling"].pid
        before = procstat.cpu_seconds(pid)
        spec = LoadSpec(
            port=self.stack.port("ceiling"),
            accounts=self.accounts,
            mode="closed",
            connections=connections,
            seconds=self.args.ceiling_seconds,
        )
        load = await run_load(spec, self.work, f"ceiling-{connections}")
        spent = procstat.cpu_seconds(pid) - before
        phase.ceiling_per_s = len(load.placed) / max(load.finished, 1e-9)
        phase.ceiling_cpu_ms_per_request = 1000 * spent / max(len(load.placed), 1)
        phase.ceiling_generator_cpu_share = load.cpu_s / max(load.finished, 1e-9)


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        memory_kb = 0
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{os.cpu_count()} cores ({model}), {memory_kb / 1024**2:.0f} GiB, {system}"


async def measure(stack: BenchStack, args: argparse.Namespace) -> Report:
    db = await asyncpg.connect(stack.database_url)
    try:
        bench = Bench(stack, args, db)
        gateway_port = stack.port("gateway")
        bench.accounts = await open_accounts(stack.urls["gateway"], ACCOUNTS)
        load_before = os.getloadavg()
        print("warm-up …", flush=True)
        await bench.phase(
            "warm-up", LoadSpec(port=gateway_port, accounts=bench.accounts, mode="open", rate=50, count=100)
        )
        phases: list[PhaseResult] = []
        print("open loop:", flush=True)
        for rate in args.rates:
            spec = LoadSpec(
                port=gateway_port,
                accounts=bench.accounts,
                mode="open",
                rate=rate,
                count=int(rate * args.open_seconds),
                max_connections=args.max_connections,
                give_up_late_s=GIVE_UP_LATE_S,
            )
            phases.append(await bench.phase(f"{rate:g}/s", spec))
        print("closed loop:", flush=True)
        if stack.pg_stat_statements:
            await database.reset_statements(db)
        commits_before = await database.transactions_committed(db)
        for connections in args.connections:
            profile = args.profile and connections == args.connections[-1]
            spec = LoadSpec(
                port=gateway_port,
                accounts=bench.accounts,
                mode="closed",
                connections=connections,
                seconds=args.closed_seconds,
            )
            profile_dir = args.results / "profiles" if profile else None
            phases.append(await bench.phase(f"{connections} conn", spec, profile_dir=profile_dir))
        closed_orders = sum(p.placed for p in phases if p.kind == "closed")
        report = Report(
            machine=_machine(),
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            phases=phases,
            ready_s=dict(stack.ready_s),
        )
        report.transactions_per_order = (await database.transactions_committed(db) - commits_before) / closed_orders
        if stack.pg_stat_statements:
            top, all_calls = await database.top_statements(db)
            report.statements_per_order = all_calls / closed_orders
            report.statements = [
                StatementRow(s.query, s.calls / closed_orders, s.total_ms, s.mean_ms, s.rows / max(s.calls, 1))
                for s in top
            ]
        print("ceiling (bare FastAPI):", flush=True)
        for phase in phases:
            if phase.kind == "closed" and phase.connections:
                await bench.ceiling(phase, phase.connections)
                print(f"  {phase.connections} conn: {phase.ceiling_per_s:,.0f} req/s", flush=True)
        if args.profile:
            profiles = args.results / "profiles"
            for name in ("gateway", "order", "billing", "notification"):
                file = profiles / f"{name}.speedscope.json"
                if file.exists():
                    samples, spots = hotspots(file)
                    report.hotspots[f"{name} ({samples} samples)"] = spots
        load_after = os.getloadavg()
        report.notes.append(
            f"load average (1 min) {load_before[0]:.1f} before the phases, {load_after[0]:.1f} after: "
            "anything above ~0 means other work shared the two cores"
        )
        return report
    finally:
        await db.close()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM raise KeyboardInterrupt wherever the main thread is, and the stack's
    # clean-up runs. Not asyncio.run's own SIGINT handling: it only cancels the main task, and a
    # cancellation swallowed anywhere below (Python 3.11's asyncio.wait_for can) kept a Ctrl-C'd
    # benchmark waiting for notifications from services the Ctrl-C had already stopped.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    args.results.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"starting PostgreSQL, Kafka and the services (logs in {args.results / 'logs'}) …", flush=True)
    # --tracing: the exporters' whole cost is in the services' CPU, none of a collector's; the
    # receiver (a thread of this process) only decodes and counts.
    receiver = OtlpReceiver(keep=False) if args.tracing else None
    tracing_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint} if receiver else {}
    try:
        with receiver or nullcontext(), running_stack(args.results, args.kafka_lib, tracing_env) as stack:
            print("ready after spawn: " + ", ".join(f"{n} {s:.2f} s" for n, s in stack.ready_s.items()), flush=True)
            report = asyncio.run(measure(stack, args))
            if receiver is not None:
                orders = sum(p.placed for p in report.phases)
                report.notes.append(
                    f"tracing on (OTLP/HTTP, OTEL_TRACES_SAMPLER="
                    f"{os.environ.get('OTEL_TRACES_SAMPLER', 'parentbased_always_on')}"
                    f"{' ' + os.environ.get('OTEL_TRACES_SAMPLER_ARG', '')}): {receiver.count:,} spans received, "
                    f"{receiver.count / max(orders, 1):.1f} per order placed"
                )
    except KeyboardInterrupt:
        print("\ninterrupted: everything the benchmark started is stopped", file=sys.stderr)
        return 130
    write(report, args.results)
    print(f"\n{report.machine}; {report.date}\n")
    print(text_table(report.phases))
    print("\n" + statements_table(report))
    if report.hotspots:
        print("\n" + format_hotspots(report))
    for note in report.notes:
        print(f"\n{note}")
    print(f"\nwritten to {args.results}/ (table.md, results.json, *.png); {time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
