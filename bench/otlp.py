"""A tiny OTLP/HTTP trace receiver on 127.0.0.1: what the services' exporters send, decoded with
`opentelemetry-proto` (README, "Tracing").

The trace test keeps every span it gets to check one order's trace; `make bench --tracing` only
counts them (a stand-in for a collector, so that the exporters' cost is measured, not a
collector's); scripts/trace_picture.py draws one trace from it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    name: str
    kind: str
    trace_id: str  # hex
    span_id: str
    parent_id: str | None  # None for a root span
    start_ns: int
    end_ns: int


class OtlpReceiver:
    """`with OtlpReceiver() as receiver:` serves `receiver.endpoint` (OTEL_EXPORTER_OTLP_ENDPOINT)
    until the block ends; `keep=False` only counts the spans."""

    def __init__(self, *, keep: bool = True) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.count = 0
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _received(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        spans: list[ReceivedSpan] = []
        count = 0
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = attributes.get("service.name", "?")
            for scope_spans in resource_spans.scope_spans:
                count += len(scope_spans.spans)
                if not self._keep:
                    continue
                spans += [
                    ReceivedSpan(
                        service=service,
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                    )
                    for span in scope_spans.spans
                ]
        with self._lock:
            self._spans += spans
            self.count += count
            self.requests += 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver._received(body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per export is noise

        return Handler


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """`span`'s parent, its parent's parent, … up to the root, among `spans` (one trace's)."""
    by_id = {s.span_id: s for s in spans}
    chain: list[ReceivedSpan] = []
    parent = by_id.get(span.parent_id or "")
    while parent is not None and parent not in chain:
        chain.append(parent)
        parent = by_id.get(parent.parent_id or "")
    return chain


def order_trace(spans: list[ReceivedSpan], gateway_span: str = "POST /orders") -> list[ReceivedSpan]:
    """The spans of the (last) trace whose root is the gateway's `gateway_span`, oldest first."""
    roots = [s for s in spans if s.parent_id is None and s.service == "orbilnot-gateway" and s.name == gateway_span]
    if not roots:
        return []
    trace_id = max(roots, key=lambda s: s.start_ns).trace_id
    return sorted((s for s in spans if s.trace_id == trace_id), key=lambda s: s.start_ns)
