"""Padded batching (``batching.pad``): requests of different sequence lengths share one call of a
real ONNX model (a masked text classifier, ``tests.model_shapes``), and each gets exactly what
it would have got alone. Tolerance: 1e-5 relative, 1e-6 absolute, since a padded row's sums run
over more (zero) terms in another blocking; the answers are not bit-identical.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from gateway.backends.onnx import OnnxBackend
from gateway.batching import Batcher
from gateway.config import BatchingConfig, OnnxBackendConfig
from gateway.errors import ModelRejectedInput
from gateway.padding import Padding
from tests import model_shapes

RTOL, ATOL = 1e-5, 1e-6
OUTPUTS = ["logits", "token_scores"]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("padded")
    return model_shapes.write_text_classifier(tmp / "text.onnx", token_output=True)


@pytest.fixture(scope="module")
def backend(text_model: Path) -> OnnxBackend:
    loaded = OnnxBackend("teacher", OnnxBackendConfig(path=text_model, device="cpu",
                                                      max_concurrency=1))  # fmt: skip
    asyncio.run(loaded.load())
    return loaded


def _requests(lengths: Sequence[int], rows: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [model_shapes.text_rows(rng, [length] * rows) for length in lengths]


def _batched(
    backend: OnnxBackend, requests: list[dict[str, np.ndarray]], padding: Padding
) -> tuple[list[dict[str, np.ndarray]], list[int], list[tuple[int, int]]]:
    """Every request's answer from one batcher, the rows of each call, and each call's
    (padding, elements)."""
    calls: list[int] = []
    padded: list[tuple[int, int]] = []

    async def run() -> list[dict[str, np.ndarray]]:
        batcher = Batcher(lambda inputs: backend.infer(inputs, OUTPUTS), 64, 0.05,
                          observe=calls.append, padding=padding,
                          observe_padding=lambda a, e: padded.append((a, e)))  # fmt: skip
        return list(await asyncio.gather(*(batcher.infer(r) for r in requests)))

    return asyncio.run(run()), calls, padded


def test_mixed_lengths_in_one_call_equal_each_request_alone(backend: OnnxBackend) -> None:
    lengths = [3, 17, 8, 1, 17, 12]
    requests = _requests(lengths, rows=2)
    answers, calls, padded = _batched(backend, requests, Padding(backend.signature, {}))
    assert calls == [12]  # one call, every request's two rows
    for request, answer, length in zip(requests, answers, lengths, strict=True):
        alone = asyncio.run(backend.infer(request, OUTPUTS))
        assert answer["logits"].shape == (2, 4)
        assert answer["token_scores"].shape == (2, length)  # cut back to its own length
        for name in OUTPUTS:
            np.testing.assert_allclose(answer[name], alone[name], rtol=RTOL, atol=ATOL)
    # two inputs of 12 rows x 17; the requests' own elements are 2 x 2 x sum(lengths)
    assert padded == [(2 * 12 * 17 - 2 * 2 * sum(lengths), 2 * 12 * 17)]


def test_length_buckets_keep_short_requests_apart_from_long_ones(backend: OnnxBackend) -> None:
    lengths = [3, 30, 5, 60, 9]
    requests = _requests(lengths)
    padding = Padding(backend.signature, {}, buckets=[8, 16, 32, 64])
    answers, calls, padded = _batched(backend, requests, padding)
    # buckets: 3 and 5 -> 8; 9 -> 16; 30 -> 32; 60 -> 64
    assert sorted(calls) == [1, 1, 1, 2]
    assert sorted(e // 2 for _, e in padded) == [16, 16, 32, 64]  # both inputs
    for request, answer in zip(requests, answers, strict=True):
        alone = asyncio.run(backend.infer(request, OUTPUTS))
        for name in OUTPUTS:
            np.testing.assert_allclose(answer[name], alone[name], rtol=RTOL, atol=ATOL)


def test_the_pad_value_of_each_input_is_used(backend: OnnxBackend) -> None:
    padding = Padding(backend.signature, {"input_ids": 5})
    batch = padding.pad(_requests([2, 4]))
    assert batch.inputs["input_ids"][0, 2:].tolist() == [5, 5]
    assert batch.inputs["attention_mask"][0].tolist() == [1, 1, 0, 0]  # masks padded with 0


def test_without_padding_requests_of_different_lengths_never_share_a_call(
    backend: OnnxBackend,
) -> None:
    calls: list[int] = []

    async def run() -> None:
        batcher = Batcher(lambda inputs: backend.infer(inputs, OUTPUTS), 64, 0.05,
                          observe=calls.append)  # fmt: skip
        await asyncio.gather(*(batcher.infer(r) for r in _requests([3, 5, 3])))

    asyncio.run(run())
    assert sorted(calls) == [1, 2]


def test_buckets_need_padding_and_ascending_edges() -> None:
    with pytest.raises(ValueError, match=r"length_buckets needs batching\.pad"):
        BatchingConfig(length_buckets=[8, 16])
    with pytest.raises(ValueError, match="ascending"):
        BatchingConfig(pad=True, length_buckets=[16, 8])


def test_a_masked_attention_transformer_batched_with_padding_equals_it_alone(
    tmp_path: Path,
) -> None:
    """Attention mixes positions: padding is harmless only because masked keys get no weight."""
    path = model_shapes.write_transformer_classifier(tmp_path / "t.onnx", layers=2, width=32,
                                                     heads=2, vocab=100)  # fmt: skip
    loaded = OnnxBackend("teacher", OnnxBackendConfig(path=path, device="cpu"))
    asyncio.run(loaded.load())
    rng = np.random.default_rng(11)
    requests = [model_shapes.text_rows(rng, [n], vocab=100) for n in (8, 100, 31, 64, 9)]
    calls: list[int] = []

    async def run() -> list[dict[str, np.ndarray]]:
        batcher = Batcher(lambda inputs: loaded.infer(inputs, ["logits"]), 64, 0.05,
                          observe=calls.append, padding=Padding(loaded.signature, {}))  # fmt: skip
        return list(await asyncio.gather(*(batcher.infer(r) for r in requests)))

    answers = asyncio.run(run())
    assert calls == [5]
    for request, answer in zip(requests, answers, strict=True):
        alone = model_shapes.run_onnx(path, request)["logits"]
        np.testing.assert_allclose(answer["logits"], alone, rtol=RTOL, atol=ATOL)


def test_a_request_that_breaks_the_model_fails_alone_and_its_batch_is_answered(
    backend: OnnxBackend,
) -> None:
    requests = _requests([3, 9, 5])
    poisoned = {**requests[1], "input_ids": requests[1]["input_ids"] + 1000}  # past the vocab
    calls: list[int] = []

    async def run() -> list[dict[str, np.ndarray] | BaseException]:
        batcher = Batcher(lambda inputs: backend.infer(inputs, OUTPUTS), 64, 0.05,
                          observe=calls.append, padding=Padding(backend.signature, {}))  # fmt: skip
        batch = [requests[0], poisoned, requests[2]]
        return list(await asyncio.gather(*(batcher.infer(r) for r in batch),
                                         return_exceptions=True))  # fmt: skip

    first, broken, last = asyncio.run(run())
    assert calls == [3]  # one call of three, then each alone
    assert isinstance(broken, ModelRejectedInput) and "Gather" in broken.message  # a 400
    for request, answer in ((requests[0], first), (requests[2], last)):
        assert isinstance(answer, dict)
        alone = asyncio.run(backend.infer(request, OUTPUTS))
        np.testing.assert_allclose(answer["logits"], alone["logits"], rtol=RTOL, atol=ATOL)
