"""Errors a handler raises for the edge to map: 404 and 409 (422 comes from validation)."""


class NotFound(Exception):
    """The entity asked for does not exist (HTTP 404)."""


class Conflict(Exception):
    """The request does not fit the entity's current state (HTTP 409)."""
