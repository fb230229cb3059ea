"""Traffic splitting: random shares within binomial bounds, sticky keys, forced backends."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import httpx
import pytest

from gateway.routing import BUCKETS, TrafficSplit, bucket_of
from tests.servers import TestGateway

BODY = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
Z_999 = 3.2905  # two-sided 99.9 % normal quantile


def binomial_bounds(n: int, p: float) -> tuple[float, float]:
    """Where the student count of ``n`` requests at share ``p`` falls 99.9 % of the time."""
    spread = Z_999 * math.sqrt(n * p * (1 - p))
    return n * p - spread, n * p + spread


@pytest.fixture(scope="module")
def seeded_gateway(start_gateway: Callable[..., TestGateway]) -> TestGateway:
    """Its random split is seeded, so the split test cannot fail by chance."""
    return start_gateway({"shadow": {"sample_rate": 0.0}, "traffic": {"seed": 20261128}})


@pytest.fixture
def split_gateway(seeded_gateway: TestGateway) -> Iterator[TestGateway]:
    yield seeded_gateway
    seeded_gateway.set_share(0.0)


def _served_by(client: httpx.Client, headers: dict[str, str] | None = None) -> str:
    response = client.post("/v2/models/digits/infer", json=BODY, headers=headers or {})
    assert response.status_code == 200
    return response.headers["x-served-by"]


@pytest.mark.parametrize("share", [0.05, 0.25, 0.5])
def test_random_split_matches_the_share(split_gateway: TestGateway, share: float) -> None:
    split_gateway.set_share(share)
    n = 2000
    with httpx.Client(base_url=split_gateway.url) as client:
        students = sum(_served_by(client) == "student" for _ in range(n))
    low, high = binomial_bounds(n, share)
    assert low <= students <= high, f"{students} of {n} at share {share}"


def test_sticky_keys_stay_on_the_student_as_the_share_grows(
    split_gateway: TestGateway,
) -> None:
    keys = [f"user-{n}" for n in range(600)]
    on_student: dict[float, set[str]] = {}
    with httpx.Client(base_url=split_gateway.url) as client:
        for share in (0.05, 0.25, 0.5):
            split_gateway.set_share(share)
            on_student[share] = {
                key for key in keys if _served_by(client, {"x-routing-key": key}) == "student"
            }
            again = {k for k in keys if _served_by(client, {"x-routing-key": k}) == "student"}
            assert again == on_student[share], "the same key must get the same backend"
    assert on_student[0.05] <= on_student[0.25] <= on_student[0.5]
    for share, chosen in on_student.items():
        low, high = binomial_bounds(len(keys), share)
        assert low <= len(chosen) <= high


@pytest.mark.parametrize(("share", "forced"), [(0.0, "student"), (1.0, "teacher")])
def test_x_canary_forces_a_backend(split_gateway: TestGateway, share: float, forced: str) -> None:
    split_gateway.set_share(share)
    with httpx.Client(base_url=split_gateway.url) as client:
        assert all(_served_by(client, {"x-canary": forced}) == forced for _ in range(20))
        # The header outranks a routing key too.
        assert _served_by(client, {"x-canary": forced, "x-routing-key": "user-1"}) == forced


# -- the routing decision itself, without a server --------------------------------------------


def test_bucket_monotonicity_for_every_share_step() -> None:
    split = TrafficSplit(0.0)
    keys = [f"k{n}" for n in range(2000)]
    previous: set[str] = set()
    for share in [n / 100 for n in range(101)]:
        split.set_share(share)
        current = {k for k in keys if split.choose(k, None) == "student"}
        assert previous <= current
        previous = current
    assert previous == set(keys)


def test_buckets_are_uniform_enough() -> None:
    counts = [0] * 10
    for n in range(20_000):
        counts[bucket_of(f"user-{n}") * 10 // BUCKETS] += 1
    assert all(1800 <= count <= 2200 for count in counts), counts


def test_share_zero_and_one_are_absolute() -> None:
    assert {TrafficSplit(0.0).choose(None, None) for _ in range(1000)} == {"teacher"}
    assert {TrafficSplit(1.0).choose(None, None) for _ in range(1000)} == {"student"}
    assert TrafficSplit(0.0).choose("any-key", None) == "teacher"
    assert TrafficSplit(1.0).choose("any-key", None) == "student"


def test_set_share_increments_the_generation() -> None:
    split = TrafficSplit(0.0)
    assert split.set_share(0.5) == 1
    assert split.set_share(0.5) == 2
