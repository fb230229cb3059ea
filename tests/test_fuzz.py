"""Property-based fuzzing of everything a client controls, against a real gateway process over
loopback: V2 JSON and binary bodies, feedback and admin bodies, headers. For every input the
answer is a 2xx, or a 4xx with a JSON error; never a 5xx, a hang or a crash; and a valid request
is answered correctly afterwards. Seeded (derandomized) and bounded for CI; ``make fuzz`` runs
each property with many more examples (FUZZ_EXAMPLES)."""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from tests.servers import ADMIN_TOKEN, TestGateway

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip
INFER = "/v2/models/digits/infer"
V2_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "FP32", "FP64", "BYTES", "BF16"]  # fmt: skip
VALID = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}

# -- strategies ------------------------------------------------------------------------------

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324]),
)
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=12)  # fmt: skip
dimensions = st.one_of(
    st.integers(min_value=-3, max_value=70),
    st.sampled_from([0, 1, 64, 1025, 2**31, 2**63 - 1, -(2**63), 2**64]),
    st.floats(allow_nan=False, width=32),
    st.text(max_size=3),
)


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    shape = draw(st.one_of(st.lists(dimensions, max_size=4), st.just([1, 64]), st.just([2, 64])))
    tensor: dict[str, Any] = {
        "name": draw(st.one_of(st.just("pixels"), st.text(max_size=8))),
        "shape": shape,
        "datatype": draw(st.one_of(st.sampled_from(V2_TYPES), st.text(max_size=6))),
    }
    rows = shape[0] if shape and isinstance(shape[0], int) and 0 < shape[0] <= 3 else 1
    data = draw(st.one_of(
        st.lists(numbers, min_size=64 * rows, max_size=64 * rows),  # the right size, odd values
        st.lists(scalars, max_size=80),
        st.just([[0.5] * 64] * rows),  # nested rows, as V2 allows
        json_values,
    ))  # fmt: skip
    if draw(st.booleans()):
        tensor["data"] = data
    if draw(st.booleans()):
        tensor["parameters"] = draw(st.one_of(
            st.fixed_dictionaries({"binary_data_size": st.one_of(
                st.integers(min_value=-10, max_value=2**40), st.text(max_size=3))}),
            json_values,
        ))  # fmt: skip
    return tensor


@st.composite
def v2_bodies(draw: st.DrawFn) -> Any:
    body: dict[str, Any] = {"inputs": draw(st.lists(tensors(), max_size=3))}
    for key, values in (
        ("id", st.one_of(st.text(max_size=300), st.integers(), st.none())),
        ("outputs", st.lists(st.fixed_dictionaries({"name": st.one_of(
            st.just("logits"), st.text(max_size=6))}, optional={"parameters": json_values}),
            max_size=3)),
        ("parameters", json_values),
    ):  # fmt: skip
        if draw(st.booleans()):
            body[key] = draw(values)
    return draw(st.one_of(st.just(body), json_values))  # now and then, not an object at all


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN and Infinity: JSON has neither


# -- the properties ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed(start_gateway: Callable[..., TestGateway]) -> Iterator[tuple[TestGateway, httpx.Client]]:
    gateway = start_gateway({"shadow": {"sample_rate": 0.5}, "traffic": {"student_share": 0.5},
                             "max_batch_size": 64})  # fmt: skip
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        yield gateway, client
    # Still alive, still right, after everything above.
    assert gateway.returncode is None
    answer = httpx.post(f"{gateway.url}{INFER}", json=VALID, timeout=10)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [1, 10]


def _handled(response: httpx.Response) -> None:
    """A 2xx, or a 4xx whose body is a JSON object with an error message."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error, str) and error


@FUZZ
@given(body=v2_bodies())
def test_v2_json_bodies(fuzzed: tuple[TestGateway, httpx.Client], body: Any) -> None:
    _handled(fuzzed[1].post(INFER, content=_dumps(body)))


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)))
def test_raw_bytes_and_invalid_utf8(fuzzed: tuple[TestGateway, httpx.Client], raw: bytes) -> None:
    _handled(fuzzed[1].post(INFER, content=raw))


@FUZZ
@given(
    header=v2_bodies(),
    tail=st.binary(max_size=600),
    length=st.one_of(st.none(), st.integers(min_value=-5, max_value=2_000),
                     st.sampled_from(["", "abc", "1e3", "+12", "0x10", "99999999999999999999"])),
)  # fmt: skip
def test_binary_extension_edges(
    fuzzed: tuple[TestGateway, httpx.Client], header: Any, tail: bytes, length: Any
) -> None:
    """Header lengths negative, non-numeric, past the body; binary_data_size not adding up."""
    json_part = _dumps(header)
    declared = str(len(json_part)) if length is None else str(length)
    response = fuzzed[1].post(INFER, content=json_part + tail,
                              headers={"inference-header-content-length": declared})  # fmt: skip
    _handled(response)


@FUZZ
@given(
    rows=st.integers(min_value=1, max_value=3),
    sizes=st.lists(st.integers(min_value=-4, max_value=1100), min_size=1, max_size=2),
)
def test_binary_data_size_that_does_not_add_up(
    fuzzed: tuple[TestGateway, httpx.Client], rows: int, sizes: list[int]
) -> None:
    data = np.ones((rows, 64), np.float32).tobytes()
    header = {"inputs": [{"name": "pixels", "shape": [rows, 64], "datatype": "FP32",
                          "parameters": {"binary_data_size": size}} for size in sizes]}  # fmt: skip
    json_part = _dumps(header)
    declared = {"inference-header-content-length": str(len(json_part))}
    response = fuzzed[1].post(INFER, content=json_part + data, headers=declared)
    _handled(response)
    if sizes == [len(data)]:
        assert response.status_code == 200


@FUZZ
@given(
    routing_key=st.one_of(st.none(), st.text(max_size=300)),
    canary=st.one_of(st.none(), st.sampled_from(["teacher", "student", "TEACHER", "", "both"])),
    encoding=st.one_of(st.none(), st.sampled_from(["gzip", "deflate", "br", "identity", "x"])),
    compress=st.booleans(),
)
def test_headers(
    fuzzed: tuple[TestGateway, httpx.Client],
    routing_key: str | None,
    canary: str | None,
    encoding: str | None,
    compress: bool,
) -> None:
    body = _dumps(VALID)
    if compress and encoding == "gzip":
        body = gzip.compress(body)
    elif compress and encoding == "deflate":
        body = zlib.compress(body)
    given_headers = {"x-routing-key": routing_key, "x-canary": canary,
                     "content-encoding": encoding}  # fmt: skip
    headers = {  # what HTTP can carry in a header at all
        name: value
        for name, value in given_headers.items()
        if value is not None and value.isascii() and value.isprintable() and value == value.strip()
    }
    response = fuzzed[1].post(INFER, content=body, headers=headers)
    _handled(response)
    if canary in ("teacher", "student") and response.status_code == 200:
        assert response.headers["x-served-by"] == canary


@FUZZ
@given(body=json_values, path=st.sampled_from(["/v2/models/digits/feedback", "/admin/traffic"]))
def test_feedback_and_admin_bodies(
    fuzzed: tuple[TestGateway, httpx.Client], body: Any, path: str
) -> None:
    client = fuzzed[1]
    if path == "/admin/traffic":
        response = client.put(path, content=_dumps(body),
                              headers={"authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
        if response.status_code == 200:  # a share the fuzzer set: put it back
            client.put(path, json={"student_share": 0.5},
                       headers={"authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
    else:
        response = client.post(path, content=_dumps(body))
    _handled(response)


def test_deeply_nested_json(fuzzed: tuple[TestGateway, httpx.Client]) -> None:
    client = fuzzed[1]
    for depth in (1_000, 100_000):
        _handled(client.post(INFER, content=b"[" * depth + b"]" * depth))
        nested = b'{"inputs":[{"name":"pixels","shape":[1,64],"datatype":"FP32","data":'
        _handled(client.post(INFER, content=nested + b"[" * depth + b"]" * depth + b"}]}"))


def test_a_gzip_bomb_is_refused_without_inflating_it(
    fuzzed: tuple[TestGateway, httpx.Client],
) -> None:
    """256 MiB of zeros in a 250 KiB body: 413 at the limit, memory as it was."""
    gateway, client = fuzzed
    bomb = gzip.compress(b"\0" * (256 << 20), compresslevel=9)
    rss_before = _rss_bytes(gateway)
    response = client.post(INFER, content=bomb, headers={"content-encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed request body exceeds the limit" in response.json()["error"]
    assert _rss_bytes(gateway) - rss_before < 64 * 2**20


def _rss_bytes(gateway: TestGateway) -> int:
    with open(f"/proc/{gateway.pid}/status") as file:
        status = file.read()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kib) * 1024


# -- schemathesis: every operation of the gateway's own OpenAPI document ---------------------------


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_documented_operation(
    fuzzed: tuple[TestGateway, httpx.Client], mode: GenerationMode
) -> None:
    """Cases drawn from the gateway's /openapi.json (the V2 request, feedback and admin bodies
    are documented there, path parameters too), valid and invalid: handled, never a server
    error. (Drawn through hypothesis directly: schemathesis' pytest plugin does not run on
    pytest 9 yet.)"""
    gateway = fuzzed[0]
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself is valid OpenAPI
        operations.append(result.ok())
    assert {operation.path for operation in operations} >= {
        "/v2/models/{model}/infer", "/v2/models/{model}/feedback", "/admin/traffic"}  # fmt: skip
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}

    @FUZZ
    @given(case=st.one_of([operation.as_strategy(mode) for operation in operations]))
    def handled(case: schemathesis.Case[Any]) -> None:
        headers = admin if case.path.startswith("/admin") else {}
        response = case.call(base_url=gateway.url, headers=headers, timeout=10)
        deliberate = response.status_code == 501  # the Triton extensions it answers it lacks
        assert response.status_code < 500 or deliberate, (case.method, case.formatted_path,
                                                          response.status_code,
                                                          response.text[:300])  # fmt: skip
        if response.status_code >= 400 and response.status_code != 405:  # 405: Starlette's own
            error = response.json()["error"]
            assert isinstance(error, str) and error
        if case.path == "/admin/traffic" and case.method == "PUT" and response.status_code == 200:
            httpx.put(f"{gateway.url}/admin/traffic", json={"student_share": 0.5}, headers=admin)

    handled()
