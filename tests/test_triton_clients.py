"""A Triton backend closes every client it opens: a lazily loaded student is loaded again every
poll while Triton is away or serves a model this gateway cannot take, and each failed load left
its client (a gRPC channel, an HTTP session) open. tritonclient's module is replaced at the
backend's seam by one that counts clients; test_triton.py runs the real Triton."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.backends.triton import TritonBackend
from gateway.config import TritonBackendConfig
from gateway.errors import BackendUnavailable

FP32 = {"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}
LOGITS = {"name": "logits", "datatype": "FP32", "shape": [-1, 10]}


class CountingModule:
    """tritonclient.grpc.aio as the backend uses it, answering ``metadata``."""

    def __init__(self, metadata: dict[str, Any] | Exception) -> None:
        self.metadata = metadata
        self.opened = 0
        self.closed = 0
        module = self

        class InferenceServerClient:
            def __init__(self, url: str, **_: Any) -> None:
                module.opened += 1

            async def get_model_metadata(self, name: str, version: str) -> dict[str, Any]:
                if isinstance(module.metadata, Exception):
                    raise module.metadata
                return module.metadata

            async def is_model_ready(self, name: str, version: str) -> bool:
                return True

            async def infer(self, name: str, inputs: Any, version: str, outputs: Any) -> Any:
                return WarmAnswer()  # the warm-up call

            async def close(self) -> None:
                module.closed += 1

        self.InferenceServerClient = InferenceServerClient
        self.InferInput = TensorStub
        self.InferRequestedOutput = TensorStub


class TensorStub:
    def __init__(self, *_: Any) -> None:
        pass

    def set_data_from_numpy(self, _: Any) -> None:
        pass


class WarmAnswer:
    def as_numpy(self, name: str) -> None:
        return None


def backend(module: CountingModule) -> TritonBackend:
    config = TritonBackendConfig(kind="triton", url="triton:8001", model_name="student",
                                 ready_poll_seconds=60)  # fmt: skip
    student = TritonBackend("student", config)
    student._module = module
    return student


@pytest.mark.parametrize("metadata", [
    {"inputs": [{**FP32, "datatype": "BF16"}], "outputs": [LOGITS]},  # a type it cannot serve
    {"inputs": [{"name": "pixels"}], "outputs": [LOGITS]},  # metadata it cannot read
    ConnectionError("Triton is away"),
], ids=["unsupported type", "malformed", "unreachable"])  # fmt: skip
def test_a_student_that_fails_to_load_poll_after_poll_leaves_no_client_open(
    metadata: dict[str, Any] | Exception,
) -> None:
    async def main() -> None:
        module = CountingModule(metadata)
        student = backend(module)
        for _ in range(5):  # five polls
            with pytest.raises(BackendUnavailable, match="student"):
                await student.load()
        assert module.opened == 5 and module.closed == 5

    asyncio.run(main())


def test_a_load_again_closes_the_client_it_replaces() -> None:
    async def main() -> None:
        module = CountingModule({"inputs": [FP32], "outputs": [LOGITS]})
        student = backend(module)
        await student.load()
        await student.load()
        assert (module.opened, module.closed) == (2, 1)
        await student.close()
        assert module.closed == 2

    asyncio.run(main())
