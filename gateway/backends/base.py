"""The interface every backend implements: load, infer, ready, close."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from gateway.config import InputConfig, WarmupConfig
from gateway.errors import BackendUnavailable
from gateway.signature import Signature, with_limits
from gateway.warmup import warmup_calls

Lane = Literal["live", "shadow"]
"""Who is waiting for a call: a client (live) or a background comparison (shadow). A backend
keeps them apart, so shadow work never takes capacity that live traffic needs."""


def batch_rows(inputs: Mapping[str, np.ndarray]) -> int:
    """The rows a call carries: the first input's batch axis (1 for none)."""
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


class Backend(ABC):
    """One model behind the gateway (the teacher or the student).

    ``infer`` must never block the event loop, and must raise only ``GatewayError`` subclasses:
    errors from the underlying runtime are converted at this boundary.
    """

    measures_cpu = False
    """True when the backend measures the CPU time of its calls (``cpu_seconds``)."""

    def __init__(
        self,
        role: str,
        inputs: Mapping[str, InputConfig] | None = None,
        warmup: WarmupConfig | None = None,
    ) -> None:
        """``inputs`` and ``warmup``: the model's input settings (maxima, warm-up ranges) and
        how to warm up, from the config."""
        self.role = role
        self._inputs: Mapping[str, InputConfig] = inputs or {}
        self._warmup = warmup or WarmupConfig()
        self._signature: Signature | None = None  # set by load()
        self.abandoned_total = 0
        """Calls whose caller gave up (a timeout) while they kept running, holding capacity;
        stays 0 for a backend that can really cancel a call."""
        self.cpu_seconds: dict[Lane, float] = {"live": 0.0, "shadow": 0.0}
        """CPU time its calls took in this process, by lane (stays 0 for a remote backend)."""
        self.memory_bytes: int | None = None
        """Memory an in-process model holds (its session, weights and arena after warm-up);
        None when the backend does not hold the model in this process."""
        self.remote_compute_seconds: float | None = None
        """A remote server's own compute time for this model (all its clients), when scraped."""

    @property
    def signature(self) -> Signature:
        """Inputs and outputs; available once ``load`` has returned."""
        if self._signature is None:
            raise BackendUnavailable(f"{self.role} backend is not loaded")
        return self._signature

    def limited(self, signature: Signature) -> Signature:
        """The model's own signature with the configured maxima; ``BackendUnavailable`` when the
        config names an input the model does not have."""
        try:
            return with_limits(signature, {n: c.max_shape for n, c in self._inputs.items()},
                               {n: c.value_range for n, c in self._inputs.items()})  # fmt: skip
        except ValueError as exc:
            raise BackendUnavailable(f"{self.role}: {exc}") from exc

    def warmup_calls(self) -> list[dict[str, np.ndarray]]:
        """The warm-up calls for the loaded signature (see ``gateway.warmup``)."""
        try:
            return warmup_calls(self.signature, self._inputs, self._warmup)
        except ValueError as exc:
            raise BackendUnavailable(f"{self.role}: {exc}") from exc

    @property
    @abstractmethod
    def description(self) -> str:
        """One line for logs: what is served, where, on which device."""

    @abstractmethod
    async def load(self) -> None:
        """Prepare to serve; raises ``BackendUnavailable`` when that is impossible."""

    @abstractmethod
    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], lane: Lane = "live"
    ) -> dict[str, np.ndarray]:
        """Run one batch; returns the requested outputs by name."""

    def run_inline(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray] | None:
        """A live call answered here and now, on the event loop, when it is tiny enough to be
        cheaper than any hop; None when it must go through ``infer``. Such a call cannot time
        out (it holds the loop until it returns), so the caller sets no timer for it."""
        return None

    def abandoned_in(self, lane: Lane) -> int:
        """Abandoned calls still running in ``lane`` now."""
        return 0

    @abstractmethod
    def is_ready(self) -> bool:
        """Cheap: never does I/O on the request path."""

    @abstractmethod
    async def close(self) -> None:
        """Release resources; the backend is not used afterwards."""
