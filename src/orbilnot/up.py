"""`orbilnot up`: the whole system on one machine (SPEC §7).

Starts the local PostgreSQL and Kafka unless they already run, migrates, runs billing, order,
notification and the gateway as `orbilnot serve` processes, and prints the URLs. Ctrl-C,
SIGTERM or SIGHUP (its terminal closed) stops the processes it started — services first, then
the infrastructure it started itself — and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

import httpx

from orbilnot.cli import DEFAULT_PORTS
from orbilnot.infra.local import LocalInfra, print_demo_users
from orbilnot.migrations.runner import migrate

SERVICES = ("billing", "order", "notification")
STOP_TIMEOUT_S = 10.0


def _port(service: str) -> int:
    return int(os.environ.get(f"ORBILNOT_{service.upper()}_PORT") or DEFAULT_PORTS[service])


def spawn(service: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """One `orbilnot serve` process."""
    command = [sys.executable, "-m", "orbilnot.cli", "serve", service, "--port", str(port)]
    # A process group of its own: Ctrl-C in a terminal signals the whole foreground group, and a
    # service that got that SIGINT and then up's SIGTERM took the second signal as "force quit"
    # (a traceback, and in-hand work cut short). Only `up` decides when and how its processes stop.
    return subprocess.Popen(command, env=env, process_group=0)


def local_gateway_env(env: dict[str, str], urls: dict[str, str]) -> dict[str, str]:
    """The gateway as `up` runs it: on one machine, for one person, who pressed Ctrl-C to stop.

    The gateway's shutdown drain (3 s for an idle keep-alive connection, serve.py) is for a load
    balancer's rolling update, where another replica takes the next request; here there is none,
    and the browser's or curl's idle connection would hold the whole stop for those 3 s (and the
    services behind it, whose idle connections the gateway holds until it exits)."""
    return {"HTTP_SHUTDOWN_DRAIN_S": "0.2", **gateway_env(env, urls)}


def gateway_env(env: dict[str, str], urls: dict[str, str]) -> dict[str, str]:
    return {**env, "BILLING_URL": urls["billing"], "ORDER_URL": urls["order"], "NOTIFICATION_URL": urls["notification"]}


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health/ready", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


# SIGHUP: the terminal `up` runs in was closed. The services are in process groups of their own
# (spawn), so it reaches only `up`, whose default action would end it without its `finally`,
# leaving every service and the infrastructure running.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def up(*, auth: bool = False) -> int:
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _raise_stop)
    infra = LocalInfra()
    processes: list[subprocess.Popen[bytes]] = []
    started: list[str] = []
    try:
        print("starting PostgreSQL, Kafka and Keycloak …" if auth else "starting PostgreSQL and Kafka …", flush=True)
        started = infra.up(auth=auth)
        env = {**os.environ, **infra.env(), "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text")}
        if auth:
            env |= infra.auth_env()
        else:
            # A Keycloak left running by `infra up --auth` does not switch `up` without --auth to
            # oidc; the caller's own AUTH_MODE/OIDC_* (another provider) still count.
            for name in infra.auth_env():
                if name in os.environ:
                    env[name] = os.environ[name]
                else:
                    env.pop(name, None)
        # As the owner; this also sets up the services' roles, which the services then connect as
        # (each reads its own <SERVICE>_DATABASE_URL from infra.env()).
        asyncio.run(migrate(env["DATABASE_URL"], infra.postgres.service_passwords))
        urls = {service: f"http://127.0.0.1:{_port(service)}" for service in (*SERVICES, "gateway")}
        for service in SERVICES:
            processes.append(spawn(service, _port(service), env))
        # The gateway once the services are ready: they create the topics, which the console's
        # feed in the gateway reads (started before, it logged "topic not found" at ERROR).
        for service, process in zip(SERVICES, processes, strict=True):
            if not wait_ready(urls[service], process):
                print(f"{service} did not become ready; stopping", file=sys.stderr)
                return 1
        processes.append(spawn("gateway", _port("gateway"), local_gateway_env(env, urls)))
        if not wait_ready(urls["gateway"], processes[-1]):
            print("gateway did not become ready; stopping", file=sys.stderr)
            return 1
        print("\norbilnot is up:")
        for service, url in urls.items():
            print(f"  {service:<13} {url}")
        print(f"  {'postgres':<13} {infra.postgres.display_url}\n  {'kafka':<13} {infra.kafka.bootstrap_servers}")
        if auth:
            print(f"  {'keycloak':<13} {infra.keycloak.issuer_url}")
            print_demo_users(infra)
        demo = f"orbilnot demo{' --auth' if auth else ''} --gateway {urls['gateway']}"
        print(f"\nopen {urls['gateway']}/console/ in a browser, or try: {demo}   (Ctrl-C stops everything)", flush=True)
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        print("a service exited unexpectedly; stopping", file=sys.stderr)
        return 1
    except _Stop as stop:
        with contextlib.suppress(OSError):  # after a SIGHUP the terminal may be gone
            print(f"\n{stop}: stopping …", flush=True)
        return 0
    finally:
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, signal.SIG_IGN)
        stop_processes(processes)
        # Side by side: each takes a second or two to stop cleanly, and nothing is left to need
        # one while another stops.
        stops: dict[str, Callable[[], None]] = {
            "postgres": infra.postgres.stop,
            "kafka": infra.kafka.stop,
            "keycloak": infra.keycloak.stop,
        }
        threads = [threading.Thread(target=stops[name], name=f"stop {name}") for name in started if name in stops]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
