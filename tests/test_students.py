"""A registry id turned into the file to serve, off the event loop: its file is read and hashed
(a student as big as a teacher takes a while), and every request waits for a loop that does it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway import student_files
from models import REGISTRY_PATH
from models import registry as reg


def test_the_file_is_hashed_while_the_loop_keeps_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    selection = reg.select(reg.load(REGISTRY_PATH), 0.02, "latency")
    assert selection is not None
    chosen = str(selection.chosen["id"])
    real = reg.content_hash

    def slow_hash(path: Path) -> str:
        time.sleep(0.3)  # a big file
        return real(path)

    monkeypatch.setattr(reg, "content_hash", slow_hash)

    async def main() -> tuple[Path, int]:
        ticks = 0

        async def serve() -> None:  # what requests need: the loop, every few milliseconds
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        server = asyncio.create_task(serve())
        path = await student_files.resolve_off_the_loop(REGISTRY_PATH, chosen)
        server.cancel()
        return path, ticks

    path, ticks = asyncio.run(main())
    assert path == REGISTRY_PATH.parent / str(selection.chosen["file"])
    assert ticks >= 10  # 0.3 s at most every 10 ms: the loop was never held
