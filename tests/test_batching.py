"""Dynamic batching: requests that arrive together run as one call, and each gets exactly the
answer it would have had alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.batching import Batcher
from gateway.errors import InferenceFailed
from models import MODELS_DIR
from models.data import Split
from tests.servers import TestGateway

Model = Callable[[np.ndarray], np.ndarray]
Tensors = Mapping[str, np.ndarray]


class RecordingModel:
    """A model that doubles its input, records each call's rows, and fails on cue."""

    def __init__(self, poison: float | None = None) -> None:
        self.calls: list[int] = []
        self.poison = poison

    async def __call__(self, inputs: Tensors) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append(len(x))
        await asyncio.sleep(0)  # a real call yields to the loop
        if self.poison is not None and (x == self.poison).any():
            raise InferenceFailed("the batch held a poisoned row")
        return {"y": x * 2, "rows": np.full(len(x), len(x))}


def rows(*values: float, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.array([[v] * width for v in values], dtype=np.float32)}


def test_requests_that_arrive_together_run_as_one_call_and_get_their_own_rows() -> None:
    async def scenario() -> None:
        model, observed = RecordingModel(), list[int]()
        batcher = Batcher(model, max_batch_size=64, max_delay_seconds=0.01,
                          observe=observed.append)  # fmt: skip
        sent = [rows(1), rows(2, 3), rows(4), rows(5, 6, 7)]
        answers = await asyncio.gather(*(batcher.infer(r) for r in sent))
        assert model.calls == [7] and observed == [7]
        for request, answer in zip(sent, answers, strict=True):
            np.testing.assert_array_equal(answer["y"], request["x"] * 2)
            assert (answer["rows"] == 7).all()  # computed in the one call of 7 rows

    asyncio.run(scenario())


def test_while_every_slot_runs_a_call_requests_gather_into_the_next_batch() -> None:
    """With the backend busy, waiting longer than max_delay costs nothing: the next batch leaves
    when a call returns, carrying everything that arrived meanwhile (instead of many small
    batches queueing behind the running one)."""

    async def scenario() -> None:
        release = asyncio.Event()
        calls: list[int] = []

        async def slow(inputs: Tensors) -> dict[str, np.ndarray]:
            calls.append(len(inputs["x"]))
            await release.wait()
            return {"y": inputs["x"] * 2}

        batcher = Batcher(slow, max_batch_size=64, max_delay_seconds=0.001, max_in_flight=1)
        first = asyncio.ensure_future(batcher.infer(rows(1)))
        await asyncio.sleep(0.01)  # its delay passed: the first call runs alone
        later = [asyncio.ensure_future(batcher.infer(rows(v))) for v in range(2, 12)]
        await asyncio.sleep(0.01)  # ten delays' worth: still no second call while one runs
        assert calls == [1]
        release.set()
        answers = await asyncio.gather(first, *later)
        assert calls == [1, 10]
        for value, answer in zip(range(1, 12), answers, strict=True):
            np.testing.assert_array_equal(answer["y"], rows(value)["x"] * 2)

    asyncio.run(scenario())


def test_a_request_that_fails_the_model_fails_alone_and_its_batch_is_answered() -> None:
    async def scenario() -> None:
        model = RecordingModel(poison=-1)
        batcher = Batcher(model, max_batch_size=4, max_delay_seconds=0.01)
        first = [batcher.infer(rows(v)) for v in (1, 2, -1, 4)]  # fills a batch: runs at once
        second = [batcher.infer(rows(v)) for v in (5, 6)]
        answers = await asyncio.gather(*first, *second, return_exceptions=True)
        assert model.calls == [4, 1, 1, 1, 1, 2]  # the failed call, then each of it alone
        assert isinstance(answers[2], InferenceFailed)
        assert [a["y"][0][0] for i, a in enumerate(answers) if i != 2] == [2, 4, 8, 10, 12]  # type: ignore[index]

    asyncio.run(scenario())


def test_a_request_whose_caller_gave_up_is_left_out_of_its_batch() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        batcher = Batcher(model, max_batch_size=64, max_delay_seconds=0.05)
        kept = asyncio.create_task(batcher.infer(rows(1, 2)))
        given_up = asyncio.create_task(batcher.infer(rows(3, 4, 5)))
        await asyncio.sleep(0)
        given_up.cancel()
        answer = await kept
        assert model.calls == [2]
        np.testing.assert_array_equal(answer["y"], rows(1, 2)["x"] * 2)

    asyncio.run(scenario())


def test_batches_never_mix_shapes_and_never_split_a_request() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        batcher = Batcher(model, max_batch_size=4, max_delay_seconds=0.01)
        wide, narrow, big = rows(1, width=5), rows(2, width=3), rows(*range(6))
        answers = await asyncio.gather(batcher.infer(wide), batcher.infer(narrow),
                                       batcher.infer(big))  # fmt: skip
        assert sorted(model.calls) == [1, 1, 6]  # 6 rows > 4 run alone, in one call
        for request, answer in zip((wide, narrow, big), answers, strict=True):
            np.testing.assert_array_equal(answer["y"], request["x"] * 2)

    asyncio.run(scenario())


def test_a_lone_request_waits_no_longer_than_the_delay() -> None:
    async def scenario() -> None:
        batcher = Batcher(RecordingModel(), max_batch_size=64, max_delay_seconds=0.005)
        answer = await asyncio.wait_for(batcher.infer(rows(1)), timeout=2.0)
        np.testing.assert_array_equal(answer["y"], rows(1)["x"] * 2)

    asyncio.run(scenario())


def concurrently(url: str, x: np.ndarray, backend: str) -> list[dict[str, Any]]:
    """Every row of ``x`` as its own request, all at once, forced to ``backend``."""
    return asyncio.run(_concurrently(url, x, backend))


async def _concurrently(url: str, x: np.ndarray, backend: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(row: int) -> dict[str, Any]:
            body = {"id": f"batched-{row}", "inputs": [{"name": "pixels", "shape": [1, 64],
                    "datatype": "FP32", "data": x[row].tolist()}]}  # fmt: skip
            answer = await client.post("/v2/models/digits/infer", json=body,
                                       headers={"x-canary": backend})  # fmt: skip
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        return await asyncio.gather(*(one(row) for row in range(len(x))))


BATCHED = {"batching": {"max_batch_size": 64, "max_delay_us": 20_000}}


@pytest.mark.parametrize("backend", ["teacher", "student"])
def test_batched_answers_equal_unbatched_onnx_runtime_exactly(
    start_gateway: Callable[..., TestGateway],
    test_split: Split,
    teacher_direct: Model,
    student_direct: Model,
    backend: str,
) -> None:
    config = {"shadow": {"sample_rate": 0.0}, "overload": {"max_queue_ms": 60_000},
              backend: {"path": str(MODELS_DIR / f"{backend}.onnx"), **BATCHED}}  # fmt: skip
    gateway = start_gateway(config)
    x = test_split.x[:96].astype(np.float32)
    answers = concurrently(gateway.url, x, backend)
    direct = teacher_direct if backend == "teacher" else student_direct
    for row, answer in enumerate(answers):
        logits = np.array(answer["outputs"][0]["data"], dtype=np.float32)
        assert np.array_equal(logits, direct(x[row : row + 1])[0]), row  # bit for bit
    calls = gateway.metric("gateway_batch_size_count", backend=backend)
    assert gateway.metric("gateway_batch_size_sum", backend=backend) == len(x)
    assert 1 <= calls < len(x)  # requests were batched together
    # ... and never more than max_batch_size rows in one call.
    assert gateway.metric("gateway_batch_size_bucket", backend=backend, le="64.0") == calls
