"""The ceiling: a bare FastAPI endpoint shaped like `POST /orders` (the same body model work, no
database, no Kafka, no gateway hop), served by uvicorn as the services are. What the load
generator gets from it on this machine bounds what any one Python HTTP process could answer.

    python -m bench.ceiling PORT
"""

from __future__ import annotations

import sys
import uuid
from decimal import Decimal

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field


class PlaceOrder(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    account_id: uuid.UUID = Field(alias="accountId")
    amount: Decimal = Field(gt=0, max_digits=14, decimal_places=2)


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/orders")
    async def place_order(order: PlaceOrder) -> str:
        return str(uuid.uuid4())

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
