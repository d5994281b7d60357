"""Order's composition root: what runs in an order process, wired in one place."""

from __future__ import annotations

from fastapi import FastAPI

from orbilnot.model import PaymentEvent
from orbilnot.order import handlers
from orbilnot.order.api import router
from orbilnot.order.tables import outbox
from orbilnot.shared.config import ServiceSettings
from orbilnot.shared.service import ServiceKernel, create_service_app


def build_kernel(settings: ServiceSettings) -> ServiceKernel:
    kernel = ServiceKernel(settings, service="order")
    # seed: SendOrderEventMessagesToTopicScheduler — woken by each commit that creates work.
    kernel.relay("order.outbox", outbox, on_attempt=handlers.mark_attempted)
    # seed: PaymentEventListener.
    kernel.consumer(
        settings.payment_event_topic, PaymentEvent, handlers.apply_payment_results, park=handlers.park_payment_result
    )
    return kernel


def create_app(settings: ServiceSettings) -> FastAPI:
    return create_service_app(
        title="orbilnot order",
        prefix="/orders",
        routers=[router],
        build_kernel=lambda: build_kernel(settings),
    )
