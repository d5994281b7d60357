"""The `orbilnot` command (SPEC §7). Each sub-command imports what it needs only when it runs,
so `orbilnot --help` is instant and a service process loads only its own code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

SERVICES = ("billing", "order", "notification", "gateway")
DEFAULT_PORTS = {"gateway": 8080, "billing": 8081, "order": 8082, "notification": 8083}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orbilnot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run the whole system locally (PostgreSQL, Kafka, services, gateway)")
    up.add_argument("--auth", action="store_true", help="also a local Keycloak, and the API requires its tokens")

    infra = commands.add_parser("infra", help="only the local PostgreSQL and Kafka (and Keycloak with --auth)")
    infra.add_argument("action", choices=("up", "down", "status", "env"))
    infra.add_argument("--auth", action="store_true", help="up: also start the local Keycloak")

    token = commands.add_parser("token", help="print an access token of a demo user of the local Keycloak")
    token.add_argument("user", help="alice, bob or admin")

    migrate = commands.add_parser("migrate", help="bring the database to the latest revision")
    migrate.add_argument("--wait", action="store_true", help="only wait until the database is migrated")
    migrate.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)")
    migrate.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        help="seconds migrate retries its first connection to the database (default 60)",
    )

    serve = commands.add_parser("serve", help="run one service process")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: the service's port in SPEC §2")

    demo = commands.add_parser("demo", help="run the acceptance scenario against a running gateway")
    demo.add_argument("--gateway", default="http://127.0.0.1:8080")
    demo.add_argument("--auth", action="store_true", help="as alice (local Keycloak), then show bob cannot see it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from orbilnot.serve import serve

        return serve(args.service, args.host, args.port or DEFAULT_PORTS[args.service])
    if args.command == "migrate":
        from orbilnot.migrations.runner import migrate_command

        return migrate_command(wait=args.wait, timeout_s=args.timeout, connect_timeout_s=args.connect_timeout)
    if args.command == "infra":
        from orbilnot.infra.local import infra_command

        return infra_command(args.action, auth=args.auth)
    if args.command == "up":
        from orbilnot.up import up

        return up(auth=args.auth)
    if args.command == "token":
        from orbilnot.infra.local import token_command

        return token_command(args.user)
    if args.command == "demo":
        from orbilnot.demo import run_demo

        return run_demo(args.gateway, auth=args.auth)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
