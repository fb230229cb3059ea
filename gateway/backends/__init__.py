"""Model backends: one small interface (``Backend``), one module per kind, and a factory."""

from gateway.backends.base import Backend, Lane
from gateway.backends.factory import create_backend

__all__ = ["Backend", "Lane", "create_backend"]
