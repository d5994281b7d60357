"""Notification's HTTP edge (SPEC §3 `/notifications`)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from fastapi import APIRouter

from orbilnot.notification import handlers
from orbilnot.shared.auth import CallerDep
from orbilnot.shared.pagination import PAGED_RESPONSES, PageQuery
from orbilnot.shared.schemas import ApiModel
from orbilnot.shared.service import KernelDep

router = APIRouter(tags=["notifications"])


class NotificationResponse(ApiModel):
    id: UUID
    account_id: UUID
    order_number: str
    notification_type: str
    title: str
    body: str
    created_at: datetime


@router.get(
    "/{account_id}", summary="An account's notifications, oldest first, a page at a time", responses=PAGED_RESPONSES
)
async def list_notifications(
    account_id: UUID, kernel: KernelDep, page: PageQuery, caller: CallerDep
) -> list[NotificationResponse]:
    async with kernel.engine.connect() as conn:
        found = await handlers.list_notifications(conn, account_id, caller, limit=page.limit, after=page.after)
    return [NotificationResponse.model_validate(n) for n in page.answer(found)]
