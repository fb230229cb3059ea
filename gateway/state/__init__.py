"""Shared state for a fleet of gateway replicas: the student's share, the replica registry and the
predictions awaiting their labels (``state.url``). With ``memory`` (the default) there is none:
the process keeps its share and predictions itself, as one replica alone may."""

from gateway.state.errors import StoreUnavailable

__all__ = ["StoreUnavailable"]
