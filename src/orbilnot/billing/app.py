"""Billing's composition root: what runs in a billing process, wired in one place."""

from __future__ import annotations

from fastapi import FastAPI

from orbilnot.billing import handlers
from orbilnot.billing.api import router
from orbilnot.model import OrderEvent
from orbilnot.shared.config import ServiceSettings
from orbilnot.shared.service import ServiceKernel, create_service_app


def build_kernel(settings: ServiceSettings) -> ServiceKernel:
    kernel = ServiceKernel(settings, service="billing")
    relay = kernel.relay(handlers.PaymentResultsSource(settings.payment_event_topic))

    async def process_step() -> bool:
        async with kernel.engine.begin() as conn:
            processed = await handlers.process_received_events(conn, settings.relay_batch_size)
        if processed:
            relay.wake()
        return processed == settings.relay_batch_size

    # seed: ReceivedOrderEventsProcessingScheduler — here woken by the listener's commit.
    processor = kernel.worker("billing.processor", process_step)
    # seed: OrderEventsListener — stores into the inbox, then wakes the processor.
    kernel.consumer(
        settings.order_event_topic,
        OrderEvent,
        handlers.receive_order_event,
        after_commit=processor.wake,
    )
    return kernel


def create_app(settings: ServiceSettings) -> FastAPI:
    return create_service_app(
        title="orbilnot billing",
        prefix="/account",
        routers=[router],
        build_kernel=lambda: build_kernel(settings),
    )
