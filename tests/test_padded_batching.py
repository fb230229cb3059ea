"""Padded batching (``batching.pad``): requests of different sequence lengths share one call of a
real ONNX model (a masked text classifier, ``tests.model_shapes``), and each gets exactly what
it would have got alone. Tolerance: 1e-5 relative, 1e-6 absolute, since a padded row's sums run
over more (zero) terms in another blocking; the answers are not bit-identical.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gateway.backends.onnx import OnnxBackend
from gateway.batching import Batcher
from gateway.config import BatchingConfig, InputConfig, OnnxBackendConfig
from gateway.errors import ModelRejectedInput
from gateway.padding import Padding
from gateway.signature import Signature
from tests import model_shapes

RTOL, ATOL = 1e-5, 1e-6
OUTPUTS = ["logits", "token_scores"]
# padding needs a maximum for the sequence axis; the mask shares its name ``seq``
BOUNDED = {"input_ids": InputConfig(max_shape=[-1, 128])}


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("padded")
    return model_shapes.write_text_classifier(tmp / "text.onnx", token_output=True)


@pytest.fixture(scope="module")
def backend(text_model: Path) -> OnnxBackend:
    config = OnnxBackendConfig(path=text_model, device="cpu", max_concurrency=1)
    loaded = OnnxBackend("teacher", config, inputs=BOUNDED)
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
    loaded = OnnxBackend("teacher", OnnxBackendConfig(path=path, device="cpu"), inputs=BOUNDED)
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


def _loaded(path: Path, inputs: dict[str, InputConfig] | None = None) -> OnnxBackend:
    loaded = OnnxBackend("teacher", OnnxBackendConfig(path=path, device="cpu"),
                         inputs=BOUNDED if inputs is None else inputs)  # fmt: skip
    asyncio.run(loaded.load())
    return loaded


def test_padding_without_a_maximum_for_a_padded_axis_is_refused_naming_the_key(
    text_model: Path,
) -> None:
    """Else one request of 1 M tokens pads 63 one-token requests to 1 M each (64x its size)."""
    unbounded = _loaded(text_model, inputs={})
    with pytest.raises(ValueError, match=r"input 'input_ids' axis 1: set inputs\.input_ids\."
                                         r"max_shape \(e\.g\. \[-1, 512\]\)"):  # fmt: skip
        Padding(unbounded.signature, {})
    # the mask's maximum bounds the ids too: the two share the model's axis 'seq'
    Padding(_loaded(text_model, {"attention_mask": InputConfig(max_shape=[-1, 64])}).signature, {})


def test_a_dynamic_class_axis_as_long_as_the_padded_length_is_never_cut(tmp_path: Path) -> None:
    """logits [batch, labels] with 4 classes, a batch padded to 4 tokens: before, the request of
    2 tokens got 2 of its 4 logits. Now an output axis is cut only when tied to an input axis."""
    path = model_shapes.write_text_classifier(tmp_path / "labels.onnx", token_output=True,
                                              class_axis="labels")  # fmt: skip
    loaded = _loaded(path)
    assert [s.shape for s in loaded.signature.outputs] == [(-1, -1), (-1, -1)]
    with pytest.raises(ValueError, match=r"output 'logits' axis 1 \(named 'labels' in the model\)"
                                         r".*set outputs\.logits\.padded_axes"):  # fmt: skip
        Padding(loaded.signature, {})
    requests = _requests([2, 4])
    answers, calls, _ = _batched(loaded, requests, Padding(loaded.signature, {}, links={
        "logits": {}}))  # fmt: skip
    assert calls == [2]
    for request, answer, length in zip(requests, answers, [2, 4], strict=True):
        alone = model_shapes.run_onnx(path, request)
        assert answer["logits"].shape == (1, 4)  # every class, though the batch was 4 long
        assert answer["token_scores"].shape == (1, length)  # tied by the name 'seq': cut
        for name in OUTPUTS:
            np.testing.assert_allclose(answer[name], alone[name], rtol=RTOL, atol=ATOL)


def test_without_axis_names_as_from_triton_outputs_are_cut_only_as_configured(
    backend: OnnxBackend, text_model: Path
) -> None:
    """Triton's metadata names no axis: token_scores [-1, -1] is refused until
    ``outputs.token_scores.padded_axes`` ties its axis 1 to input_ids' axis 1."""
    nameless = Signature(
        inputs=tuple(replace(s, axis_names=None) for s in backend.signature.inputs),
        outputs=tuple(replace(s, axis_names=None) for s in backend.signature.outputs),
    )
    with pytest.raises(ValueError, match=r"input 'attention_mask' axis 1"):
        Padding(nameless, {})  # no shared name: each padded input needs its own maximum
    bounded = Signature(
        inputs=tuple(replace(s, max_shape=(-1, 128)) for s in nameless.inputs),
        outputs=nameless.outputs,
    )
    with pytest.raises(ValueError, match=r"output 'token_scores' axis 1 \(unnamed"):
        Padding(bounded, {})
    with pytest.raises(ValueError, match=r"outputs\.token_scores\.padded_axes: \{1: \['logits'"):
        Padding(bounded, {}, links={"token_scores": {1: ("logits", 1)}})
    padding = Padding(bounded, {}, links={"token_scores": {1: ("input_ids", 1)}})
    requests = _requests([3, 7, 5])
    answers, calls, _ = _batched(backend, requests, padding)
    assert calls == [3]
    for request, answer in zip(requests, answers, strict=True):
        alone = model_shapes.run_onnx(text_model, request)
        for name in OUTPUTS:
            assert answer[name].shape == alone[name].shape
            np.testing.assert_allclose(answer[name], alone[name], rtol=RTOL, atol=ATOL)


def test_the_gateway_does_not_start_with_padding_it_cannot_bound_or_cut(tmp_path: Path) -> None:
    """A model's start on real ONNX models: each refusal names the key that fixes it."""
    from prometheus_client import CollectorRegistry

    from gateway.config import GatewaySettings
    from gateway.errors import BackendUnavailable
    from gateway.metrics import GatewayMetrics
    from gateway.runtime import start_model
    from gateway.service import GatewayService

    path = model_shapes.write_text_classifier(tmp_path / "labels.onnx", token_output=True,
                                              class_axis="labels")  # fmt: skip
    batching = {"max_batch_size": 8, "pad": True}
    backend = {"path": str(path), "device": "cpu", "batching": batching}

    def start(**settings: object) -> GatewayService:
        config = GatewaySettings(**{"teacher": backend, "student": backend,  # type: ignore[arg-type]
                                    "task": {"kind": "regression"}, **settings})  # fmt: skip
        metrics = GatewayMetrics(CollectorRegistry(), config.model, {})
        return asyncio.run(start_model(config, metrics))

    with pytest.raises(BackendUnavailable, match=r"teacher: batching\.pad needs a maximum for "
                                                 r"input 'input_ids' axis 1"):  # fmt: skip
        start()
    bounded = {"input_ids": {"max_shape": [-1, 64]}}
    with pytest.raises(BackendUnavailable, match=r"outputs\.logits\.padded_axes"):
        start(inputs=bounded)
    with pytest.raises(BackendUnavailable, match=r"outputs\.scores: the model has no output"):
        start(inputs=bounded, outputs={"scores": {"padded_axes": {}}})
    service = start(inputs=bounded, outputs={"logits": {"padded_axes": {}}})
    asyncio.run(service.close())
