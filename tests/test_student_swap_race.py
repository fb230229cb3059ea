"""A student swap reads its file (awaited) before it goes live: a share raised meanwhile refuses
the swap (trust issue item 9), so no user is answered by a model nobody judged. The real ONNX
backend, whose file read the test holds until the share has moved."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.backends.onnx import LoadedModel, OnnxBackend
from gateway.config import OnnxBackendConfig
from models import REGISTRY_PATH, STUDENT_PATH
from models import registry as reg
from tests.fake_backend import TOKEN, in_process_gateway

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class _HeldOpen(OnnxBackend):
    """Reads a file only once the test lets it."""

    def __init__(self) -> None:
        super().__init__("student", OnnxBackendConfig(path=STUDENT_PATH))
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def open(self, path: Path) -> LoadedModel:
        self.reading.set()
        await self.release.wait()
        return await super().open(path)


def test_a_share_raised_while_the_file_is_read_refuses_the_swap() -> None:
    candidate = reg.select(reg.load(REGISTRY_PATH), 0.02, "latency")
    assert candidate is not None
    chosen = str(candidate.chosen["id"])

    async def main() -> None:
        student = _HeldOpen()
        await student.load()
        async with in_process_gateway(serving_student=student) as gateway:
            before = gateway.service.student_id
            swap = asyncio.create_task(gateway.client.put(
                "/admin/student", json={"model_id": chosen}, headers=AUTH))  # fmt: skip
            await asyncio.wait_for(student.reading.wait(), 10)
            raised = await gateway.client.put("/admin/traffic", json={"student_share": 0.5},
                                              headers=AUTH)  # fmt: skip
            assert raised.status_code == 200
            student.release.set()
            refused = await swap
            assert refused.status_code == 409
            assert "share is 0.5" in refused.json()["error"]
            assert gateway.service.student_id == before
        await student.close()

    asyncio.run(main())
