"""`python -m bench.trace_picture [docs/trace.png]`: one order's trace, drawn as a waterfall.

Runs the stack once as `make bench` does (its own PostgreSQL and Kafka), with tracing on and the
exporters pointed at a receiver in this process (bench/otlp.py); opens an account, deposits,
places one order, waits for its notification and for the whole trace, and draws every span of it:
one bar per span, from its start to its end, coloured by process (README, "Tracing").
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import matplotlib
from matplotlib.patches import Patch

from bench.otlp import OtlpReceiver, ReceivedSpan, ancestors, order_trace
from bench.stack import running_stack

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

REPO = Path(__file__).resolve().parents[1]
COLOURS = {
    "orbilnot-gateway": "#4c72b0",
    "orbilnot-order": "#dd8452",
    "orbilnot-billing": "#55a868",
    "orbilnot-notification": "#c44e52",
}
PROCESSES = set(COLOURS)


def place_one_order(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=10) as http:
        account = http.post("/account/", json={"actionType": "CREATE_NEW", "amount": 0}).json()
        http.put("/account/", json={"accountId": account, "amount": 100, "actionType": "DEPOSIT_MONEY"})
        http.post("/orders/", json={"accountId": account, "amount": 10}).raise_for_status()
        deadline = time.monotonic() + 30
        while not http.get(f"/notifications/{account}").json():
            if time.monotonic() > deadline:
                raise TimeoutError("no notification within 30 s")
            time.sleep(0.05)


def complete(spans: list[ReceivedSpan]) -> bool:
    """Every process has sent its part, and the notification's consume is in."""
    names = {(s.service, s.name.split(" ")[0]) for s in spans}
    return {s.service for s in spans} == PROCESSES and ("orbilnot-notification", "process") in names


def draw(trace: list[ReceivedSpan], out: Path) -> None:
    start = trace[0].start_ns
    figure, axes = plt.subplots(figsize=(11, 0.26 * len(trace) + 1.4))
    for row, span in enumerate(trace):
        depth = len(ancestors(span, trace))
        left_ms = (span.start_ns - start) / 1e6
        width_ms = max((span.end_ns - span.start_ns) / 1e6, 0.05)
        axes.barh(row, width_ms, left=left_ms, height=0.7, color=COLOURS.get(span.service, "grey"))
        label = f"{'  ' * depth}{span.service.removeprefix('orbilnot-')}: {span.name[:60]}"
        axes.text(left_ms + width_ms + 0.3, row, f"{label}  {width_ms:.1f} ms", va="center", fontsize=7)
    axes.invert_yaxis()
    axes.set_yticks([])
    axes.set_xlabel("ms since the gateway received POST /orders")
    end_ms = max((s.end_ns - start) / 1e6 for s in trace)
    axes.set_xlim(0, end_ms * 1.6)
    axes.set_title(f"One order, one trace: {len(trace)} spans in 4 processes ({trace[0].trace_id[:12]}…)")
    handles = [Patch(color=c) for c in COLOURS.values()]
    axes.legend(handles, [name.removeprefix("orbilnot-") for name in COLOURS], loc="lower right", fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else REPO / "docs" / "trace.png"
    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with running_stack(REPO / "bench-results", REPO / ".orbilnot" / "kafka-lib", env) as stack:
            place_one_order(stack.urls["gateway"])
            deadline = time.monotonic() + 30
            while not complete(trace := order_trace(receiver.spans)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the trace is incomplete: {[(s.service, s.name) for s in trace]}")
                time.sleep(0.1)
            time.sleep(1)  # the last batches of SQL spans
            trace = order_trace(receiver.spans)
    draw(trace, out)
    print(f"{len(trace)} spans → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
