"""Picks the backend implementation for a config entry by its ``kind``."""

from __future__ import annotations

from gateway.backends.base import Backend
from gateway.config import BackendConfig, OnnxBackendConfig, TritonBackendConfig


def create_backend(role: str, config: BackendConfig, shadow_threads: int = 1) -> Backend:
    """``shadow_threads``: what an in-process backend keeps apart for shadow comparisons."""
    if isinstance(config, OnnxBackendConfig):
        from gateway.backends.onnx import OnnxBackend

        return OnnxBackend(role, config, shadow_threads)
    if isinstance(config, TritonBackendConfig):
        from gateway.backends.triton import TritonBackend

        return TritonBackend(role, config)
    raise ValueError(f"{role}: unknown backend kind {config.kind!r}")  # pragma: no cover
