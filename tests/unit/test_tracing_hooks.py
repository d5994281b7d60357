"""Tracing's two promises that need no stack (shared/tracing.py): off, nothing of the SDK is
even imported; on, the trace context goes through an outbox row, a Kafka header and a consumer intact,
and JSON log lines carry the current span's ids. Each case runs in a fresh interpreter: the
OpenTelemetry SDK's tracer provider is process-global and set once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from orbilnot.shared import tracing


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_only_the_otel_variables_turn_it_on() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"})


def test_off_nothing_of_opentelemetry_is_imported() -> None:
    _run("""
        import logging, sys
        from orbilnot import serve
        from orbilnot.billing import app, handlers
        from orbilnot.gateway import app as gateway
        from orbilnot.notification import app as notification
        from orbilnot.order import app as order
        from orbilnot.shared import consumer, observability, outbox, relay, tracing

        assert tracing.setup("billing") is False
        row = outbox.outbox_row(__import__("uuid").uuid4(), "t", "k", b"{}", {"a": "b"})
        assert row["headers"] == {"a": "b"}
        with tracing.span("x"), tracing.publishing([("t", "k", {"a": 1})]) as headers:
            assert headers == [{"a": "1"}]
        record = logging.LogRecord("x", logging.INFO, "test", 1, "hello", None, None)
        assert "trace_id" not in observability.JsonFormatter().format(record)
        # FastAPI itself imports opentelemetry's API (a few modules, no-ops); the SDK, the
        # exporter and the instrumentations are what tracing would add.
        added = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.instrumentation")
        loaded = sorted(name for name in sys.modules if name.startswith(added))
        assert not loaded, loaded
    """)


def test_on_the_context_goes_from_a_request_through_the_outbox_and_kafka_to_the_consumer() -> None:
    _run(
        """
        import json, logging, uuid
        from aiokafka.structs import ConsumerRecord
        from opentelemetry import trace
        from orbilnot.shared import observability, outbox, tracing

        assert tracing.setup("order") is True
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("POST /orders") as request:
            row = outbox.outbox_row(uuid.uuid4(), "order.event", "k", b"{}", {"other": "kept"})
            record = logging.LogRecord("x", logging.INFO, "test", 1, "placed", None, None)
            logged = json.loads(observability.JsonFormatter().format(record))
        ids = request.get_span_context()
        assert logged["trace_id"] == f"{ids.trace_id:032x}" and logged["span_id"] == f"{ids.span_id:016x}"
        assert row["headers"]["traceparent"].split("-")[1:3] == [f"{ids.trace_id:032x}", f"{ids.span_id:016x}"]

        # later, in the relay's task: the publish span is the stored request's child, and its own
        # traceparent replaces the stored one in what is sent
        with tracing.publishing([("order.event", "k", row["headers"])]) as [sent]:
            publish = trace.get_current_span()  # publishing() does not make its spans current
            assert not publish.get_span_context().is_valid
        assert sent["other"] == "kept"
        _, trace_id, publish_id, _ = sent["traceparent"].split("-")
        assert trace_id == f"{ids.trace_id:032x}" and publish_id != f"{ids.span_id:016x}"

        headers = [(name, value.encode()) for name, value in sent.items()]
        message = ConsumerRecord("order.event", 0, 7, 0, 0, b"k", b"{}", None, 1, 2, headers)
        with tracing.consuming(message, "orbilnot-billing"):
            current = trace.get_current_span()
            stored = tracing.current_context()
        assert current.parent.span_id == int(publish_id, 16) and current.parent.trace_id == ids.trace_id
        with tracing.span("billing decide", parent=stored) as decide:
            assert decide.parent.span_id == current.get_span_context().span_id
        print("ok")
        """,
        OTEL_TRACES_EXPORTER="none",
    )


def test_on_a_batch_of_messages_gives_each_message_its_own_span_in_its_own_trace() -> None:
    _run(
        """
        from aiokafka.structs import ConsumerRecord
        from opentelemetry import trace
        from orbilnot.shared import tracing

        assert tracing.setup("billing") is True
        tracer = trace.get_tracer("test")
        messages, publishes = [], []
        for offset in (1, 2):
            with tracer.start_as_current_span(f"publish {offset}") as publish:
                headers = [(name, value.encode()) for name, value in tracing.current_context().items()]
            publishes.append(publish.get_span_context())
            messages.append(ConsumerRecord("order.event", 0, offset, 0, 0, b"k", b"{}", None, 1, 2, headers))

        with tracing.consuming_batch(messages, "orbilnot-billing") as contexts:
            # no one message's span is current while the batch is stored
            assert not trace.get_current_span().get_span_context().is_valid
        assert len(contexts) == 2
        for context, publish in zip(contexts, publishes):
            with tracing.span("billing decide", parent=context) as decide:
                process_span_id = decide.parent.span_id
                assert decide.get_span_context().trace_id == publish.trace_id
            assert process_span_id not in (publish.span_id for publish in publishes)
        assert contexts[0]["traceparent"] != contexts[1]["traceparent"]

        with tracing.consuming_batch(messages[:1], "orbilnot-billing") as [context]:
            current = trace.get_current_span()  # a batch of one: its span is current
            assert current.parent.span_id == publishes[0].span_id
            assert context["traceparent"].split("-")[2] == f"{current.get_span_context().span_id:016x}"
        print("ok")
        """,
        OTEL_TRACES_EXPORTER="none",
    )


def test_off_a_batch_yields_no_contexts() -> None:
    from aiokafka.structs import ConsumerRecord

    from orbilnot.shared import tracing

    message = ConsumerRecord("order.event", 0, 1, 0, 0, b"k", b"{}", None, 1, 2, [])
    with tracing.consuming_batch([message, message], "orbilnot-billing") as contexts:
        assert contexts == [None, None]


def test_on_a_header_without_a_value_starts_a_new_trace_and_fails_nothing() -> None:
    # Kafka allows a header with a null value; another producer's message may carry one.
    _run(
        """
        from aiokafka.structs import ConsumerRecord
        from orbilnot.shared import tracing

        assert tracing.setup("billing") is True
        message = ConsumerRecord("order.event", 0, 1, 0, 0, b"k", b"{}", None, 1, 2, [("traceparent", None)])
        with tracing.consuming_batch([message], "orbilnot-billing") as [context]:
            assert context["traceparent"]
        print("ok")
        """,
        OTEL_TRACES_EXPORTER="none",
    )


CLIENT_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_on_a_client_traceparent_is_only_a_link_of_the_gateway_s_new_root_span() -> None:
    """Anyone can send `traceparent`: it must not pick the trace id or force sampling, nor reach
    an upstream. The gateway's span is a root of its own trace, linked to the client's span."""
    _run(
        f"""
        import asyncio
        from opentelemetry import trace
        from orbilnot.shared import tracing

        assert tracing.setup("gateway") is True
        seen = {{}}

        async def app(scope, receive, send):
            seen["span"] = trace.get_current_span()
            seen["headers"] = dict(scope["headers"])
            await send({{"type": "http.response.start", "status": 200, "headers": []}})
            await send({{"type": "http.response.body", "body": b""}})

        async def receive():
            return {{"type": "http.request", "body": b"", "more_body": False}}

        async def send(message):
            pass

        headers = [(b"host", b"gw"), (b"traceparent", b"{CLIENT_TRACEPARENT}"), (b"tracestate", b"k=v")]
        scope = {{"type": "http", "method": "GET", "path": "/orders/a", "raw_path": b"/orders/a",
                  "query_string": b"", "headers": headers, "scheme": "http", "http_version": "1.1",
                  "server": ("gw", 80), "client": ("1.2.3.4", 5)}}
        asyncio.run(tracing.instrument_gateway_app(app)(scope, receive, send))
        span = seen["span"]
        ids = span.get_span_context()
        assert ids.is_valid and span.parent is None, span.parent
        assert ids.trace_id != 0x0af7651916cd43dd8448eb211c80319c
        [link] = span.links
        assert link.context.trace_id == 0x0af7651916cd43dd8448eb211c80319c
        assert link.context.span_id == 0xb7ad6b7169203331
        assert b"traceparent" not in seen["headers"] and b"tracestate" not in seen["headers"]
        print("ok")
        """,
        OTEL_TRACES_EXPORTER="none",
    )


def test_off_a_client_traceparent_does_not_reach_an_upstream() -> None:
    _run(f"""
        import asyncio
        from orbilnot.shared import tracing

        seen = {{}}

        async def app(scope, receive, send):
            seen["headers"] = dict(scope["headers"])

        scope = {{"type": "http", "headers": [(b"host", b"gw"), (b"traceparent", b"{CLIENT_TRACEPARENT}")]}}
        asyncio.run(tracing.instrument_gateway_app(app)(scope, None, None))
        assert seen["headers"] == {{b"host": b"gw"}}
        print("ok")
    """)
