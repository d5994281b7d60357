"""Billing's HTTP edge (SPEC §3 `/account`): parse, call a handler in one transaction, answer."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from fastapi import APIRouter

from orbilnot.billing import handlers
from orbilnot.billing.domain import AccountAction
from orbilnot.shared.auth import CallerDep
from orbilnot.shared.money import NonNegativeMoney, PositiveMoney, StoredMoney
from orbilnot.shared.pagination import PAGED_RESPONSES, PageQuery
from orbilnot.shared.schemas import ApiModel
from orbilnot.shared.service import KernelDep

router = APIRouter(tags=["accounts"])


class CreateAccountRequest(ApiModel):
    action_type: Literal[AccountAction.CREATE_NEW]
    amount: NonNegativeMoney = Decimal(0)


class ChangeBalanceRequest(ApiModel):
    account_id: UUID
    amount: PositiveMoney
    action_type: Literal[AccountAction.DEPOSIT_MONEY, AccountAction.WITHDRAW_MONEY]


class AccountResponse(ApiModel):
    id: UUID
    balance: StoredMoney


class LedgerEntryResponse(ApiModel):
    kind: str
    amount: StoredMoney
    balance_after: StoredMoney
    order_number: str | None
    created_at: datetime


@router.post("", summary="Open an account; answers its id")
async def create_account(body: CreateAccountRequest, kernel: KernelDep, caller: CallerDep) -> UUID:
    async with kernel.engine.begin() as conn:
        return await handlers.open_account(conn, body.amount, caller)


@router.put(
    "",
    summary="Deposit or withdraw money",
    responses={404: {"description": "No such account"}, 409: {"description": "Not enough money"}},
)
async def change_balance(body: ChangeBalanceRequest, kernel: KernelDep, caller: CallerDep) -> AccountResponse:
    async with kernel.engine.begin() as conn:
        account = await handlers.change_balance(conn, body.account_id, body.action_type, body.amount, caller)
    return AccountResponse.model_validate(account)


@router.get("/{account_id}", summary="An account and its balance", responses={404: {}})
async def get_account(account_id: UUID, kernel: KernelDep, caller: CallerDep) -> AccountResponse:
    async with kernel.engine.connect() as conn:
        account = await handlers.get_account(conn, account_id, caller)
    return AccountResponse.model_validate(account)


@router.get(
    "/{account_id}/transactions",
    summary="The account's ledger, oldest first, a page at a time; the balance is the sum of the amounts",
    responses={404: {}, **PAGED_RESPONSES},
)
async def list_transactions(
    account_id: UUID, kernel: KernelDep, page: PageQuery, caller: CallerDep
) -> list[LedgerEntryResponse]:
    async with kernel.engine.connect() as conn:
        entries = await handlers.list_ledger(conn, account_id, caller, limit=page.limit, after=page.after)
    return [LedgerEntryResponse.model_validate(e) for e in page.answer(entries)]
