"""The services' own edge limits (compose and Kubernetes can expose them without the gateway), and
a request at the gateway's limits still reaching a service through it."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest

from support import Stack

ACCOUNT = str(uuid.UUID(int=7))


@pytest.mark.parametrize("service", ["billing", "order", "notification"])
def test_a_service_refuses_too_many_headers_with_431(stack: Stack, service: str) -> None:
    headers = {f"x-h{i}": "v" for i in range(200)}
    response = httpx.get(f"{stack.urls[service]}/health/live", headers=headers, timeout=10)
    assert response.status_code == 431
    assert "detail" in response.json()


def test_a_service_closes_a_silent_connection_with_408(stack: Stack) -> None:
    host, port = stack.urls["order"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        answer = b""
        while chunk := sock.recv(4096):  # we send nothing; the service answers, then closes
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_request_with_as_many_headers_as_the_gateway_takes_reaches_the_service(http: httpx.Client) -> None:
    headers = {f"x-h{i}": "v" for i in range(95)}  # with httpx's own five, the gateway's 100
    response = http.get(f"/orders/{ACCOUNT}", headers=headers)
    assert response.status_code == 200, response.text
