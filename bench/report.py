"""The results: one table (printed, and written as markdown and JSON) and two plots (PNG)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.profiling import Hotspot

PERCENTILES = ("p50", "p90", "p99", "max")
STAGES = ("HTTP POST /orders", "order → decision", "decision → notification", "order → notification")
PROCESSES = ("gateway", "order", "billing", "notification", "postgres", "kafka")
# Issue 10's targets: the budget of CPU per order over every process, and the latency at two rates.
CPU_BUDGET_MS = 2.0
TARGET_ORDERS_PER_S = 1000
P99_TARGETS_MS = {50.0: 100.0, 500.0: 250.0}


def percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles of `values` (NaN when there are none)."""
    if not values:
        return dict.fromkeys(PERCENTILES, math.nan)
    ordered = sorted(values)
    rank = {"p50": 0.50, "p90": 0.90, "p99": 0.99}
    result = {name: ordered[max(0, math.ceil(share * len(ordered)) - 1)] for name, share in rank.items()}
    result["max"] = ordered[-1]
    return result


@dataclass
class PhaseResult:
    name: str
    kind: str  # "open" (a fixed rate) or "closed" (connections placing orders back to back)
    offered_rate: float | None = None
    connections: int | None = None
    placed: int = 0
    failed: int = 0
    abandoned: int = 0  # open loop: never sent, the schedule having fallen too far behind
    notified: int = 0
    placed_per_s: float = math.nan
    notified_per_s: float = math.nan
    generator_lag_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_ms_per_order: dict[str, float] = field(default_factory=dict)
    generator_cpu_share: float = math.nan  # of one core, over the placing
    memory_mb: dict[str, float] = field(default_factory=dict)
    ceiling_per_s: float | None = None
    ceiling_cpu_ms_per_request: float | None = None
    ceiling_generator_cpu_share: float | None = None
    profiled: bool = False


@dataclass(frozen=True)
class StatementRow:
    query: str
    calls_per_order: float
    total_ms: float
    mean_ms: float
    rows_per_call: float


@dataclass
class Report:
    machine: str
    date: str
    phases: list[PhaseResult]
    ready_s: dict[str, float]
    statements: list[StatementRow] = field(default_factory=list)
    statements_per_order: float | None = None
    transactions_per_order: float | None = None
    hotspots: dict[str, list[Hotspot]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


NONE = "-"


def _number(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NONE
    return f"{value:,.{digits}f}"


def _percent(share: float | None) -> float | None:
    return None if share is None else 100 * share


def table_rows(phases: list[PhaseResult]) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, cells: list[str]) -> None:
        rows.append((label, cells))

    row(
        "orders placed / notified",
        [f"{p.placed:,} / {p.notified:,}" for p in phases],
    )
    row("refused (not 200) / never sent", [f"{p.failed:,} / {p.abandoned:,}" for p in phases])
    row("placed/s (HTTP 200)", [_number(p.placed_per_s) for p in phases])
    row("notified/s (end to end)", [_number(p.notified_per_s) for p in phases])
    row("bare FastAPI ceiling, req/s", [_number(p.ceiling_per_s) for p in phases])
    row("ceiling CPU ms/request", [_number(p.ceiling_cpu_ms_per_request, 2) for p in phases])
    row("ceiling: load generator, % of a core", [_number(_percent(p.ceiling_generator_cpu_share)) for p in phases])
    row("generator lag p99 / max, ms", [
        f"{_number(p.generator_lag_ms.get('p99'))} / {_number(p.generator_lag_ms.get('max'))}"
        if p.generator_lag_ms else NONE
        for p in phases
    ])  # fmt: skip
    for stage in STAGES:
        for name in PERCENTILES:
            cells = [_number(p.latency_ms.get(stage, {}).get(name), 1) for p in phases]
            row(f"{stage} {name}, ms", cells)
    for process in (*PROCESSES, "total"):
        row(f"CPU ms/order, {process}", [_number(p.cpu_ms_per_order.get(process), 2) for p in phases])
    row("load generator, % of a core", [_number(_percent(p.generator_cpu_share)) for p in phases])
    for process in PROCESSES:
        label = "PSS MB, postgres (all)" if process == "postgres" else f"RSS MB, {process}"
        row(label, [_number(p.memory_mb.get(process)) for p in phases])
    return rows


def _headers(phases: list[PhaseResult]) -> list[str]:
    return [p.name + (" (profiled)" if p.profiled else "") for p in phases]


def text_table(phases: list[PhaseResult]) -> str:
    rows = table_rows(phases)
    headers = _headers(phases)
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(h), *(len(cells[i]) for _, cells in rows)) for i, h in enumerate(headers)]
    lines = [" " * label_width + "  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    for label, cells in rows:
        lines.append(
            label.ljust(label_width) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)


def markdown_table(phases: list[PhaseResult]) -> str:
    lines = ["| | " + " | ".join(_headers(phases)) + " |", "|---|" + "---:|" * len(phases)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in table_rows(phases)]
    return "\n".join(lines)


def statements_table(report: Report) -> str:
    if not report.statements:
        return "pg_stat_statements: not available in this PostgreSQL installation"
    lines = [
        f"PostgreSQL statements in the closed-loop phases: {_number(report.statements_per_order, 1)} per order, "
        f"{_number(report.transactions_per_order, 1)} transactions committed per order; top by total time:",
        "| calls/order | total ms | mean ms | rows/call | statement |",
        "|---:|---:|---:|---:|---|",
    ]
    for s in report.statements:
        query = _abridged(s.query)
        lines.append(
            f"| {s.calls_per_order:.2f} | {s.total_ms:,.0f} | {s.mean_ms:.3f} | {s.rows_per_call:.1f} | `{query}` |"
        )
    return "\n".join(lines)


def _abridged(query: str, width: int = 160) -> str:
    """A statement short enough for a table row: a long select list becomes "…", so that what it
    reads from and its WHERE clause stay in view (results.json keeps the whole text)."""
    query = re.sub(r"^SELECT (.{40,}?) FROM ", "SELECT … FROM ", query)
    query = re.sub(
        r"^INSERT INTO (\S+) \(.*?\) VALUES \(.*?\)( ON CONFLICT| RETURNING|$)", r"INSERT INTO \1 … VALUES …\2", query
    )
    query = re.sub(r"\b(\w+)\.(\w+)\.(\w+)\b", r"\2.\3", query)  # schema.table.column → table.column
    return query if len(query) <= width else query[: width - 1] + "…"


def hotspots_table(report: Report) -> str:
    lines = []
    for process, spots in report.hotspots.items():
        lines.append(f"py-spy, {process}: the functions with the most CPU samples of their own (self / total)")
        for spot in spots:
            lines.append(f"  {spot.self_share:6.1%} {spot.total_share:6.1%}  {spot.function}")
    return "\n".join(lines)


def write(report: Report, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "results.json").write_text(json.dumps(asdict(report), indent=2, ensure_ascii=False, default=str))
    markdown = [
        f"Machine: {report.machine}. Date: {report.date}.",
        "",
        markdown_table(report.phases),
        "",
        statements_table(report),
    ]
    if report.hotspots:
        markdown += ["", "```", hotspots_table(report), "```"]
    if report.notes:
        markdown += ["", *(f"- {note}" for note in report.notes)]
    (results / "table.md").write_text("\n".join(markdown) + "\n")
    plot_latency(report.phases, results / "latency-vs-rate.png")
    plot_throughput(report.phases, results / "throughput-vs-connections.png")


def plot_latency(phases: list[PhaseResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    open_phases = [p for p in phases if p.kind == "open" and p.offered_rate]
    if not open_phases:
        return
    rates = [float(p.offered_rate or 0) for p in open_phases]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for axis, stage in zip(axes.flat, STAGES, strict=True):
        for name, style in zip(PERCENTILES, ("o-", "s-", "^-", "x--"), strict=True):
            axis.plot(rates, [p.latency_ms.get(stage, {}).get(name, math.nan) for p in open_phases], style, label=name)
        if stage == "order → notification":
            targets = [(rate, ms) for rate, ms in sorted(P99_TARGETS_MS.items()) if min(rates) <= rate <= max(rates)]
            axis.plot([r for r, _ in targets], [t for _, t in targets], "r*", markersize=12, label="p99 target")
        axis.set_title(stage)
        axis.set_yscale("log")
        axis.set_ylabel("ms")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    for axis in axes[1]:
        axis.set_xlabel("offered rate, orders/s (open loop)")
        axis.set_xticks(rates)
    figure.suptitle("Latency percentiles against rate (timestamps written by the services)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_throughput(phases: list[PhaseResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = [p for p in phases if p.kind == "closed" and p.connections]
    if not closed:
        return
    connections = [int(p.connections or 0) for p in closed]
    figure, axis = plt.subplots(figsize=(9, 6))
    axis.plot(
        connections, [p.placed_per_s for p in closed], "o-", label="orders placed/s (HTTP 200, through the gateway)"
    )
    axis.plot(connections, [p.notified_per_s for p in closed], "s-", label="orders notified/s (end to end)")
    axis.plot(
        connections,
        [p.ceiling_per_s or math.nan for p in closed],
        "^--",
        label="bare FastAPI endpoint, req/s (ceiling)",
    )
    axis.axhline(TARGET_ORDERS_PER_S, color="red", linestyle=":", label=f"target {TARGET_ORDERS_PER_S}/s notified")
    axis.set_xscale("log", base=2)
    axis.set_xticks(connections)
    axis.set_xticklabels([str(c) for c in connections])
    axis.set_xlabel("keep-alive connections (closed loop)")
    axis.set_ylabel("per second (log scale)")
    axis.set_yscale("log")  # the ceiling is an order of magnitude above the stack
    axis.grid(True, alpha=0.3)
    axis.legend()
    axis.set_title("Throughput against connections (load generator on the same cores)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
