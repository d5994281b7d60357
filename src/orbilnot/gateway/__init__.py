"""The API gateway: routes by path prefix to billing, order and notification (SPEC §2)."""

from orbilnot.gateway.app import create_app

__all__ = ["create_app"]
