"""The live console (issue 11) in a real browser: Debian's chromium, driven by Playwright for
Python through `executable_path` (no browser download). The acceptance scenario of SPEC §1 done
by clicking, with CONFIRMED and the denial appearing without a reload: the page re-reads an
account only when the gateway's event stream says something happened to it.

Screenshots of each step are kept in test-results/console/ (the path is printed); with
CONSOLE_SCREENSHOT_DOCS=1 the last one also replaces docs/console.png, the README's picture.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orbilnot.infra import free_ports
from orbilnot.infra.keycloak import LocalKeycloak
from orbilnot.up import gateway_env
from support import Stack, eventually_sync

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-results" / "console"
TIMEOUT_MS = 30_000  # a busy machine: every wait is for an element, with this deadline


def ensure_chromium() -> str:
    """Debian's chromium, installed with apt when missing (as `make image-test` installs Docker)."""
    found = shutil.which("chromium")
    if found:
        return found
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*apt, "install", "-y", "-qq", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run([*apt, "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)
    found = shutil.which("chromium")
    assert found, "apt installed chromium, but it is not on PATH"
    return found


@pytest.fixture
def browser() -> Iterator[object]:
    """One per test, started after the test's other fixtures: while Playwright's sync API runs, the
    thread counts as running an event loop, and the stacks' fixtures use asyncio.run."""
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root, where chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator[object]:  # type: ignore[no-untyped-def]
    context = browser.new_context(locale="en-US", viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors in the console: {errors}"


def shoot(page, name: str) -> Path:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_root_redirects_to_the_console_and_its_assets_are_served(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway, timeout=10) as http:
        root = http.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/console/"
        for path in ("/console", "/console/"):
            page = http.get(path)
            assert page.status_code == 200 and "orbilnot console" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert http.get("/console/assets/console.js").headers["content-type"].startswith("text/javascript")
        assert http.get("/console/assets/nothing.js").status_code == 404
        config = http.get("/console/config.json").json()
        assert config["authMode"] == "off" and config["live"] is True
        # Readiness for anyone; the services' own check details (hosts, errors) for admins only.
        instances = [i for service in http.get("/console/api/health").json()["services"].values() for i in service]
        assert instances and all(i["ready"] and "checks" not in i for i in instances)


def test_a_payment_heard_before_the_page_read_its_order_back_is_not_lost(stack: Stack, page) -> None:  # type: ignore[no-untyped-def]
    """After placing an order the page reads the account's orders back; billing may decide the
    order before that read is answered, with the order still SENT in it. The read here is held
    until the page has heard the payment event, then answered with what it said when it was made:
    the order must still show the payment's outcome, not the older status."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    page.goto(stack.gateway + "/console/")
    expect(page.get_by_test_id("live")).to_have_text("live")
    page.locator("#open-account button").click()
    card = page.locator("article.account")
    expect(card).to_have_count(1)
    account = card.get_by_test_id("account-id").inner_text()
    # The order service lagging behind billing: the account's orders are read back with the new
    # order still SENT, and a read made before the page heard the payment is answered after it.
    held: list[object] = []
    heard = False

    def lagging(route) -> None:  # type: ignore[no-untyped-def]
        answer = route.fetch()
        body = answer.text().replace('"status":"CANCELLED"', '"status":"SENT"')
        route.fulfill(response=answer, body=body)

    def lagging_order_service(route, request) -> None:  # type: ignore[no-untyped-def]
        if request.method != "GET":
            route.continue_()
        elif heard:
            lagging(route)
        else:
            held.append(route)

    page.route(re.compile(rf".*/orders/{account}([?].*)?$"), lagging_order_service)
    page.locator("#place-order input[name=amount]").fill("100")  # on an empty account: denied
    page.locator("#place-order button").click()
    expect(page.locator("#events li.payment").filter(has_text="PAYMENT_DENIED")).to_have_count(1)
    heard = True
    assert held, "the page read its orders back only after it heard the payment: nothing to hold"
    for route in held:
        lagging(route)
    order = card.locator("[data-testid=orders] tr").filter(has_text="100.00")
    expect(order.get_by_test_id("status")).to_have_text("CANCELLED")


def test_the_acceptance_scenario_by_clicking(stack: Stack, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    page.goto(stack.gateway + "/")
    assert page.url == stack.gateway + "/console/"
    expect(page.get_by_test_id("live")).to_have_text("live")
    for service in ("billing", "order", "notification"):
        expect(page.locator(f"#health li[data-service={service}]")).to_have_class(re.compile(r"\bup\b"))

    # 1. Create a user.
    page.locator("#open-account button").click()
    card = page.locator("article.account")
    expect(card).to_have_count(1)
    account = card.get_by_test_id("account-id").inner_text()
    expect(card.get_by_test_id("balance")).to_have_text("0.00")

    # 2. Deposit money.
    page.locator("#money input[name=amount]").fill("1000")
    page.get_by_test_id("deposit").click()
    expect(card.get_by_test_id("balance")).to_have_text("1,000.00")
    shoot(page, "1-deposited")

    # 3 to 5. An order the account can pay for: CONFIRMED, the balance reduced, a notification.
    page.locator("#place-order input[name=amount]").fill("500")
    page.locator("#place-order button").click()
    paid = card.locator("[data-testid=orders] tr").filter(has_text="500.00")
    expect(paid.get_by_test_id("status")).to_have_text("CONFIRMED")
    expect(card.get_by_test_id("balance")).to_have_text("500.00")
    expect(card.get_by_test_id("notifications")).to_contain_text(f"Order {account}:")
    expect(card.get_by_test_id("notifications").locator("li.PAYMENT_CONFIRMED")).to_have_count(1)
    # The step timings come from the event stream alone: sent, decided and notified are known.
    for column in (4, 5, 6):
        expect(paid.locator(f"td:nth-child({column})")).to_have_text(re.compile(r"^\+\d"))
    shoot(page, "2-confirmed")

    # 6 to 8. An order it cannot pay for: CANCELLED, the balance unchanged, the denial notified.
    page.locator("#place-order input[name=amount]").fill("900")
    page.locator("#place-order button").click()
    denied = card.locator("[data-testid=orders] tr").filter(has_text="900.00")
    expect(denied.get_by_test_id("status")).to_have_text("CANCELLED")
    denial = card.get_by_test_id("notifications").locator("li.PAYMENT_DENIED")
    expect(denial).to_have_count(1)
    expect(denial).to_contain_text("Not enough balance for commiting payment for order")
    expect(card.get_by_test_id("balance")).to_have_text("500.00")
    expect(page.get_by_test_id("events")).to_contain_text("payment.event PAYMENT_DENIED")

    # Withdrawing the paid order refunds it, live too.
    paid.get_by_test_id("withdraw-order").click()
    expect(paid.get_by_test_id("status")).to_have_text("REFUNDED")
    expect(card.get_by_test_id("balance")).to_have_text("1,000.00")
    last = shoot(page, "3-denied-and-refunded")
    if os.environ.get("CONSOLE_SCREENSHOT_DOCS") == "1":
        shutil.copyfile(last, ROOT / "docs" / "console.png")


def test_streams_are_bounded_per_client_and_let_go_on_disconnect(stack: Stack) -> None:
    url = f"{stack.gateway}/console/api/events"
    with httpx.Client(timeout=10) as http:
        assert http.get(url, params={"account": "not-an-id"}).status_code == 422
        too_many = [f"00000000-0000-4000-8000-{n:012d}" for n in range(21)]  # CONSOLE_MAX_ACCOUNTS is 20
        assert http.get(url, params={"account": too_many}).status_code == 422

        # Each open stream with its line iterator: dropping the iterator would close the stream.
        streams: list[tuple[httpx.Response, Iterator[str]]] = []

        def open_stream() -> int:
            response = http.send(http.build_request("GET", url), stream=True)
            if response.status_code != 200:
                response.close()
                return response.status_code
            lines = response.iter_lines()
            assert next(lines) == "event: hello"
            streams.append((response, lines))
            return 200

        assert [open_stream() for _ in range(4)] == [200] * 4  # CONSOLE_MAX_STREAMS_PER_CLIENT's default
        assert open_stream() == 429
        response, _ = streams.pop()
        response.close()
        # The gateway notices the disconnect and frees the slot.
        eventually_sync(open_stream, lambda status: status == 200, timeout_s=15, what="a freed stream slot")
        for response, _ in streams:
            response.close()


def test_with_oidc_the_console_signs_in_through_keycloak_and_streams_only_with_a_token(
    auth_stack: Stack,
    keycloak: LocalKeycloak,
    page,  # type: ignore[no-untyped-def]
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    events = f"{auth_stack.gateway}/console/api/events"
    assert httpx.get(events, timeout=10).status_code == 401
    assert httpx.get(f"{auth_stack.gateway}/console/api/dead-letters", timeout=10).status_code == 401
    assert httpx.get(f"{auth_stack.gateway}/console/api/health", timeout=10).status_code == 401

    page.goto(auth_stack.gateway + "/console/")
    expect(page.get_by_test_id("who")).to_have_text("not signed in")
    page.get_by_test_id("sign-in").click()
    # Keycloak's own login page: authorization code + PKCE, the password typed into the provider.
    page.locator("#username").fill("alice")
    page.locator("#password").fill(keycloak.passwords()["alice"])
    page.locator("#kc-login").click()
    page.wait_for_url(auth_stack.gateway + "/console/")
    expect(page.get_by_test_id("who")).to_have_text("alice")
    expect(page.get_by_test_id("live")).to_have_text("live")
    expect(page.locator("#health li[data-service=billing]")).to_have_class(re.compile(r"\bup\b"))

    page.locator("#open-account input[name=amount]").fill("300")
    page.locator("#open-account button").click()
    card = page.locator("article.account")
    expect(card.get_by_test_id("balance")).to_have_text("300.00")
    page.locator("#place-order input[name=amount]").fill("200")
    page.locator("#place-order button").click()
    expect(card.locator("[data-testid=orders] tr").get_by_test_id("status")).to_have_text("CONFIRMED")
    expect(card.get_by_test_id("balance")).to_have_text("100.00")
    # Dead letters are for admins; alice is told so rather than shown anyone's.
    expect(page.locator("#dead-letters-note")).to_have_text("Shown to admins only.")
    shoot(page, "4-signed-in-as-alice")


def test_a_gateway_shutting_down_ends_its_streams_at_once(stack: Stack) -> None:
    """An open console must not hold a gateway's graceful shutdown (7 s) for its whole length."""
    port = free_ports(1)[0]
    stack.start("gateway-to-stop", "gateway", port, gateway_env({}, stack.urls))
    process = stack.processes["gateway-to-stop"]
    with httpx.Client(timeout=10) as http, http.stream("GET", f"http://127.0.0.1:{port}/console/api/events") as events:
        lines = events.iter_lines()
        assert next(lines) == "event: hello"
        started = time.monotonic()
        process.terminate()
        rest = list(lines)  # ends when the gateway ends the stream
        assert "event: bye" in rest and any("shutting down" in line for line in rest)
    process.wait(10)
    took_s = time.monotonic() - started
    assert process.returncode == 0 and took_s < 3.0, f"the gateway took {took_s:.1f} s to stop"


def test_dead_letters_are_shown_from_the_dead_letter_topics(stack: Stack) -> None:
    from aiokafka import AIOKafkaProducer

    topic = stack.env["ORDER_EVENT_TOPIC"]
    marker = f"not an order event {time.monotonic_ns()}"

    async def send_garbage() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.env["KAFKA_BOOTSTRAP_SERVERS"])
        await producer.start()
        try:
            await producer.send_and_wait(topic, marker.encode(), key=b"x")
        finally:
            await producer.stop()

    with httpx.Client(base_url=stack.gateway, timeout=10) as http:
        with http.stream("GET", "/console/api/events") as events:
            lines = events.iter_lines()
            assert next(lines) == "event: hello"
            asyncio.run(send_garbage())  # billing dead-letters it to <topic>.dlt, the console reads that
            # Paced by the stream's own lines (events, and a heartbeat every 15 s), with a deadline;
            # a silent stream fails on the client's 10 s read timeout.
            deadline = time.monotonic() + 60
            for line in lines:
                if line.startswith("data:") and marker in line:
                    entry = json.loads(line[5:])
                    break
                assert time.monotonic() < deadline, "no dead letter on the stream"
        assert entry["topic"] == f"{topic}.dlt" and entry["error"] and entry["consumerGroup"]
        listed = http.get("/console/api/dead-letters").json()["entries"]
        assert any(marker in e["value"] for e in listed)
