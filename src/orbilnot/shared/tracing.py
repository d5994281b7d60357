"""Tracing with OpenTelemetry: one trace per order, from the gateway through Kafka to the
notification (README, "Tracing").

Off unless the standard `OTEL_*` variables ask for it (`wanted`), and then nothing of
OpenTelemetry is even imported: every hook below is a check of one module variable. On, `setup`
builds the SDK from those variables (OTLP over HTTP/protobuf) and instruments what has a
maintained instrumentation: the ASGI servers (FastAPI's for the services), aiohttp's client (the
gateway's requests to the services) and SQLAlchemy (every statement). Kafka gets spans of our own, because
the outbox splits a message's life in two:

- a state change records its event in the outbox *with* the trace context of the moment
  (`with_trace_context`, in `outbox.outbox_row`): the W3C `traceparent` in the row's `headers`;
- the relay publishes the row later, in another task, under a `publish <topic>` span whose
  parent is that stored context, and sends the span's own `traceparent` as a Kafka header
  (`publishing`);
- a consumer stores each message under a `process <topic>` span, the child of that header
  (`consuming_batch`), and what the handler writes for the message (billing's inbox row) carries
  that span's context on (`consumer.consumed_trace_context`).

aiokafka's instrumentation does not fit that: its send span is a child of whatever runs the send
(the relay's loop, not the order), and its receive span ends when `getmany()` returns, before the
handler has run in its transaction.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Tracer
    from sqlalchemy.ext.asyncio import AsyncEngine
    from starlette.types import ASGIApp, Receive, Scope, Send


# Set by `setup` when tracing is on; None means off, and every function here returns at once.
_tracer: Tracer | None = None
# OTEL_PYTHON_DISABLED_INSTRUMENTATIONS, as OpenTelemetry's auto-instrumentation reads it: e.g.
# `sqlalchemy` keeps the traces of orders without a span per statement (a third of the cost).
_disabled: frozenset[str] = frozenset()

# The headers the W3C propagator writes; a message's own are replaced by its publish span's.
TRACE_HEADERS = ("traceparent", "tracestate")
# Probes and scrapes every few seconds are not worth a trace each (OTEL_PYTHON_EXCLUDED_URLS
# replaces this list).
DEFAULT_EXCLUDED_URLS = "/health/live,/health/ready,/metrics"
_OFF = nullcontext()


class TracingConfigError(ValueError):
    """An `OTEL_*` setting this process cannot honour."""


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the environment asks for traces: an OTLP endpoint or a traces exporter is named,
    and `OTEL_SDK_DISABLED` is not true. Nothing set means off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(
        environ.get(name, "").strip()
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")
    )


def enabled() -> bool:
    return _tracer is not None


def setup(service: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on for this process if the environment asks for it; True if it did.

    Called once, before the app is built. `OTEL_SERVICE_NAME` names the process (default
    `orbilnot-<service>`); `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`
    and the `OTEL_EXPORTER_OTLP_*` settings are the SDK's own. `OTEL_TRACES_EXPORTER` may be `otlp`
    (the default), `console` or `none` (spans made and propagated, sent nowhere).
    """
    global _tracer, _disabled
    if not wanted(environ):
        return False
    _disabled = frozenset(
        name.strip().lower() for name in environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
    )
    exporter_name = (environ.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
    if exporter_name not in ("otlp", "console", "none"):
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={exporter_name!r}: only otlp, console or none")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if exporter_name == "otlp" and protocol not in (None, "", "http/protobuf"):
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: only http/protobuf is supported")

    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    # Given attributes win over OTEL_RESOURCE_ATTRIBUTES in Resource.create; OTEL_SERVICE_NAME
    # must still win over our default.
    name = environ.get("OTEL_SERVICE_NAME") or f"orbilnot-{service}"
    # The sampler OTEL_TRACES_SAMPLER names, as the SDK builds it for a provider given none.
    configured = TracerProvider(shutdown_on_exit=False).sampler
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: name}), sampler=_no_orphan_client_spans(configured)
    )
    exporter: SpanExporter | None = None
    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    elif exporter_name == "console":
        exporter = ConsoleSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    if "aiohttp-client" not in _disabled:
        # Every aiohttp session made from now on: the gateway's client to the services (proxy.py).
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

        AioHttpClientInstrumentor().instrument()
    _tracer = trace.get_tracer("orbilnot")
    return True


def shutdown() -> None:
    """Send the spans still buffered (the SDK's own exit hook does not run when a process leaves
    with os._exit, serve.py)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    shutdown_provider = getattr(provider, "shutdown", None)
    if shutdown_provider is not None:
        shutdown_provider()


def _excluded_urls() -> str:
    return os.environ.get("OTEL_PYTHON_EXCLUDED_URLS") or DEFAULT_EXCLUDED_URLS


def instrument_service_app(app: Any) -> None:
    """A service's FastAPI app: one server span per request, named by its route template."""
    if _tracer is None or "fastapi" in _disabled:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls=_excluded_urls(), exclude_spans=["receive", "send"])


# The headers a client could continue (or seed) a trace with. The gateway is the edge: a client's
# `traceparent` would choose the trace id and, with its sampled flag, make every service record
# every span of its requests whatever the sampler says. So they never reach the instrumentation or
# an upstream: each client request starts a root span, which keeps a client's context as a link.
CLIENT_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})
_CLIENT_TRACE_CONTEXT = "orbilnot.client_trace_context"  # the removed headers, in the ASGI scope


def instrument_gateway_app(app: ASGIApp) -> ASGIApp:
    """The gateway's app wrapped in the ASGI instrumentation: the root span of a client's request."""
    if _tracer is None or "asgi" in _disabled:
        return _without_client_trace_context(app, CLIENT_TRACE_HEADERS)
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.propagate import get_global_textmap

    # Whatever OTEL_PROPAGATORS reads (b3, jaeger, …) as well as the W3C headers.
    fields = CLIENT_TRACE_HEADERS | {field.lower().encode("latin-1") for field in get_global_textmap().fields}
    instrumented = OpenTelemetryMiddleware(
        app,
        excluded_urls=_excluded_urls(),
        default_span_details=_gateway_span_details,
        exclude_spans=["receive", "send"],
        server_request_hook=_link_client_context,
    )
    return _without_client_trace_context(instrumented, frozenset(fields))


def _without_client_trace_context(app: ASGIApp, fields: frozenset[bytes]) -> ASGIApp:
    """`app`, which never sees a client's trace headers (kept aside in the scope for the link)."""

    async def stripped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(name in fields for name, _ in scope["headers"]):
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            scope["headers"] = [(name, value) for name, value in headers if name not in fields]
            scope[_CLIENT_TRACE_CONTEXT] = {
                name.decode("latin-1"): value.decode("latin-1") for name, value in headers if name in fields
            }
        await app(scope, receive, send)

    return stripped


def _link_client_context(span: Any, scope: Scope) -> None:
    """The request's root span links to the client's own span, if it sent a valid context."""
    carried = scope.get(_CLIENT_TRACE_CONTEXT)
    if not carried:
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    client = trace.get_current_span(extract(carried)).get_span_context()
    if client.is_valid:
        span.add_link(client, {"orbilnot.link": "client trace context"})


def isolate_requests(app: ASGIApp) -> ASGIApp:
    """`app`, each HTTP request of which starts from an empty trace context.

    A request's task inherits the context current where it was created, and on a keep-alive
    connection that can be the previous request's: the protocol resumes reading from inside the
    previous response's last send (asyncio's callbacks keep the context they were scheduled in).
    The next request's server span then became an internal child of the previous request's, in
    its trace (seen in the e2e test: the gateway's POST /orders under the PUT /account before it).
    In the services only the request's own `traceparent` header (the gateway's) may give it a
    parent; the gateway gives none to a client (instrument_gateway_app).
    """
    if _tracer is None:
        return app
    from opentelemetry import context

    async def isolated(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        token = context.attach(context.Context())
        try:
            await app(scope, receive, send)
        finally:
            context.detach(token)

    return isolated


def _gateway_span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    # Named by the prefix that picks the upstream ("POST /order"), not the full path: ids in
    # span names make every trace look unique.
    prefix = "/" + scope.get("path", "/").lstrip("/").split("/", 1)[0]
    return f"{scope.get('method', 'HTTP')} {prefix}", {}


def instrument_engine(engine: AsyncEngine) -> None:
    """A span per SQL statement run through `engine` (the health checks' engine is left out)."""
    if _tracer is None or "sqlalchemy" in _disabled:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine, skip_dep_check=True)


# -- the trace context, carried through the database and Kafka ----------------------------------


def with_trace_context(headers: Mapping[str, str] | None) -> dict[str, str]:
    """`headers` plus the current trace context (W3C), for a message to be sent later."""
    carried = dict(headers or {})
    if _tracer is not None:
        from opentelemetry.propagate import inject

        inject(carried)
    return carried


def current_context() -> dict[str, str] | None:
    """The current trace context as W3C headers, to store with work another task will do; None
    when off or outside any span."""
    if _tracer is None:
        return None
    return with_trace_context(None) or None


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for log lines; None when off or outside one."""
    if _tracer is None:
        return None
    from opentelemetry.trace import get_current_span

    context = get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def span(name: str, *, parent: Mapping[str, str] | None = None, **attributes: Any) -> AbstractContextManager[Any]:
    """An internal span around a step, made current; `parent` is a stored context (W3C headers)
    when the step continues a trace in another task, else the current span is the parent."""
    if _tracer is None:
        return _OFF
    from opentelemetry.propagate import extract

    context = extract(parent) if parent is not None else None
    return _tracer.start_as_current_span(name, context=context, attributes=_clean(attributes))


def consuming(record: ConsumerRecord, group: str) -> AbstractContextManager[Any]:
    """The `process <topic>` span of one consumed message, current while its handler runs: the
    child of the publish span whose `traceparent` the message carries."""
    if _tracer is None:
        return _OFF
    return _tracer.start_as_current_span(**_consuming_span_arguments(record, group))


def _consuming_span_arguments(record: ConsumerRecord, group: str) -> dict[str, Any]:
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    # A header may come without a value (None): no context to continue, never a failed message.
    carrier = {
        key: value.decode("latin-1")
        for key, value in (record.headers or ())
        if key in TRACE_HEADERS and value is not None
    }
    return {
        "name": f"process {record.topic}",
        "context": extract(carrier),
        "kind": SpanKind.CONSUMER,
        "attributes": {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.consumer.group.name": group,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
        },
    }


@contextmanager
def consuming_batch(records: Sequence[ConsumerRecord], group: str) -> Iterator[list[dict[str, str] | None]]:
    """The `process <topic>` spans of a batch the consumer stores in one transaction: one per
    message, the child of the publish span whose `traceparent` it carries, open until the batch is
    stored (or fails). Yields each message's span context as W3C headers, for the handler to
    store with what it records for that message (None each when off).

    A span can be current for only one message at a time: a batch of one makes its span current,
    so its statements are its children (the common case at low rates, and every event stored
    alone after its batch failed); in a larger batch the statements belong to no one message.
    """
    if _tracer is None:
        yield [None] * len(records)
        return
    if len(records) == 1:
        with consuming(records[0], group):
            yield [current_context()]
        return
    from opentelemetry.trace import Status, StatusCode, set_span_in_context

    spans = [_tracer.start_span(**_consuming_span_arguments(record, group)) for record in records]
    try:
        yield [_as_headers(set_span_in_context(span)) for span in spans]
    except BaseException as error:
        for span in spans:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, repr(error)[:200]))
        raise
    finally:
        for span in spans:
            span.end()


def _as_headers(context: Any) -> dict[str, str] | None:
    """`context` (an OpenTelemetry Context) as W3C headers."""
    from opentelemetry.propagate import inject

    carried: dict[str, str] = {}
    inject(carried, context=context)
    return carried or None


@contextmanager
def publishing(messages: Sequence[tuple[str, str, Mapping[str, Any]]]) -> Iterator[list[dict[str, str]]]:
    """The headers to send with each (topic, key, stored headers), while their `publish <topic>`
    spans are open: from the send until the broker's ack, or the error that ends the block.

    Each span's parent is the context stored with its outbox row, so a batch of rows from many
    orders yields spans in as many traces; the `traceparent` sent is the publish span's own.
    """
    if _tracer is None:
        yield [{name: str(value) for name, value in headers.items()} for _, _, headers in messages]
        return
    from opentelemetry.propagate import extract, inject
    from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

    spans = []
    outgoing = []
    for topic, key, headers in messages:
        stored = {name: str(value) for name, value in headers.items()}
        publish = _tracer.start_span(
            f"publish {topic}",
            context=extract(stored),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
                "messaging.kafka.message.key": key,
            },
        )
        sent = {name: value for name, value in stored.items() if name not in TRACE_HEADERS}
        inject(sent, context=set_span_in_context(publish))
        spans.append(publish)
        outgoing.append(sent)
    try:
        yield outgoing
    except BaseException as error:
        for publish in spans:
            publish.record_exception(error)
            publish.set_status(Status(StatusCode.ERROR, repr(error)[:200]))
        raise
    finally:
        for publish in spans:
            publish.end()


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Span attributes must be str, bool, int or float: ids and amounts become strings."""
    return {
        f"orbilnot.{name}": value if isinstance(value, str | bool | int | float) else str(value)
        for name, value in attributes.items()
        if value is not None
    }


def _no_orphan_client_spans(inner: Sampler) -> Sampler:
    """The configured sampler, except that a client span with no parent is dropped.

    The relay's claims, the processor's polls and the readiness probes run SQL outside any request
    or message; a trace of one statement each, every few hundred milliseconds, would bury the
    traces of orders. Server, consumer, producer and internal spans are sampled as configured.
    """
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import Link, SpanKind, TraceState, get_current_span
    from opentelemetry.util.types import Attributes

    class NoOrphanClientSpans(Sampler):
        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
            trace_state: TraceState | None = None,
        ) -> SamplingResult:
            if kind is SpanKind.CLIENT and not get_current_span(parent_context).get_span_context().is_valid:
                return SamplingResult(Decision.DROP)
            return inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"NoOrphanClientSpans({inner.get_description()})"

    return NoOrphanClientSpans()
