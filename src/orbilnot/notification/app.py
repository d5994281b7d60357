"""Notification's composition root."""

from __future__ import annotations

from fastapi import FastAPI

from orbilnot.model import PaymentEvent
from orbilnot.notification import handlers
from orbilnot.notification.api import router
from orbilnot.shared.config import ServiceSettings
from orbilnot.shared.service import ServiceKernel, create_service_app


def build_kernel(settings: ServiceSettings) -> ServiceKernel:
    kernel = ServiceKernel(settings, service="notification")
    kernel.consumer(
        settings.payment_event_topic, PaymentEvent, handlers.store_notifications, park=handlers.park_notification
    )
    return kernel


def create_app(settings: ServiceSettings) -> FastAPI:
    return create_service_app(
        title="orbilnot notification",
        prefix="/notifications",
        routers=[router],
        build_kernel=lambda: build_kernel(settings),
    )
