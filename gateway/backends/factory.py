"""Picks the backend implementation for a config entry by its ``kind``."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.backends.base import Backend
from gateway.config import (
    BackendConfig,
    InputConfig,
    OnnxBackendConfig,
    TritonBackendConfig,
    WarmupConfig,
)


def create_backend(
    role: str,
    config: BackendConfig,
    shadow_threads: int = 1,
    inputs: Mapping[str, InputConfig] | None = None,
    warmup: WarmupConfig | None = None,
) -> Backend:
    """``shadow_threads``: what an in-process backend keeps apart for shadow comparisons;
    ``inputs`` and ``warmup``: the model's input settings and warm-up (the config's)."""
    if isinstance(config, OnnxBackendConfig):
        from gateway.backends.onnx import OnnxBackend

        return OnnxBackend(role, config, shadow_threads, inputs, warmup)
    if isinstance(config, TritonBackendConfig):
        from gateway.backends.triton import TritonBackend

        return TritonBackend(role, config, inputs, warmup)
    raise ValueError(f"{role}: unknown backend kind {config.kind!r}")  # pragma: no cover
