"""Which service serves a path, and which of its instances to try in what order.

Pure bookkeeping, no I/O: the proxy asks for candidates, tries them in order and reports the ones
that refused a connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Instance:
    """One base URL of a service, e.g. `http://10.0.0.5:8081`."""

    base_url: str
    # What the upstream expects in `Host`: the authority of its own URL, not the gateway's.
    host_header: bytes

    @classmethod
    def parse(cls, url: str) -> Instance:
        base_url = url.rstrip("/")
        authority = urlsplit(base_url).netloc
        if not authority:
            raise ValueError(f"upstream URL has no host: {url!r}")
        return cls(base_url, authority.encode("ascii"))


@dataclass(slots=True)
class Upstream:
    """A service behind the gateway: a name and one or more instances, balanced round-robin.

    An instance that refused a connection goes to the back of the queue for `cooldown_s` (a
    passive health check, like nginx's `max_fails`/`fail_timeout`): a dead replica then costs one
    failed connect per cooldown instead of one per request. It is still tried last, so a request
    fails only when every instance refuses.
    """

    name: str
    instances: tuple[Instance, ...]
    cooldown_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _turn: int = field(default=0, init=False, repr=False)
    _refused_until: dict[Instance, float] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_urls(cls, name: str, urls: Sequence[str], cooldown_s: float = 5.0) -> Upstream:
        if not urls:
            raise ValueError(f"upstream {name} has no URL")
        return cls(name, tuple(Instance.parse(url) for url in urls), cooldown_s)

    def candidates(self) -> Sequence[Instance]:
        """The instances in the order to try them for the next request."""
        ordered = self.instances
        if len(ordered) > 1:
            start = self._turn % len(ordered)
            self._turn = start + 1
            ordered = ordered[start:] + ordered[:start]
        if not self._refused_until:  # the common case: everyone is healthy
            return ordered
        now = self.clock()
        healthy = [i for i in ordered if self._refused_until.get(i, 0.0) <= now]
        return healthy + [i for i in ordered if i not in healthy]

    def mark_refused(self, instance: Instance) -> None:
        self._refused_until[instance] = self.clock() + self.cooldown_s

    def mark_answered(self, instance: Instance) -> None:
        if self._refused_until:
            self._refused_until.pop(instance, None)


@dataclass(frozen=True, slots=True)
class PrefixRule:
    """Paths equal to `prefix` or below it (whole segments only) go to `upstream`.

    `rewrite_to` replaces the prefix on the way out: the `/order` alias is served by `/orders`.
    """

    prefix: bytes
    upstream: Upstream
    rewrite_to: bytes | None = None

    def upstream_path(self, raw_path: bytes) -> bytes | None:
        """The path to request upstream, or None when this rule does not serve `raw_path`."""
        prefix = self.prefix
        if not raw_path.startswith(prefix):
            return None
        rest = raw_path[len(prefix) :]
        if rest and not rest.startswith(b"/"):  # `/orders` is not below `/order`
            return None
        if _has_dot_segment(rest):
            return None
        return (self.rewrite_to or prefix) + rest


def _has_dot_segment(path: bytes) -> bool:
    # The HTTP client normalises `/account/../metrics` to `/metrics`, which would let a request
    # escape its prefix upstream; such paths are not routed at all.
    if b"/." not in path:
        return False
    return any(segment in (b".", b"..") for segment in path.split(b"/"))
