"""Billing's composition root: what runs in a billing process, wired in one place."""

from __future__ import annotations

import functools

from fastapi import FastAPI

from orbilnot.billing import handlers
from orbilnot.billing.api import router
from orbilnot.billing.tables import order_events, outbox
from orbilnot.model import OrderEvent
from orbilnot.shared.config import ServiceSettings
from orbilnot.shared.service import ServiceKernel, create_service_app


def build_kernel(settings: ServiceSettings) -> ServiceKernel:
    kernel = ServiceKernel(settings, service="billing")
    # seed: SendPaymentProcessingResultsScheduler — woken by the commits that decide orders.
    relay = kernel.relay("billing.outbox", outbox)

    async def process_step() -> bool:
        processed = await handlers.process_batch(
            kernel.engine, settings.relay_batch_size, topic=settings.payment_event_topic, tracker=processor.tracker
        )
        if processed:
            relay.wake()
        return processed == settings.relay_batch_size

    # seed: ReceivedOrderEventsProcessingScheduler — here only the safety net: the listener
    # decides what it consumes; this finds RECEIVED rows that an older version left behind.
    processor = kernel.worker("billing.processor", process_step)
    # seed: OrderEventsListener — decides each new order event and stores it in the inbox with
    # its result, in one transaction; the results go out through the relay, woken once that commits.
    kernel.consumer(
        settings.order_event_topic,
        OrderEvent,
        functools.partial(handlers.receive_and_decide_order_events, topic=settings.payment_event_topic),
        park=functools.partial(handlers.park_order_event, topic=settings.payment_event_topic),
        after_commit=relay.wake,
    )
    kernel.backlog("billing.inbox", order_events.c.received_at, order_events.c.status == "RECEIVED")
    return kernel


def create_app(settings: ServiceSettings) -> FastAPI:
    return create_service_app(
        title="orbilnot billing",
        prefix="/account",
        routers=[router],
        build_kernel=lambda: build_kernel(settings),
    )
