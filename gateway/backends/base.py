"""The interface every backend implements: load, infer, ready, close."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np

from gateway.errors import BackendUnavailable
from gateway.signature import Signature


class Backend(ABC):
    """One model behind the gateway (the teacher or the student).

    ``infer`` must never block the event loop, and must raise only ``GatewayError`` subclasses:
    errors from the underlying runtime are converted at this boundary.
    """

    def __init__(self, role: str) -> None:
        self.role = role
        self._signature: Signature | None = None  # set by load()

    @property
    def signature(self) -> Signature:
        """Inputs and outputs; available once ``load`` has returned."""
        if self._signature is None:
            raise BackendUnavailable(f"{self.role} backend is not loaded")
        return self._signature

    @property
    @abstractmethod
    def description(self) -> str:
        """One line for logs: what is served, where, on which device."""

    @abstractmethod
    async def load(self) -> None:
        """Prepare to serve; raises ``BackendUnavailable`` when that is impossible."""

    @abstractmethod
    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run one batch; returns the requested outputs by name."""

    @abstractmethod
    def is_ready(self) -> bool:
        """Cheap: never does I/O on the request path."""

    @abstractmethod
    async def close(self) -> None:
        """Release resources; the backend is not used afterwards."""
