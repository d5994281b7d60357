"""Paginated lists through the gateway (SPEC §3, issue 8): `limit` and an opaque `cursor`, oldest
first, the next page named in a `Link` header, the body still a plain JSON list."""

from __future__ import annotations

import re
import threading
import uuid

import httpx
import pytest

from support import eventually_sync

NEXT_LINK = re.compile(r'^<([^>]+)>; rel="next"$')


def funded_account(http: httpx.Client, amount: int = 1_000_000) -> str:
    return str(http.post("/account", json={"actionType": "CREATE_NEW", "amount": amount}).json())


def next_page(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = NEXT_LINK.match(link)
    assert match, link
    return match.group(1)


def walk(http: httpx.Client, first: str) -> tuple[list[dict[str, object]], int]:
    """Every item of a list, following `Link: rel="next"` from `first`; and how many pages."""
    items: list[dict[str, object]] = []
    url: str | None = first
    pages = 0
    while url is not None:
        response = http.get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        assert isinstance(page, list)
        items.extend(page)
        pages += 1
        url = next_page(response)
    return items, pages


def test_orders_notifications_and_ledger_page_by_link(http: httpx.Client) -> None:
    account = funded_account(http)
    placed = [http.post("/orders", json={"accountId": account, "amount": 1}).json() for _ in range(5)]
    eventually_sync(lambda: len(http.get(f"/notifications/{account}").json()), lambda n: n == 5, what="notified")

    orders, pages = walk(http, f"/orders/{account}?limit=2")
    assert [o["id"] for o in orders] == placed and pages == 3
    assert orders == http.get(f"/orders/{account}").json()

    notices, pages = walk(http, f"/notifications/{account}?limit=2")
    assert notices == http.get(f"/notifications/{account}").json() and len(notices) == 5 and pages == 3

    ledger, pages = walk(http, f"/account/{account}/transactions?limit=3")
    assert ledger == http.get(f"/account/{account}/transactions").json() and len(ledger) == 6 and pages == 2

    # Through the gateway's /order alias too; a full last page names no next one.
    exact, pages = walk(http, f"/order/{account}?limit=5")
    assert [o["id"] for o in exact] == placed and pages == 1


def test_the_default_page_is_100_and_the_largest_1000(http: httpx.Client) -> None:
    account = funded_account(http)
    for _ in range(101):
        http.post("/orders", json={"accountId": account, "amount": 1}).raise_for_status()
    first = http.get(f"/orders/{account}")
    assert len(first.json()) == 100 and next_page(first) is not None
    assert len(http.get(f"/orders/{account}", params={"limit": 1000}).json()) == 101


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "ten", ""])
@pytest.mark.parametrize("path", ["/orders/{a}", "/notifications/{a}", "/account/{a}/transactions"])
def test_a_limit_out_of_range_is_422(http: httpx.Client, path: str, limit: str) -> None:
    account = funded_account(http)
    response = http.get(path.format(a=account), params={"limit": limit})
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


@pytest.mark.parametrize("path", ["/orders/{a}", "/notifications/{a}", "/account/{a}/transactions"])
def test_a_tampered_or_foreign_cursor_is_422(http: httpx.Client, path: str) -> None:
    account, other = funded_account(http), funded_account(http)
    for who in (account, other):
        for _ in range(2):
            http.post("/orders", json={"accountId": who, "amount": 1}).raise_for_status()
    eventually_sync(lambda: len(http.get(f"/notifications/{other}").json()), lambda n: n == 2, what="notified")
    link = next_page(http.get(path.format(a=other), params={"limit": 1}))
    assert link is not None
    cursor = httpx.URL(link).params["cursor"]
    tampered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    for bad in (tampered, "", "x", "not base64!", "A" * 500, "%00", cursor + "=", uuid.uuid4().hex):
        response = http.get(path.format(a=other), params={"cursor": bad})
        assert response.status_code == 422, (bad, response.text)
    # A cursor of another account's list is not a position in this one.
    response = http.get(path.format(a=account), params={"cursor": cursor})
    assert response.status_code == 422, response.text


def test_pages_read_while_orders_are_placed_skip_and_repeat_nothing(http: httpx.Client, stack) -> None:  # type: ignore[no-untyped-def]
    """Keyset pages stay consistent while four clients place orders on the same account."""
    account = funded_account(http)
    placed: list[str] = []
    stop = threading.Event()

    def place() -> None:
        with httpx.Client(base_url=stack.gateway, timeout=10) as client:
            while not stop.is_set():
                response = client.post("/orders", json={"accountId": account, "amount": 1})
                assert response.status_code == 200, response.text
                placed.append(response.json())

    writers = [threading.Thread(target=place) for _ in range(4)]
    for writer in writers:
        writer.start()
    try:
        eventually_sync(lambda: len(placed), lambda n: n >= 10, what="first orders")
        seen: list[dict[str, object]] = []
        url: str | None = f"/orders/{account}?limit=3"
        while url is not None and len(seen) < 150:
            response = http.get(url)
            assert response.status_code == 200, response.text
            seen.extend(response.json())
            url = next_page(response)
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    everything = [o["id"] for o in walk(http, f"/orders/{account}?limit=1000")[0]]
    assert sorted(everything) == sorted(placed)
    ids = [o["id"] for o in seen]
    assert len(ids) == len(set(ids)), "an order was repeated"
    assert ids == everything[: len(ids)], "an order was skipped"
