"""Which student a gateway serves: its id (the content hash of its file, as the model registry
names it), and a registry id turned into a file to load (``PUT /admin/student``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.config import BackendConfig
from gateway.errors import Conflict, NotFound
from models import registry


def served_id(config: BackendConfig) -> str | None:
    """The registry id of the file an ONNX backend serves; None for a model on Triton (its
    files are Triton's)."""
    path = getattr(config, "path", None)
    if path is None:
        return None
    try:
        return registry.content_hash(Path(path))
    except OSError:
        return None


async def resolve_off_the_loop(registry_path: Path, model_id: str) -> Path:
    """``resolve`` on a worker thread: hashing a model file (a big teacher-sized student takes
    a while) and reading the registry must not hold the event loop, and every request with it."""
    return await asyncio.to_thread(resolve, registry_path, model_id)


def resolve(registry_path: Path, model_id: str) -> Path:
    """The file a registry id names, checked to be that file. It reads and hashes the file:
    from the event loop, call ``resolve_off_the_loop``."""
    try:
        entry = registry.lookup(registry_path, model_id)
    except registry.UnreadableRegistry as exc:
        raise Conflict(str(exc)) from exc
    except registry.UnknownModel as exc:
        raise NotFound(str(exc)) from exc
    status = entry.get("status", registry.ACCEPTED)
    if status != registry.ACCEPTED:
        raise Conflict(f"model '{model_id}' is registered as '{status}'; it is not served")
    path = registry_path.parent / str(entry["file"])
    try:
        actual = registry.content_hash(path)
    except OSError as exc:
        raise Conflict(f"model '{model_id}': its file {path} cannot be read: {exc}") from exc
    if actual != model_id:
        raise Conflict(f"model '{model_id}': its file {path} has changed since it was registered "
                       f"(its content hash is now {actual})")  # fmt: skip
    return path
