"""Metrics sources: where the analysis gets its numbers. One interface, one module per provider.

- ``scrape``: the gateways' own ``/metrics``, scraped and differenced by the controller (default).
- ``prometheus``: PromQL ``increase()`` over the step's window, summed over every gateway replica.
"""

from controller.sources.base import Mark, MetricsSource, MetricsUnavailable, window_metrics
from controller.sources.factory import create_source

__all__ = ["Mark", "MetricsSource", "MetricsUnavailable", "create_source", "window_metrics"]
