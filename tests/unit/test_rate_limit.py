"""The gateway's token buckets, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from orbilnot.gateway.rate_limit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_next_request_waits_for_a_token() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token takes 1/rate to come back
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)


def test_each_client_has_its_own_bucket() -> None:
    buckets = TokenBuckets(rate_per_s=1.0, burst=1, clock=Clock())
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0.0
    assert buckets.take("b") == 0.0


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=10.0, burst=2, clock=clock)
    buckets.take("a")
    clock.now += 3600
    assert [buckets.take("a") for _ in range(3)][-1] > 0.0


def test_buckets_full_again_are_forgotten() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=1.0, burst=2, clock=clock)
    for n in range(1000):
        buckets.take(f"client-{n}")
    assert len(buckets) == 1000
    clock.now += 2.0  # the refill period: every bucket is full again
    buckets.take("another")
    assert len(buckets) == 1
    assert buckets.take("another") == 0.0  # its bucket is empty now
    clock.now += 1.5  # not yet full again: it is not forgotten, and holds 1.5 tokens
    assert buckets.take("another") == 0.0
    assert buckets.take("another") == pytest.approx(0.5)


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBuckets(rate_per_s=0.0, burst=1)


def test_a_host_is_counted_by_its_ipv6_64_not_by_each_of_its_addresses() -> None:
    from orbilnot.gateway.rate_limit import client_address

    buckets = TokenBuckets(rate_per_s=1.0, burst=1, clock=lambda: 0.0)
    first = client_address({"client": ("2001:db8:1:2::1", 5000)})
    second = client_address({"client": ("2001:db8:1:2:ffff::9", 5001)})
    other = client_address({"client": ("2001:db8:1:3::1", 5002)})
    assert first == second == "2001:db8:1:2::/64"
    assert buckets.take(first) == 0.0
    assert buckets.take(second) > 0.0  # the same /64: its one token is spent
    assert other is not None and buckets.take(other) == 0.0
    assert client_address({"client": ("::ffff:192.0.2.7", 1)}) == "192.0.2.7"
    assert client_address({}) is None
