"""Order's HTTP edge (SPEC §3 `/orders`): parse, call a handler in one transaction, answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field

from orbilnot.order import handlers
from orbilnot.order.domain import OrderStatus
from orbilnot.shared.auth import CallerDep, verified_caller
from orbilnot.shared.db import transaction
from orbilnot.shared.money import Money, PositiveMoney
from orbilnot.shared.pagination import PAGED_RESPONSES, PageQuery
from orbilnot.shared.schemas import ApiModel
from orbilnot.shared.service import KernelDep, kernel_of

router = APIRouter(tags=["orders"])


class PlaceOrderRequest(ApiModel):
    account_id: UUID
    amount: PositiveMoney


class AmendOrderRequest(ApiModel):
    account_id: UUID
    order_number: str = Field(max_length=100)
    amount: PositiveMoney


class WithdrawOrderRequest(ApiModel):
    account_id: UUID
    order_number: str = Field(max_length=100)


class OrderResponse(ApiModel):
    id: UUID
    order_number: str
    account_id: UUID
    amount: Money
    status: OrderStatus
    created_at: datetime
    updated_at: datetime


IDEMPOTENCY_KEY_DOC = (
    "Makes a retry safe: 1-200 printable ASCII characters (0x20-0x7E), else 422. Scoped to the "
    "account: a repeat with the same account, key and body answers the first order's id and "
    "creates nothing; the same key with another body is a 409; another account's key never matches."
)


@router.post(
    "",
    summary="Place an order; answers its id",
    response_model=UUID,
    responses={409: {"description": "This account used the Idempotency-Key for another request"}},
)
async def place_order(
    request: Request,
    body: PlaceOrderRequest,
    # An empty key was stored like any other, and every later empty key got that order back.
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=200, pattern=r"^[\x20-\x7e]+$", description=IDEMPOTENCY_KEY_DOC)
    ] = None,
) -> JSONResponse:
    # The hottest route: its kernel and caller come from the request, not from dependencies that
    # FastAPI would solve on every request (`verified_caller`).
    kernel, caller = kernel_of(request), verified_caller(request)
    # One statement, atomic on its own, shared with the orders placed at the same moment
    # (handlers.place_order): no BEGIN/COMMIT round trips.
    order_id = await handlers.place_order(
        kernel.engine, body.account_id, body.amount, idempotency_key, caller, topic=kernel.settings.order_event_topic
    )
    kernel.wake_relays()
    # Answered as it is: FastAPI would validate and serialise the UUID through `response_model`
    # again (which still documents the answer).
    return JSONResponse(str(order_id))


@router.get("/{account_id}", summary="An account's orders, oldest first, a page at a time", responses=PAGED_RESPONSES)
async def list_orders(account_id: UUID, kernel: KernelDep, page: PageQuery, caller: CallerDep) -> list[OrderResponse]:
    async with kernel.engine.connect() as conn:
        found = await handlers.list_orders(conn, account_id, caller, limit=page.limit, after=page.after)
    return [OrderResponse.model_validate(order) for order in page.answer(found)]


@router.get("/{account_id}/{order_id}", summary="One order", responses={404: {}})
async def get_order(account_id: UUID, order_id: UUID, kernel: KernelDep, caller: CallerDep) -> OrderResponse:
    async with kernel.engine.connect() as conn:
        return OrderResponse.model_validate(await handlers.get_order(conn, account_id, order_id, caller))


@router.put(
    "",
    summary="Change the amount of a NEW order (its event never sent)",
    responses={404: {}, 409: {"description": "The order is no longer NEW: it may already be charged"}},
)
async def amend_order(body: AmendOrderRequest, kernel: KernelDep, caller: CallerDep) -> OrderResponse:
    async with kernel.engine.begin() as conn:
        order = await handlers.amend_order(
            conn, body.account_id, body.order_number, body.amount, caller, topic=kernel.settings.order_event_topic
        )
    kernel.wake_relays()  # the new amount's event
    return OrderResponse.model_validate(order)


@router.delete(
    "",
    summary="Withdraw an order: remove it if never charged (204), refund it if charged (200)",
    response_model=OrderResponse,
    responses={
        200: {"description": "Refund requested, or already under way or done: the order"},
        204: {"description": "The order was never charged and is gone"},
        404: {},
        409: {"description": "Its payment is in progress (SENT): withdraw it once it is decided"},
    },
)
async def withdraw_order(body: WithdrawOrderRequest, kernel: KernelDep, caller: CallerDep) -> OrderResponse | Response:
    async with transaction(kernel.engine) as conn:  # counts CONFIRMED → REFUND_PENDING once committed
        order = await handlers.withdraw_order(
            conn, body.account_id, body.order_number, caller, topic=kernel.settings.order_event_topic
        )
    if order is None:
        return Response(status_code=204)
    kernel.wake_relays()
    return OrderResponse.model_validate(order)
